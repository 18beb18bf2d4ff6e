"""train.strategy=fsdp against DDP (two real gloo processes), train.compile and
train.grad_checkpointing through the real loop, and checkpoints that read the same either way."""

import math

import pytest
import torch

from cmae.config import TrainConfig, load_config
from cmae.engine.evaluate import frozen_evaluation
from cmae.engine.loop import make_optimizer
from cmae.engine.parallel import load_full_state
from cmae.engine.pretrain import pretrain
from cmae.engine.runtime import read_metrics
from tests.helpers import tiny_overrides, torchrun_pretrain

SHORT = {"train.epochs": 2, "train.max_steps_per_epoch": 2, "train.keep_every": 1}


def losses(run) -> list[float]:
    return [record["loss"] for record in read_metrics(run / "metrics.jsonl")]


def assert_same_weights(a, b, atol: float = 1e-6) -> None:
    a = torch.load(a, weights_only=True)["model"]
    b = torch.load(b, weights_only=True)["model"]
    assert a.keys() == b.keys()
    for name, value in a.items():
        assert torch.allclose(value, b[name], atol=atol), name


@pytest.mark.parametrize("preset", ["configs/demo/cmae_v.yaml", "configs/demo/vic_mae.yaml"])
def test_fsdp_follows_the_ddp_trajectory(synth_dir, tmp_path, preset):
    """Sharded parameters, the EMA target updated shard by shard, InfoNCE over the gathered batch
    and the heads' global BatchNorm: the same losses and weights as DDP."""
    # a fixed weight: the cmae_v demo's grad_ratio rule needs the whole encoder's gradients, which FSDP refuses
    overrides = [*tiny_overrides(synth_dir, **SHORT), "method.con_weight=0.5"]
    torchrun_pretrain(preset, tmp_path / "ddp", overrides)
    torchrun_pretrain(preset, tmp_path / "fsdp", [*overrides, "train.strategy=fsdp"])
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "ddp"), rel=1e-5)
    # Adam moves a parameter whose gradient is ~0 by up to lr (2.3e-5 here) per step either way,
    # so rounding differences (reduce-scatter vs all-reduce) show there: allow a few steps' worth
    assert_same_weights(tmp_path / "ddp" / "checkpoint-last.pt", tmp_path / "fsdp" / "checkpoint-last.pt", atol=1e-4)


def test_an_fsdp_checkpoint_resumes_under_ddp_and_is_read_by_linprobe(synth_dir, tmp_path):
    """The checkpoint holds the full state in one process's layout, whatever the strategy."""
    preset, overrides = "configs/demo/videomae.yaml", tiny_overrides(synth_dir, **SHORT)
    torchrun_pretrain(preset, tmp_path / "ddp", overrides)
    torchrun_pretrain(preset, tmp_path / "fsdp", [*overrides, "train.strategy=fsdp"])
    torchrun_pretrain(preset, tmp_path / "resumed", overrides, "--resume", str(tmp_path / "fsdp" / "checkpoint-0001.pt"))
    torchrun_pretrain(preset, tmp_path / "into_fsdp", [*overrides, "train.strategy=fsdp"],
                      "--resume", str(tmp_path / "ddp" / "checkpoint-0001.pt"))
    assert losses(tmp_path / "fsdp") == pytest.approx(losses(tmp_path / "ddp"), rel=1e-5)
    for resumed in ("resumed", "into_fsdp"):  # FSDP -> DDP and DDP -> FSDP continue the run: epoch 2
        assert losses(tmp_path / resumed) == pytest.approx(losses(tmp_path / "ddp")[2:], rel=1e-5)
        assert_same_weights(tmp_path / "ddp" / "checkpoint-last.pt", tmp_path / resumed / "checkpoint-last.pt",
                            atol=1e-4)
    state = torch.load(tmp_path / "fsdp" / "checkpoint-last.pt", weights_only=True)
    assert state["optimizer"]["state"].keys() == set(range(len(state["optimizer"]["state"])))  # torch's layout
    summary = frozen_evaluation("linprobe", tmp_path / "fsdp" / "checkpoint-last.pt", tmp_path / "lp", overrides=[
        f"data.train={synth_dir / 'train.txt'}", f"data.val={synth_dir / 'val.txt'}", "eval.probe_epochs=2"])
    assert 0.0 <= summary["top1"] <= 100.0


