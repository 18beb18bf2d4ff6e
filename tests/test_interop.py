"""cmae's videomae with weights converted from Hugging Face's VideoMAEForPreTraining computes HF's loss."""

import pytest
import torch

from cmae.config import load_config
from cmae.interop import videomae_from_hf
from cmae.masking import make_mask
from cmae.methods import build_method

transformers = pytest.importorskip("transformers")


def test_videomae_from_hf_gives_the_same_loss_and_gradients():
    torch.manual_seed(0)
    hf = transformers.VideoMAEForPreTraining(transformers.VideoMAEConfig(
        image_size=32, patch_size=8, num_frames=4, tubelet_size=2, hidden_size=48, num_hidden_layers=2,
        num_attention_heads=2, intermediate_size=192, decoder_hidden_size=32, decoder_num_hidden_layers=1,
        decoder_num_attention_heads=2, decoder_intermediate_size=128, qkv_bias=True, use_mean_pooling=False,
        norm_pix_loss=True, layer_norm_eps=1e-6,
    ))
    config = load_config("configs/demo/videomae.yaml", [
        "model.name=vit_pico_p4", "model.patch_size=8", "model.decoder_dim=32", "model.decoder_depth=1",
        "data.num_frames=4", "data.image_size=32", "model.pos_embed=joint"])
    # vit_pico_p4 is 48 wide with 2 blocks and 2 heads, as the HF model above
    method = build_method(config)
    state = videomae_from_hf(hf.state_dict())
    method.load_state_dict(state, strict=True)
    hf.decoder.norm.eps = 1e-6  # HF's decoder norm uses PyTorch's default eps; cmae's 1e-6
    clip = torch.randn(2, 3, 4, 32, 32)
    mask = make_mask("tube", 2, (2, 4, 4), 0.75, "cpu")
    hf_loss = hf(clip.transpose(1, 2), bool_masked_pos=mask.masked).loss
    loss = method.reconstruct(clip, mask).loss
    assert torch.allclose(loss, hf_loss, atol=1e-5), (loss, hf_loss)
    hf_loss.backward()
    loss.backward()
    assert torch.allclose(method.encoder.patch_embed.proj.weight.grad,
                          hf.videomae.embeddings.patch_embeddings.projection.weight.grad, atol=1e-6)
