
import pytest
import torch

from cmae.config import ConfigError, load_config
from cmae.engine.pretrain import pretrain
from cmae.engine.runtime import read_metrics
from cmae.methods import build_method
from cmae.methods.cmae_v import CMAEV, momentum_at
from tests.helpers import TINY_HEADS, TINY_MODEL, tiny_overrides

PRESET = "configs/demo/cmae_v.yaml"
TINY = TINY_MODEL + TINY_HEADS


def make(*extra) -> CMAEV:
    torch.manual_seed(0)
    return build_method(load_config(PRESET, TINY + list(extra)))


def batch(b=4):
    return {"video": torch.randn(b, 3, 4, 32, 32), "target": torch.randn(b, 3, 4, 32, 32)}


def test_target_branch_gets_no_gradient_and_follows_the_ema():
    method = make("method.momentum=0.9", "method.momentum_schedule=constant")
    optimizer = torch.optim.SGD([p for p in method.parameters() if p.requires_grad], lr=0.5)
    out = method(batch())
    assert set(out.terms) >= {"loss_rec", "loss_con"}
    out.loss.backward()
    for module in (method.target_encoder, method.target_projector):
        assert all(not p.requires_grad and p.grad is None for p in module.parameters())
    assert method.encoder.blocks[0].attn.qkv.weight.grad.abs().sum() > 0
    assert method.projector[0].weight.grad.abs().sum() > 0
    before = {n: p.clone() for n, p in method.target_encoder.named_parameters()}
    optimizer.step()
    method.after_step(1, 10)
    online = dict(method.encoder.named_parameters())
    for name, target in method.target_encoder.named_parameters():
        assert torch.allclose(target, 0.9 * before[name] + 0.1 * online[name], atol=1e-6), name
    assert method.current_momentum.item() == pytest.approx(0.9)


def test_online_sees_visible_tokens_and_target_all():
    method = make()
    seen = {}
    method.encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.__setitem__("online", i[0].shape))
    method.target_encoder.blocks[0].register_forward_hook(lambda m, i, o: seen.__setitem__("target", i[0].shape))
    method(batch(2))
    # 4 frames / tubelet 2 = 2 steps x 16 places; 90 % tube masking keeps 2 places per step
    assert seen == {"online": (2, 4, 48), "target": (2, 32, 48)}


def test_feature_options():
    for feature in ("decoder", "encoder"):
        out = make(f"method.feature={feature}")(batch())
        assert torch.isfinite(out.loss)
    with pytest.raises(ConfigError, match="method.feature"):
        make("method.feature=cls")
    with pytest.raises(ConfigError, match="momentum_schedule"):
        make("method.momentum_schedule=linear")


def test_without_predictor_the_query_is_the_projection():
    method = make("method.predictor=false")
    assert isinstance(method.predictor, torch.nn.Identity)
    assert not any("predictor" in name for name, _ in method.named_parameters())
    out = method(batch())
    out.loss.backward()
    assert torch.isfinite(out.loss) and method.projector[0].weight.grad.abs().sum() > 0


def test_momentum_schedules():
    assert momentum_at(50, 100, 0.996, "constant") == 0.996
    assert momentum_at(0, 100, 0.996, "cosine") == pytest.approx(0.996)
    assert momentum_at(50, 100, 0.996, "cosine") == pytest.approx(0.998)
    assert momentum_at(100, 100, 0.996, "cosine") == pytest.approx(1.0)


def test_2tau_scaling():
    torch.manual_seed(1)
    b = batch()
    plain = make("method.temperature=0.2")
    scaled = make("method.temperature=0.2", "method.con_scale_2tau=true")
    torch.manual_seed(5)
    a = plain(b).terms["loss_con"]
    torch.manual_seed(5)
    assert scaled(b).terms["loss_con"] == pytest.approx(0.4 * a.item(), rel=1e-5)


def test_pretrain_logs_both_losses_and_resume_restores_target(synth_dir, tmp_path):
    overrides = tiny_overrides(synth_dir, **{"train.epochs": 2, "train.keep_every": 1}) + TINY_HEADS
    pretrain(load_config(PRESET, overrides), tmp_path / "full")
    records = read_metrics(tmp_path / "full" / "metrics.jsonl")
    assert {"loss_rec", "loss_con", "momentum"} <= set(records[0])
    state = torch.load(tmp_path / "full" / "checkpoint-0001.pt", weights_only=True)
    assert "target_encoder.blocks.0.attn.qkv.weight" in state["model"] and "current_momentum" in state["model"]
    assert state["model"]["current_momentum"].item() == pytest.approx(momentum_at(3, 6, 0.99, "cosine"))
    (tmp_path / "resumed").mkdir()
    pretrain(load_config(PRESET, overrides), tmp_path / "resumed", resume=tmp_path / "full" / "checkpoint-0001.pt")
    a = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint-last.pt", weights_only=True)["model"]
    for name in a:
        assert torch.allclose(a[name].float(), b[name].float(), atol=1e-6), name
