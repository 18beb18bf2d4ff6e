import math

import pytest
import torch

from cmae.models.pos_embed import position_table, sincos_1d, sincos_2d, sincos_3d, split_space_time


def test_sincos_1d_values():
    table = sincos_1d(4, torch.arange(3))
    # omega = 1 / 10000^(i / 2) for i = 0, 1 -> 1, 0.01
    expected = torch.tensor(
        [[math.sin(p), math.sin(p * 0.01), math.cos(p), math.cos(p * 0.01)] for p in range(3)]
    )
    assert torch.allclose(table, expected, atol=1e-6)


def test_sincos_2d_matches_mae_layout():
    table = sincos_2d(8, 2, 3)  # [6, 8]: first half codes the column, second half the row
    assert table.shape == (6, 8)
    assert torch.allclose(table[4, :4], sincos_1d(4, torch.tensor([1]))[0])  # row 1, col 1
    assert torch.allclose(table[4, 4:], sincos_1d(4, torch.tensor([1]))[0])
    assert torch.allclose(table[5, :4], sincos_1d(4, torch.tensor([2]))[0])  # col 2
    assert torch.allclose(table[5, 4:], sincos_1d(4, torch.tensor([1]))[0])  # row 1


def test_sincos_3d_is_separable():
    dim, (t, h, w) = 96, (3, 2, 2)
    table = sincos_3d(dim, (t, h, w)).reshape(t, h * w, dim)
    space, time = split_space_time(dim)
    assert (space, time) == (72, 24)
    # the spatial part is the same in every frame, the temporal part the same across a frame
    assert torch.equal(table[:, :, :space], table[:1, :, :space].expand(t, -1, -1))
    assert torch.equal(table[:, :, space:], table[:, :1, space:].expand(-1, h * w, -1))
    # an image (T = 1) shares the spatial code of a clip
    assert torch.equal(sincos_3d(dim, (1, h, w))[:, :space], table[0, :, :space])


@pytest.mark.parametrize("dim", [48, 64, 96, 128, 192, 256, 384, 512, 768, 1024])
def test_split_for_all_widths(dim):
    space, time = split_space_time(dim)
    assert space % 4 == 0 and time % 2 == 0 and space + time == dim


def test_joint_table_is_videomaes():
    modeling = pytest.importorskip("transformers.models.videomae.modeling_videomae")
    reference = modeling.get_sinusoid_encoding_table(2 * 4 * 4, 48)[0]  # [N, D], HF's copy of VideoMAE's
    assert torch.allclose(position_table("joint", 48, (2, 4, 4)), reference, atol=1e-6)
    assert torch.equal(position_table("separable", 48, (2, 4, 4)), sincos_3d(48, (2, 4, 4)))
    with pytest.raises(ValueError, match="model.pos_embed"):
        position_table("fixed", 48, (2, 4, 4))


def mae_reference_table(dim: int, size: int) -> torch.Tensor:
    """MAE's util/pos_embed.py, restated with numpy: meshgrid(w, h), so the first half of the
    channels codes the column; each half is [sin, cos] of position x 1/10000^(k / (dim/4))."""
    import numpy as np

    grid = np.meshgrid(np.arange(size, dtype=np.float64), np.arange(size, dtype=np.float64))  # w first

    def code(positions):
        omega = 1.0 / 10000 ** (np.arange(dim // 4) / (dim / 4))
        angles = positions.reshape(-1)[:, None] * omega[None]
        return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

    return torch.from_numpy(np.concatenate([code(grid[0]), code(grid[1])], axis=1)).float()


def test_mae_2d_table_is_maes():
    reference = mae_reference_table(64, 4)  # [16, 64]
    assert torch.allclose(position_table("mae_2d", 64, (1, 4, 4)), reference, atol=1e-6)
    assert torch.equal(position_table("mae_2d", 64, (3, 4, 4)), reference.repeat(3, 1))  # every frame alike
    assert torch.equal(position_table("videomae_1d", 48, (2, 4, 4)), position_table("joint", 48, (2, 4, 4)))
