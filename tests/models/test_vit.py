import math

import pytest
import torch

from cmae.config import ModelConfig
from cmae.masking import tube_mask
from cmae.models import build_encoder
from cmae.models.decoder import PixelDecoder
from cmae.models.patchify import gather_tokens
from cmae.models.vit import VisionTransformer


def tiny_vit(**kw) -> VisionTransformer:
    return VisionTransformer(embed_dim=48, depth=2, num_heads=2, patch_size=8, **kw)


@pytest.mark.parametrize(
    "shape, tubelet, tokens",
    [((2, 3, 1, 32, 32), 1, 16), ((2, 3, 4, 32, 32), 2, 32), ((2, 3, 1, 32, 32), 2, 16), ((1, 3, 8, 16, 48), 2, 48)],
)
def test_encoder_shapes_for_images_and_clips(shape, tubelet, tokens):
    vit = tiny_vit(tubelet_size=tubelet)
    assert vit(torch.randn(shape)).shape == (shape[0], tokens, 48)


def test_cls_token_leads():
    vit = tiny_vit(tubelet_size=1, cls_token=True)
    assert vit(torch.randn(2, 3, 1, 16, 16)).shape == (2, 5, 48)


def test_encoder_runs_only_visible_tokens():
    torch.manual_seed(0)
    vit = tiny_vit(tubelet_size=2).eval()
    clip = torch.randn(2, 3, 4, 32, 32)
    mask = tube_mask(2, (2, 4, 4), 0.75)
    out = vit(clip, mask.visible)
    assert out.shape == (2, 8, 48)
    # changing a masked patch's pixels changes nothing; changing a visible one does
    masked_place = mask.masked[0].nonzero()[0].item() % 16
    row, col = divmod(masked_place, 4)
    edited = clip.clone()
    edited[0, :, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] += 5
    assert torch.allclose(vit(edited, mask.visible), out, atol=1e-5)
    visible_place = mask.visible[0, 0].item() % 16
    row, col = divmod(visible_place, 4)
    edited[0, :, :, row * 8 : (row + 1) * 8, col * 8 : (col + 1) * 8] += 5
    assert not torch.allclose(vit(edited, mask.visible)[0], out[0], atol=1e-3)


def test_timm_parameter_names():
    names = set(dict(tiny_vit(cls_token=True).named_parameters()))
    for name in ["patch_embed.proj.weight", "cls_token", "blocks.0.attn.qkv.weight", "blocks.1.attn.proj.bias",
                 "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.bias", "blocks.0.norm1.weight", "norm.weight"]:
        assert name in names


def test_presets_have_paper_sizes():
    def params(name: str) -> int:
        return sum(p.numel() for p in build_encoder(ModelConfig(name=name, tubelet_size=2)).parameters())

    assert 85e6 < params("vit_base") < 88e6  # VideoMAE ViT-B: 87 M with the tubelet embedding
    assert 21e6 < params("vit_small") < 23e6


def test_drop_path_only_in_training():
    vit = tiny_vit(tubelet_size=1, drop_path_rate=0.5)
    x = torch.randn(4, 3, 1, 16, 16)
    vit.eval()
    assert torch.equal(vit(x), vit(x))
    vit.train()
    torch.manual_seed(0)
    a = vit(x)
    torch.manual_seed(1)
    assert not torch.allclose(a, vit(x))


def test_decoder_places_visible_tokens_and_mask_tokens():
    torch.manual_seed(0)
    decoder = PixelDecoder(encoder_dim=48, patch_dim=12, embed_dim=32, depth=1, num_heads=2)
    mask = tube_mask(2, (2, 2, 2), 0.5)
    pred, hidden = decoder(torch.randn(2, 4, 48), mask.visible, (2, 2, 2))
    assert pred.shape == (2, 8, 12) and hidden.shape == (2, 8, 32)


def test_bad_input_size():
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        tiny_vit(tubelet_size=1)(torch.randn(1, 3, 1, 20, 16))


@pytest.mark.parametrize("scheme", ["xavier", "normal"])
def test_init_schemes(scheme):
    torch.manual_seed(0)
    encoder = VisionTransformer(embed_dim=96, depth=2, num_heads=3, patch_size=8, tubelet_size=2, init=scheme)
    decoder = PixelDecoder(encoder_dim=96, patch_dim=384, embed_dim=64, depth=1, num_heads=2, init=scheme)
    fc1, head = encoder.blocks[0].mlp.fc1, decoder.decoder_pred  # [384, 96], [384, 64]
    expected = {"xavier": (math.sqrt(2 / (96 + 384)), math.sqrt(2 / (64 + 384))), "normal": (0.02, 0.02)}[scheme]
    assert fc1.weight.std().item() == pytest.approx(expected[0], rel=0.05)
    assert head.weight.std().item() == pytest.approx(expected[1], rel=0.05)
    assert not fc1.bias.any() and not head.bias.any()
    proj = encoder.patch_embed.proj.weight  # a linear map of a 2x8x8x3 patch
    assert proj.std().item() == pytest.approx(expected[0] if scheme == "normal" else math.sqrt(2 / (96 + 384)),
                                              rel=0.05)
    # MAE's mask token starts at N(0, 0.02); Hugging Face's VideoMAE at zero
    assert (decoder.mask_token.abs().sum() == 0) == (scheme == "normal")


