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


def test_nothing_masked_gives_a_zero_loss_not_nan():
    method = build_method(load_config("configs/demo/videomae.yaml", TINY + ["method.mask_ratio=0"]))
    out = method({"video": torch.randn(2, 3, 4, 32, 32)})
    assert out.loss.item() == 0.0


def test_decoder_masking_scores_only_the_decoded_share_of_the_masked_tokens():
    """VideoMAE V2's dual masking: a masked token the decoder drops has no part in the loss."""
    torch.manual_seed(0)
    method = build_method(load_config("configs/demo/videomae.yaml", TINY + ["method.decoder_mask_ratio=0.5"]))
    clip = torch.randn(1, 3, 4, 32, 32)  # grid (2, 4, 4): 4 visible tokens, 28 masked, 14 of them decoded
    mask = method.make_mask(clip)
    torch.manual_seed(1)
    rec = method.reconstruct(clip, mask, decoder_masking=True)
    assert rec.decoded.shape == (1, 4 + 14) and rec.pred.shape == (1, 18, 2 * 8 * 8 * 3)
    decoded = set(rec.decoded[0].tolist())
    dropped = next(n for n in range(32) if mask.masked[0, n] and n not in decoded)
    kept = next(n for n in sorted(decoded) if mask.masked[0, n])

    def loss_after_changing(token: int) -> torch.Tensor:
        changed = clip.clone()
        t, place = divmod(token, 16)
        row, col = divmod(place, 4)
        changed[:, :, 2 * t : 2 * t + 2, 8 * row : 8 * row + 8, 8 * col : 8 * col + 8] += torch.randn(1, 3, 2, 8, 8)
        torch.manual_seed(1)
        return method.reconstruct(changed, mask, decoder_masking=True).loss

    assert torch.equal(loss_after_changing(dropped), rec.loss)
    assert not torch.isclose(loss_after_changing(kept), rec.loss)
    assert method.reconstruct(clip, mask).decoded is None  # evaluation and figures decode every token
