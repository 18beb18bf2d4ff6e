import pytest
import torch
from PIL import Image

from cmae.config import ConfigError, load_config
from cmae.data.decoding import open_video
from cmae.engine.pretrain import pretrain, training_samples
from cmae.engine.runtime import read_metrics
from cmae.losses import simsiam_loss
from cmae.methods import build_method
from cmae.models.pooling import Pooling
from tests.helpers import TINY_HEADS, TINY_MODEL, tiny_overrides

PRESET = "configs/demo/vic_mae.yaml"
TINY = TINY_MODEL + TINY_HEADS


def make(*extra):
    torch.manual_seed(0)
    return build_method(load_config(PRESET, TINY + list(extra)))


def views(b=4):
    return {"view1": torch.randn(b, 3, 1, 32, 32), "view2": torch.randn(b, 3, 1, 32, 32)}


def test_each_view_gets_its_own_mask():
    method = make("method.mask_ratio=0.75")
    seen = []
    method.encoder.register_forward_pre_hook(lambda module, args: seen.append(args[1]))
    method(views(4))
    visible = seen[0]  # one pass over [view1; view2]
    assert visible.shape == (8, 4)  # 75 % of 16 tokens masked
    assert all(not torch.equal(visible[i], visible[i + 4]) for i in range(4))


@pytest.mark.parametrize("rec_views", ["both", "first"])
def test_reconstruction_options_give_gradients_everywhere(rec_views):
    method = make(f"method.rec_views={rec_views}", "method.con_start_epoch=0")
    method(views()).loss.backward()
    assert method.projector[0].weight.grad.abs().sum() > 0
    assert method.decoder.decoder_pred.weight.grad.abs().sum() > 0


def test_gem_with_p1_is_the_mean_and_pooling_options():
    tokens = torch.rand(2, 5, 3) + 0.1
    gem = Pooling("gem", p=1.0)
    assert torch.allclose(gem(tokens), tokens.mean(dim=1), atol=1e-6)
    assert torch.equal(Pooling("max")(tokens), tokens.max(dim=1).values)
    assert isinstance(make("method.pooling=gem").pool.p, torch.nn.Parameter)
    with pytest.raises(ConfigError, match="method.pooling"):
        make("method.pooling=median")


def test_lambda_schedule():
    method = make("method.con_weight=0.025", "method.con_start_epoch=200")
    for epoch, expected in [(0.0, 0.0), (199.9, 0.0), (200.0, 0.025), (650.0, 0.025)]:
        method.set_epoch(epoch)
        assert method.current_con_weight.item() == pytest.approx(expected)
    method.set_epoch(0.0)
    out = method(views())
    assert out.terms["con_weight"] == 0 and out.loss.item() == pytest.approx(out.terms["loss_rec"].item())


def test_projector_options():
    released = make("method.projector=released").projector  # the authors' code: D -> 4096 -> 4096 -> 128
    assert [m.out_features for m in released if isinstance(m, torch.nn.Linear)] == [4096, 4096, 128]
    assert sum(isinstance(m, torch.nn.BatchNorm1d) for m in released) == 2
    assert make().projector[-1].out_features == 96  # 2 x the 48-wide encoder
    with pytest.raises(ConfigError, match="method.projector"):
        make("method.projector=huge")


def test_contrast_options():
    """eq3 (default) and Algorithm 1's summed cross-view form give different losses on one batch."""
    batch = views()
    torch.manual_seed(1)
    eq3 = make("method.con_start_epoch=0")(batch).terms["loss_con"]
    torch.manual_seed(1)
    algorithm1 = make("method.con_start_epoch=0", "method.contrast=algorithm1")(batch).terms["loss_con"]
    assert torch.isfinite(eq3) and torch.isfinite(algorithm1) and not torch.isclose(eq3, algorithm1)
    with pytest.raises(ConfigError, match="method.contrast"):
        make("method.contrast=eq4")


def test_simsiam_target_gets_no_gradient_and_baselines_need_cls():
    with pytest.raises(ConfigError, match="model.cls_token=true"):
        make("method.name=mae_simsiam")
    method = make("method.name=mae_simsiam", "model.cls_token=true", "method.con_start_epoch=0")
    method(views()).loss.backward()
    assert method.predictor[0].weight.grad.abs().sum() > 0
    # the target side of each term is the other view's projection under stop-gradient
    z1, z2 = torch.randn(4, 16, requires_grad=True), torch.randn(4, 16, requires_grad=True)
    simsiam_loss(method.predictor(z1), z2).backward()
    assert z2.grad is None and z1.grad.abs().sum() > 0
    out = make("method.name=mae_vicreg", "model.cls_token=true")(views())
    assert {"vicreg_invariance", "vicreg_variance", "vicreg_covariance"} <= set(out.terms)


def test_pretrain_with_an_image_folder_mixed_in(synth_dir, tmp_path):
    # an ImageFolder made of single frames of the synthetic clips, one folder per object class
    lines = (synth_dir / "train_object.txt").read_text().splitlines()[:12]
    for k, line in enumerate(lines):
        path, label = line.rsplit(" ", 1)
        frame = open_video(synth_dir / path).get_frames([0])[0].permute(1, 2, 0).numpy()
        (tmp_path / "images" / f"class{label}").mkdir(parents=True, exist_ok=True)
        Image.fromarray(frame).save(tmp_path / "images" / f"class{label}" / f"{k}.png")
    overrides = tiny_overrides(synth_dir, **{"data.num_frames": 1, "model.tubelet_size": 1,
                                            "data.train_images": tmp_path / "images", "data.image_ratio": 0.5,
                                            "method.con_start_epoch": 1, "train.epochs": 2}) + TINY_HEADS
    config = load_config(PRESET, overrides)
    weight = config.method.con_weight  # the preset's lambda, from con_start_epoch on
    samples = training_samples(config)
    assert len(samples) == 48 and sum(s.path.suffix == ".png" for s in samples) == 24
    pretrain(config, tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert {"loss_rec", "loss_con", "con_weight"} <= set(records[0])
    assert [r["con_weight"] for r in records[:6]] == [0.0] * 6
    assert weight > 0 and all(r["con_weight"] == pytest.approx(weight) for r in records[6:])