@pytest.mark.parametrize("shape, tubelet", [((2, 3, 4, 32, 32), 2), ((2, 3, 1, 32, 32), 2), ((3, 3, 1, 32, 32), 1)])
def test_embedding_only_the_visible_patches_equals_embedding_all_then_picking(shape, tubelet):
    torch.manual_seed(0)
    vit = tiny_vit(tubelet_size=tubelet)
    clip = torch.randn(shape)
    grid = vit.token_grid(shape)
    visible = tube_mask(shape[0], grid, 0.5).visible
    picked = torch.gather(vit.embed(clip), 1, visible[..., None].expand(-1, -1, 48))
    assert torch.allclose(vit.embed(clip, visible), picked, atol=1e-5)


def test_gather_tokens_equals_torch_gather_and_broadcasts_a_shared_table():
    x, index = torch.randn(3, 10, 4), torch.tensor([[0, 2, 9], [1, 1, 5], [8, 3, 0]])
    assert torch.equal(gather_tokens(x, index), torch.gather(x, 1, index[..., None].expand(-1, -1, 4)))
    assert torch.equal(gather_tokens(x[:1], index), torch.gather(x[:1].expand(3, -1, -1), 1,
                                                                  index[..., None].expand(-1, -1, 4)))


def test_grad_checkpointing_gives_the_same_gradients_with_drop_path():
    """Checkpointing recomputes each block in backward; drop path's draws must replay exactly."""
    torch.manual_seed(0)
    vit = tiny_vit(tubelet_size=2, drop_path_rate=0.5).train()
    decoder = PixelDecoder(48, 2 * 8 * 8 * 3, embed_dim=32, depth=2, num_heads=2)
    clip = torch.randn(4, 3, 4, 32, 32)
    mask = tube_mask(4, (2, 4, 4), 0.5)

    def gradients(checkpointing: bool, seed: int = 1) -> list[torch.Tensor]:
        vit.grad_checkpointing = decoder.grad_checkpointing = checkpointing
        vit.zero_grad(), decoder.zero_grad()
        torch.manual_seed(seed)  # the same drop-path draws in both runs
        saved.clear()
        with torch.autograd.graph.saved_tensors_hooks(lambda t: saved.append(t) or t, lambda t: t):
            pred, _ = decoder(vit(clip, mask.visible), mask.visible, (2, 4, 4))
        pred.square().mean().backward()
        return [p.grad.clone() for p in [*vit.parameters(), *decoder.parameters()]]

    saved: list[torch.Tensor] = []
    plain = gradients(False)
    kept_plain = len(saved)
    checkpointed = gradients(True)
    assert len(saved) < kept_plain / 2  # the blocks' activations were not kept
    other_draws = gradients(False, seed=2)  # the test can fail: other drop-path draws give other gradients
    assert any(not torch.allclose(a, b) for a, b in zip(plain, other_draws, strict=True))
    for a, b in zip(plain, checkpointed, strict=True):
        assert torch.allclose(a, b, atol=1e-6)


@pytest.mark.parametrize("name,timm_name", [
    ("vit_large_patch16", "vit_large_patch16_224"), ("vit_huge_patch14", "vit_huge_patch14_224"),
    ("vit_giant_patch14", "vit_giant_patch14_224"), ("vit_huge_patch16", "vit_huge_patch14_224")])
def test_large_presets_have_timms_shapes(name, timm_name):
    timm = pytest.importorskip("timm")
    with torch.device("meta"):  # shapes only: ViT-g has a billion parameters
        ours = build_encoder(ModelConfig(name=name, tubelet_size=1, cls_token=True)).state_dict()
        theirs = timm.create_model(timm_name, pretrained=False, num_classes=0).state_dict()
    theirs.pop("pos_embed")  # timm's learned table; cmae's tables are fixed
    ours["patch_embed.proj.weight"] = ours["patch_embed.proj.weight"][:, :, 0]
    if name == "vit_huge_patch16":  # VideoMAE's ViT-H: timm's ViT-H/14 with 16 px patches
        theirs["patch_embed.proj.weight"] = torch.empty(1280, 3, 16, 16, device="meta")
    assert {k: tuple(v.shape) for k, v in ours.items()} == {k: tuple(v.shape) for k, v in theirs.items()}
