
import pytest
import torch

from cmae.config import ConfigError, load_config
from cmae.engine.pretrain import pretrain
from cmae.engine.runtime import read_metrics
from cmae.methods import build_method
from cmae.methods.cmae_v import CMAEV, momentum_at
from tests.helpers import TINY_HEADS, TINY_MODEL, tiny_overrides

PRESET = "configs/demo/cmae_v.yaml"
TINY = TINY_MODEL + TINY_HEADS + ["method.con_weight=1"]  # the demo's rule weighs InfoNCE 0 until it measures


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
    for feature in ("decoder", "encoder", "feature_decoder"):
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


def part_grads(method, part: str) -> dict[str, torch.Tensor | None]:
    """Gradient of one loss part on each trainable parameter (None where it does not reach)."""
    out = method(batch())
    named = [(n, p) for n, p in method.named_parameters() if p.requires_grad]
    grads = torch.autograd.grad(out.parts[part], [p for _, p in named], allow_unused=True)
    return {n: g for (n, _), g in zip(named, grads, strict=True)}


def reaches(grads: dict[str, torch.Tensor | None], prefix: str) -> bool:
    return any(g is not None and g.abs().sum() > 0 for n, g in grads.items() if n.startswith(prefix))


def test_the_feature_decoder_keeps_infonce_off_the_pixel_decoder():
    method = make("method.feature=feature_decoder", "method.feature_decoder_depth=2")
    assert len(method.feature_decoder.decoder_blocks) == 2 and isinstance(method.feature_decoder.decoder_pred,
                                                                          torch.nn.Identity)
    con = part_grads(method, "loss_con")
    assert reaches(con, "feature_decoder.") and reaches(con, "encoder.")
    assert not reaches(con, "decoder.")  # the pixel decoder learns from reconstruction alone
    rec = part_grads(method, "loss_rec")
    assert reaches(rec, "decoder.") and not reaches(rec, "feature_decoder.")
    # the default pools the pixel decoder: there InfoNCE trains it too
    assert reaches(part_grads(make(), "loss_con"), "decoder.")
    wide = make("method.feature=feature_decoder", "method.feature_decoder_dim=64")
    assert wide.feature_decoder.embed_dim == 64 and wide.feature_proj.in_features == 64


def test_target_without_final_norm_pools_the_last_block():
    method = make("method.target_norm=false").eval()
    clip = batch()["target"]
    normed = method.target_encoder(clip)
    raw = method.target_encoder(clip, final_norm=False)
    assert not torch.allclose(normed, raw)
    assert torch.allclose(method.target_embedding(clip), method.target_projector(raw.mean(1)), atol=1e-6)


def test_grad_ratio_sets_lambda_from_the_measured_norms():
    method = make("method.con_weight=grad_ratio", "method.con_grad_ratio=0.5", "method.con_balance_smoothing=0.75")
    assert method.wants_term_grads(logging=False)  # nothing measured yet: lambda is 0 until then
    assert method(batch()).terms["con_weight"] == 0
    method.observe_term_grads({"loss_rec": 0.2, "loss_con": 10.0})
    method.set_epoch(0.5)
    assert method.current_con_weight.item() == pytest.approx(0.01)
    assert not method.wants_term_grads(logging=False) and method.wants_term_grads(logging=True)
    method.observe_term_grads({"loss_rec": 0.2, "loss_con": 5.0})  # target 0.02, smoothed
    method.set_epoch(0.6)
    assert method.current_con_weight.item() == pytest.approx(0.75 * 0.01 + 0.25 * 0.02)
    assert "balanced_con_weight" in method.state_dict()
    fixed = make("method.con_weight=0.3")
    fixed.set_epoch(0.0)
    assert not fixed.wants_term_grads(logging=True) and fixed.current_con_weight.item() == pytest.approx(0.3)
    with pytest.raises(ConfigError, match="method.con_weight"):
        make("method.con_weight=balanced")


def test_files_saved_before_the_weight_buffers_still_load():
    method = make()
    state = {k: v for k, v in method.state_dict().items() if not k.endswith("con_weight")}
    make().load_state_dict(state)


@pytest.mark.parametrize("preset", ["configs/demo/cmae_v.yaml", "configs/demo/vic_mae.yaml"])
def test_log_term_grads_writes_each_terms_encoder_gradient(synth_dir, tmp_path, preset):
    frames = "4" if "cmae_v" in preset else "1"
    overrides = tiny_overrides(synth_dir, **{"train.epochs": 1, "data.num_frames": frames}) + TINY_HEADS
    if "vic_mae" in preset:
        overrides += ["model.tubelet_size=1", "method.con_start_epoch=0"]
    pretrain(load_config(preset, [*overrides, "train.log_term_grads=true", "method.con_weight=grad_ratio",
                                  "method.con_grad_ratio=0.25", "method.con_balance_smoothing=0"]), tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    assert len(records) == 3  # 24 clips / batch 8, log_every 1
    for record in records:
        assert record["grad_norm_loss_rec"] > 0 and record["grad_norm_loss_con"] > 0
    # with no smoothing, each measurement sets the next step's lambda to 0.25 x |g_rec| / |g_con|
    for before, after in zip(records, records[1:], strict=False):
        assert after["con_weight"] == pytest.approx(
            0.25 * before["grad_norm_loss_rec"] / before["grad_norm_loss_con"], rel=1e-4)
    plain = tmp_path / "plain"  # a fixed weight needs no measurement: none is logged
    pretrain(load_config(preset, [*overrides, "method.con_weight=0.1"]), plain)
    assert not any(k.startswith("grad_norm_loss") for k in read_metrics(plain / "metrics.jsonl")[0])
