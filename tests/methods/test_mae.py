import torch

from cmae.config import load_config
from cmae.methods import build_method
from cmae.methods.mae import MAE
from cmae.methods.videomae import VideoMAE
from tests.helpers import TINY_MODEL

TINY = TINY_MODEL


def test_videomae_uses_tube_masks_and_logs_loss_rec():
    torch.manual_seed(0)
    method = build_method(load_config("configs/demo/videomae.yaml", TINY))
    assert isinstance(method, VideoMAE) and method.masking == "tube"
    clip = torch.randn(2, 3, 4, 32, 32)
    rec = method.reconstruct(clip)
    assert rec.pred.shape == (2, 32, 2 * 8 * 8 * 3)
    assert rec.latent.shape == (2, 2 * (16 - 14), 48)  # 90 % of 16 places masked -> 2 visible per step
    out = method({"video": clip, "label": torch.zeros(2)})
    assert set(out.terms) == {"loss_rec"} and out.loss.requires_grad


def test_mae_on_single_frames_with_random_masks():
    config = load_config(None, TINY + ["method.name=mae", "model.tubelet_size=1", "method.mask_ratio=0.75",
                                       "method.norm_pix=patch"])
    method = build_method(config)
    assert isinstance(method, MAE) and method.masking == "random"
    rec = method.reconstruct(torch.randn(3, 3, 1, 32, 32))
    assert rec.mask.masked.sum(dim=1).tolist() == [12, 12, 12]
    assert rec.latent.shape == (3, 4, 48)


def test_reconstruction_gradient_reaches_encoder_and_decoder():
    method = build_method(load_config("configs/demo/videomae.yaml", TINY))
    method({"video": torch.randn(2, 3, 4, 32, 32)}).loss.backward()
    for name, param in method.named_parameters():
        if name in ("encoder.cls_token",):
            continue
        assert param.grad is not None, name
