import pytest
import torch

from cmae.config import ConfigError, ModelConfig, load_config
from cmae.masking import random_mask, tube_mask
from cmae.methods import build_method
from cmae.models import ENCODER_NAMES, build_encoder
from cmae.models.convvit import ConvBlock, ConvViT
from tests.helpers import TINY_DECODER, TINY_HEADS


def tiny(tubelet: int = 2, **kw) -> ConvViT:
    torch.manual_seed(0)
    return build_encoder(ModelConfig(name="convvit_tiny", tubelet_size=tubelet, **kw)).eval()


def pixel_map(masked: torch.Tensor, grid: tuple[int, int, int], tubelet: int) -> torch.Tensor:
    """Token mask `[B, N]` -> `[B, 1, T, H, W]` covering each token's whole tubelet of pixels."""
    t, h, w = grid
    m = masked.reshape(-1, 1, t, h, w).float()
    return m.repeat_interleave(tubelet, 2).repeat_interleave(16, 3).repeat_interleave(16, 4)


@pytest.mark.parametrize("kind", ["tube", "random"])
@pytest.mark.parametrize("shape, tubelet", [((2, 3, 4, 48, 64), 2), ((2, 3, 1, 64, 64), 1)])
@pytest.mark.parametrize("init, pos_embed", [("xavier", "separable"), ("normal", "joint")])
def test_masked_pixels_do_not_leak_into_visible_tokens(kind, shape, tubelet, init, pos_embed):
    encoder = tiny(tubelet, init=init, pos_embed=pos_embed)
    clip = torch.randn(shape)
    grid = encoder.token_grid(shape)
    n = grid[0] * grid[1] * grid[2]
    torch.manual_seed(1)
    mask = tube_mask(shape[0], grid, 0.5) if kind == "tube" else random_mask(shape[0], n, 0.5)
    with torch.no_grad():
        out = encoder(clip, mask.visible)
        # rewrite every masked patch (all frames of its tubelet) with new noise
        edited = clip + 10 * torch.randn_like(clip) * pixel_map(mask.masked, grid, tubelet)
        assert torch.allclose(encoder(edited, mask.visible), out, atol=1e-5)
        assert torch.allclose(encoder(edited, mask.visible).mean(1), out.mean(1), atol=1e-5)
        # the test can fail: touching one visible patch changes that sample's output
        one = torch.zeros_like(mask.masked)
        one[0, mask.visible[0, 0]] = True
        edited = clip + 10 * pixel_map(one, grid, tubelet)
        changed = encoder(edited, mask.visible)
    assert not torch.allclose(changed[0], out[0], atol=1e-3)
    assert torch.allclose(changed[1], out[1], atol=1e-5)  # and samples stay independent


def test_conv_block_mixes_neighbours_unless_masked():
    """The 5x5 depth-wise conv does spread a position into its neighbours; the keep map is what stops it."""
    torch.manual_seed(0)
    block = ConvBlock(8).eval()
    x = torch.randn(1, 8, 6, 6)
    edited = x.clone()
    edited[..., 2, 2] += 10 * torch.randn(8)  # not a constant: LayerNorm would remove that
    keep = torch.ones(1, 1, 6, 6)
    keep[..., 2, 2] = 0
    with torch.no_grad():
        assert not torch.allclose(block(x)[..., 2, 3], block(edited)[..., 2, 3], atol=1e-3)
        assert torch.allclose(block(x, keep)[..., 2, 3], block(edited, keep)[..., 2, 3], atol=1e-6)


@pytest.mark.parametrize(
    "shape, tubelet, tokens",
    [
        ((2, 3, 1, 32, 32), 1, 4),
        ((2, 3, 1, 48, 64), 1, 12),
        ((1, 3, 1, 64, 64), 2, 16),  # an image fed to a video encoder fills the tubelet
        ((2, 3, 2, 64, 64), 2, 16),
        ((1, 3, 4, 48, 64), 2, 24),
        ((2, 3, 4, 32, 32), 2, 8),
    ],
)
def test_shapes_for_images_and_clips(shape, tubelet, tokens):
    encoder = tiny(tubelet)
    clip = torch.randn(shape)
    grid = encoder.token_grid(shape)
    assert grid[0] * grid[1] * grid[2] == tokens
    assert encoder(clip).shape == (shape[0], tokens, 96)
    mask = tube_mask(shape[0], grid, 0.75)
    assert encoder(clip, mask.visible).shape == (shape[0], mask.visible.shape[1], 96)


