import pytest
import torch

from cmae.models.patchify import (
    fill_tubelet,
    gather_tokens,
    normalized_pixel_targets,
    normalized_targets,
    patchify,
    unpatchify,
)
from cmae.models.vit import PatchEmbed


@pytest.mark.parametrize("t, tubelet", [(1, 1), (4, 2), (4, 1), (6, 3)])
def test_round_trip(t, tubelet):
    clip = torch.randn(2, 3, t, 16, 24)
    patches = patchify(clip, 8, tubelet)
    assert patches.shape == (2, (t // tubelet) * 2 * 3, tubelet * 8 * 8 * 3)
    assert torch.equal(unpatchify(patches, (t // tubelet, 2, 3), 8, tubelet), clip)


def test_patch_order_matches_patch_embed_tokens():
    """Token n of patchify must be the tubelet the Conv3d embeds as token n."""
    embed = PatchEmbed(patch_size=4, tubelet_size=2, in_chans=3, embed_dim=5)
    clip = torch.randn(1, 3, 4, 8, 12)
    patches = patchify(clip, 4, 2)  # [1, N, (t p p c)]
    weight = embed.proj.weight.permute(0, 2, 3, 4, 1).reshape(5, -1)  # (t p p c) order
    expected = patches @ weight.T + embed.proj.bias
    assert torch.allclose(embed(clip), expected, atol=1e-5)


def test_image_fills_tubelet():
    image = torch.randn(2, 3, 1, 8, 8)
    filled = fill_tubelet(image, 2)
    assert filled.shape == (2, 3, 2, 8, 8) and torch.equal(filled[:, :, 0], filled[:, :, 1])
    assert patchify(image, 4, 2).shape == (2, 4, 2 * 4 * 4 * 3)


def test_normalised_targets():
    patches = torch.randn(2, 5, 4 * 4 * 3) * 3 + 7
    mae = normalized_pixel_targets(patches, "patch")
    assert torch.allclose(mae.mean(-1), torch.zeros(2, 5), atol=1e-5)
    assert torch.allclose(mae.var(-1), torch.ones(2, 5), atol=1e-3)  # MAE: unbiased variance
    vmae = normalized_pixel_targets(patches, "channel").reshape(2, 5, 16, 3)
    assert torch.allclose(vmae.mean(-2), torch.zeros(2, 5, 3), atol=1e-5)
    assert torch.allclose(vmae.std(-2), torch.ones(2, 5, 3), atol=1e-3)
    assert torch.equal(normalized_pixel_targets(patches, "none"), patches)
    with pytest.raises(ValueError, match="normalised-pixel mode"):
        normalized_pixel_targets(patches, "pixel")


@pytest.mark.parametrize("mode", ["patch", "channel", "none"])
@pytest.mark.parametrize("t, tubelet", [(4, 2), (1, 2), (2, 1)])
def test_fast_targets_equal_the_reference_ones(mode, t, tubelet):
    """`normalized_targets` (statistics in the conv layout, picked tokens only) is the plain formula."""
    clip = torch.rand(2, 3, t, 16, 16) * 4 + 1
    tokens = torch.tensor([[0, 3], [1, 2]])
    reference = normalized_pixel_targets(patchify(clip, 8, tubelet), mode)
    assert torch.allclose(normalized_targets(clip, 8, tubelet, mode), reference, atol=1e-5)
    assert torch.allclose(normalized_targets(clip, 8, tubelet, mode, tokens), gather_tokens(reference, tokens),
                          atol=1e-5)