def test_fsdp_under_bf16_with_batchnorm_heads(synth_dir, tmp_path):
    """The heads' BatchNorm keeps fp32 weights next to its fp32 statistics; blocks gather in bf16."""
    overrides = [*tiny_overrides(synth_dir, **{**SHORT, "train.epochs": 1, "train.precision": "bf16"}),
                 "method.con_weight=1"]  # FSDP refuses the demo's grad_ratio rule
    torchrun_pretrain("configs/demo/cmae_v.yaml", tmp_path / "bf16", [*overrides, "train.strategy=fsdp"])
    assert all(math.isfinite(loss) for loss in losses(tmp_path / "bf16"))


def test_a_resumed_optimiser_keeps_this_runs_update_kernel():
    layer = torch.nn.Linear(3, 2)
    old = torch.optim.AdamW(layer.parameters())  # a checkpoint written with the per-parameter loop
    layer(torch.randn(4, 3)).sum().backward()
    old.step()
    new = make_optimizer([{"params": list(layer.parameters())}], 1e-3, TrainConfig())
    load_full_state(layer, layer, new, layer.state_dict(), old.state_dict())
    assert new.param_groups[0]["fused"] is True and torch.equal(new.state[layer.weight]["exp_avg"],
                                                                old.state[layer.weight]["exp_avg"])


def test_compiled_runs_keep_plain_names_and_resume_with_or_without_compilation(synth_dir, tmp_path):
    preset = "configs/demo/videomae.yaml"
    overrides = tiny_overrides(synth_dir, **{**SHORT, "train.max_steps_per_epoch": 3, "train.base_lr": 0.01})
    pretrain(load_config(preset, [*overrides, "train.compile=true"]), tmp_path / "compiled")
    state = torch.load(tmp_path / "compiled" / "checkpoint-last.pt", weights_only=True)
    assert not [name for name in state["model"] if "_orig_mod" in name]
    assert "encoder.patch_embed.proj.weight" in state["model"]
    curve = losses(tmp_path / "compiled")
    assert curve[-1] < curve[0]
    # the second epoch again, eager, from the compiled run's first checkpoint: the same masks (the
    # compiled run draws eager's random numbers), so the same run up to the fused kernels' rounding
    pretrain(load_config(preset, overrides), tmp_path / "eager", tmp_path / "compiled" / "checkpoint-0001.pt")
    assert losses(tmp_path / "eager") == pytest.approx(curve[3:], rel=1e-4)
    assert_same_weights(tmp_path / "compiled" / "checkpoint-last.pt", tmp_path / "eager" / "checkpoint-last.pt",
                        atol=1e-4)


def test_grad_checkpointing_trains_exactly_as_without(synth_dir, tmp_path):
    """cmae_v with stochastic depth: recomputation replays the RNG, so the run is the same."""
    overrides = tiny_overrides(synth_dir, **{**SHORT, "model.drop_path": 0.2})
    pretrain(load_config("configs/demo/cmae_v.yaml", overrides), tmp_path / "plain")
    pretrain(load_config("configs/demo/cmae_v.yaml", [*overrides, "train.grad_checkpointing=true"]), tmp_path / "ckpt")
    assert losses(tmp_path / "ckpt") == pytest.approx(losses(tmp_path / "plain"), rel=1e-6)
    assert_same_weights(tmp_path / "plain" / "checkpoint-last.pt", tmp_path / "ckpt" / "checkpoint-last.pt")