def test_full_visible_index_equals_no_mask():
    encoder = tiny(2)
    clip = torch.randn(2, 3, 4, 32, 32)
    everything = torch.arange(8).expand(2, -1)
    assert torch.allclose(encoder(clip, everything), encoder(clip), atol=1e-5)


@pytest.mark.parametrize("size", [(40, 32), (32, 24)])
def test_size_not_divisible_by_16_is_rejected(size):
    with pytest.raises(ValueError, match="divisible"):
        tiny(1)(torch.randn(1, 3, 1, *size))


def test_interface_matches_vision_transformer():
    encoder = tiny(2)
    assert (encoder.embed_dim, encoder.depth, encoder.patch_size, encoder.tubelet_size) == (96, 2, 16, 2)
    assert encoder.num_prefix_tokens == 0 and len(encoder.blocks) == 2
    assert set(ENCODER_NAMES) >= {"convvit_tiny", "convvit_small", "convvit_base"}
    ids = {name: encoder.layer_id(name) for name, _ in encoder.named_parameters()}
    assert ids["patch_embed1.proj.weight"] == ids["blocks1.0.attn.weight"] == ids["blocks2.0.mlp.0.weight"] == 0
    assert ids["patch_embed4.weight"] == 0
    assert ids["blocks.0.attn.qkv.weight"] == 1 and ids["blocks.1.mlp.fc2.bias"] == 2
    assert ids["norm.weight"] == ids["fuse1.proj.weight"] == 3
    assert set(ids.values()) == {0, 1, 2, 3}


def test_config_errors():
    with pytest.raises(ConfigError, match="class token"):
        build_encoder(ModelConfig(name="convvit_tiny", cls_token=True))
    with pytest.raises(ConfigError, match="stride of 16"):
        build_encoder(ModelConfig(name="convvit_tiny", patch_size=8))
    assert build_encoder(ModelConfig(name="convvit_tiny", patch_size=16)).patch_size == 16


def test_drop_path_only_in_transformer_blocks():
    encoder = build_encoder(ModelConfig(name="convvit_tiny", drop_path=0.2))
    assert [block.drop_path.rate for block in encoder.blocks] == pytest.approx([0.0, 0.2])
    assert all(block.drop_path.rate == 0.0 for block in [*encoder.blocks1, *encoder.blocks2])


@pytest.mark.parametrize("tubelet, paper", [(2, 85e6), (1, 84e6)])
def test_convvit_base_has_the_papers_size(tubelet, paper):
    # CMAE-V Tables 1-2: ConvViT-B 85 M (video); ConvMAE's ConvViT-B 84 M (images)
    params = sum(p.numel() for p in build_encoder(ModelConfig(name="convvit_base", tubelet_size=tubelet)).parameters())
    assert abs(params - paper) / paper < 0.02, params

# data.views=auto: each method takes its own view sampler, not the cmae_v preset's
SMALL = ["model.name=convvit_tiny", "data.image_size=32", "data.num_frames=4", "data.views=auto", *TINY_DECODER,
         *TINY_HEADS]


@pytest.mark.parametrize(
    "method, extra, frames",
    [
        ("videomae", ["method.masking=tube"], 4),
        ("cmae_v", [], 4),
        ("mae", ["model.tubelet_size=1", "method.masking=random", "method.mask_ratio=0.75", "data.num_frames=1"], 1),
    ],
)
def test_methods_train_a_convvit(method, extra, frames):
    torch.manual_seed(0)
    model = build_method(load_config("configs/demo/cmae_v.yaml", SMALL + [f"method.name={method}", *extra]))
    batch = {view: torch.randn(2, 3, frames, 32, 32) for view in model.views}
    out = model(batch)
    assert torch.isfinite(out.loss)
    assert all(torch.isfinite(value) for value in out.terms.values())
    out.loss.backward()
    encoder = model.encoder
    for param in (encoder.patch_embed1.proj.weight, encoder.blocks1[0].attn.weight, encoder.blocks2[0].conv1.weight,
                  encoder.fuse1.proj.weight, encoder.blocks[0].attn.qkv.weight):
        assert param.grad is not None and param.grad.abs().sum() > 0
