"""train.contrastive_accumulation=exact: accum_steps x micro-batches give the step of one batch,
in one process and under torchrun, with the heads' BatchNorm; `micro` does not."""

import pytest
import torch

from cmae.config import load_config
from cmae.distributed import DistInfo
from cmae.engine.grad_cache import cached_accumulation
from cmae.engine.loop import Job, start_run
from cmae.engine.pretrain import pretrain, training_dataset
from cmae.engine.runtime import read_metrics, to_device
from cmae.engine.schedule import param_groups
from cmae.methods import build_method
from cmae.methods.contrastive import join
from tests.helpers import TINY_HEADS, tiny_overrides, torchrun_pretrain

PRESETS = ["configs/demo/cmae_v.yaml", "configs/demo/vic_mae.yaml"]
# One step of global batch 32 (24 videos x data.repeat 2: other samples of a video are no negatives).
# No masking and no drop path, so that the random draws, which differ between one draw of 32 and four of
# 8 (and between ranks), cannot tell the runs apart; the replay of those draws is tested below. A fixed
# lambda 1 from the first step (cmae_v's demo rule starts at 0). lr 1e-4: AdamW's first step moves each
# weight by about lr x sign(gradient), so 1e-5 asks the gradients to agree, not the lr to be small.
ONE_STEP = {"train.epochs": 1, "train.max_steps_per_epoch": 1, "train.batch_size": 32, "train.warmup_epochs": 0,
            "train.lr": 1e-4, "data.repeat": 2, "method.mask_ratio": 0.0, "model.drop_path": 0.0,
            "method.con_weight": 1.0, "method.con_start_epoch": 0}


def one_step(synth_dir, preset, **extra) -> list[str]:
    heads = dict(text.split("=", 1) for text in TINY_HEADS) if "cmae_v" in preset else {}
    return tiny_overrides(synth_dir, **{**ONE_STEP, **heads, **extra})


def weights_and_gradients(run, config) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """{name: (weight after the step, its gradient)}: the gradient from AdamW's first moment after one
    step, (1 - beta1) g, keyed in the optimiser's order, which `param_groups` gives."""
    state = torch.load(run / "checkpoint-last.pt", weights_only=True)
    method = build_method(config)
    name_of = {id(p): n for n, p in method.named_parameters()}
    order = [name_of[id(p)] for group in param_groups(method, 0.05) for p in group["params"]]
    moments = state["optimizer"]["state"]
    grads = {name: moments[i]["exp_avg"] / (1 - config.train.betas[0]) for i, name in enumerate(order) if i in moments}
    return {name: (value, grads.get(name)) for name, value in state["model"].items()}


def step_difference(a, b, config, noise: float = 1e-5) -> tuple[float, float]:
    """(largest gradient difference / largest gradient, largest weight difference where the gradient stands
    above `noise` x the largest). AdamW's first step moves each weight by about lr x sign(g), so a gradient
    that is 0 in exact arithmetic (a bias before the heads' BatchNorm, attention's key bias) moves its weight
    by +-lr however the batch is split. BatchNorm's running statistics count as weights: whole-batch
    statistics, counted once."""
    a, b = weights_and_gradients(a, config), weights_and_gradients(b, config)
    assert a.keys() == b.keys() and any(name.endswith("running_var") for name in a)
    scale = max(float(g.abs().max()) for _, g in a.values() if g is not None)
    grads, weights = [0.0], [0.0]
    for name, (weight, grad) in a.items():
        other_weight, other_grad = b[name]
        clear = torch.ones_like(weight, dtype=torch.bool) if grad is None else grad.abs() > noise * scale
        weights.append(float((weight.float() - other_weight.float()).abs().masked_fill(~clear, 0).max()))
        if grad is not None:
            grads.append(float((grad - other_grad).abs().max()) / scale)
    return max(grads), max(weights)


@pytest.mark.parametrize("preset", PRESETS)
def test_exact_accumulation_takes_the_step_of_one_batch_and_micro_does_not(synth_dir, tmp_path, preset):
    """Heads with BatchNorm (the presets' own): exact, because the heads run once over the whole batch."""
    pretrain(load_config(preset, one_step(synth_dir, preset)), tmp_path / "full")
    exact = one_step(synth_dir, preset, **{"train.accum_steps": 4, "train.contrastive_accumulation": "exact"})
    pretrain(load_config(preset, exact), tmp_path / "exact")
    with pytest.warns(UserWarning, match="contrastive_accumulation=exact covers it"):
        pretrain(load_config(preset, one_step(synth_dir, preset, **{"train.accum_steps": 4})), tmp_path / "micro")
    config = load_config(preset, exact)
    grads, weights = step_difference(tmp_path / "full", tmp_path / "exact", config)
    assert grads < 1e-5 and weights < 1e-5
    grads, weights = step_difference(tmp_path / "full", tmp_path / "micro", config)
    assert grads > 1e-2 and weights > 1e-5
    full, exact = (read_metrics(tmp_path / run / "metrics.jsonl")[0] for run in ("full", "exact"))
    assert exact["loss_con"] == pytest.approx(full["loss_con"], rel=1e-5)  # the whole batch's InfoNCE, logged


@pytest.mark.parametrize("preset", PRESETS)
def test_exact_accumulation_under_torchrun_takes_the_step_of_one_process(synth_dir, tmp_path, preset):
    """2 processes x 4 micro-batches x 4 samples against 1 x 32: negatives, repeats' exclusion and the
    heads' global BatchNorm over the whole global batch."""
    pretrain(load_config(preset, one_step(synth_dir, preset)), tmp_path / "full")
    torchrun_pretrain(preset, tmp_path / "ddp", one_step(
        synth_dir, preset, **{"train.accum_steps": 4, "train.contrastive_accumulation": "exact"}))
    grads, weights = step_difference(tmp_path / "full", tmp_path / "ddp", load_config(preset, one_step(synth_dir, preset)))
    assert grads < 1e-5 and weights < 1e-5


def tiny_run(synth_dir, tmp_path, preset, **extra):
    config = load_config(preset, tiny_overrides(synth_dir, **{"train.accum_steps": 2, **extra}))

    def make_job(device):
        method = build_method(config)
        return Job(method, training_dataset(config, device), param_groups(method, 0.05), config.train)

    return start_run(config, tmp_path, make_job, torch.device("cpu"), DistInfo())


@pytest.mark.parametrize("preset", PRESETS)
def test_the_second_pass_replays_masks_and_drop_path(synth_dir, tmp_path, preset):
    """Gradient caching over two micro-batches with random masks and drop path leaves the gradients and
    BatchNorm statistics of one graph over both (drawn in the same order): each micro-batch's second pass
    drew what its first did."""
    run = tiny_run(synth_dir, tmp_path, preset, **{"model.drop_path": 0.2, "method.con_weight": 0.5,
                                                              "method.con_start_epoch": 0})
    method = run.job.method
    batches = iter(run.loader)
    micro_batches = [to_device(next(batches), run.device) for _ in range(2)]
    start = {k: v.clone() for k, v in method.state_dict().items()}
    torch.manual_seed(7)
    cached_accumulation(run, micro_batches)
    cached = {n: p.grad.clone() for n, p in method.named_parameters() if p.grad is not None}
    after = method.state_dict()
    method.zero_grad(set_to_none=True)
    method.load_state_dict(start)
    torch.manual_seed(7)
    embeddings = [method(data, part="embed") for data in micro_batches]
    loss_con = method.contrast(*join(embeddings))[0]
    (sum(e.rec for e in embeddings) / 2 + 0.5 * loss_con).backward()
    assert cached.keys() == {n for n, p in method.named_parameters() if p.grad is not None}
    for name, grad in cached.items():
        assert torch.allclose(grad, dict(method.named_parameters())[name].grad, atol=1e-6), name
    for name, value in method.state_dict().items():
        assert torch.equal(value, after[name]), name


def test_grad_ratio_weight_and_term_gradients_under_exact(synth_dir, tmp_path):
    """cmae_v's demo weighs InfoNCE by the gradient-ratio rule: measured through the cached gradients."""
    overrides = tiny_overrides(synth_dir, **{"train.accum_steps": 2, "train.contrastive_accumulation": "exact",
                                             "train.log_term_grads": True, "train.epochs": 1})
    pretrain(load_config("configs/demo/cmae_v.yaml", overrides), tmp_path / "run")
    records = read_metrics(tmp_path / "run" / "metrics.jsonl")
    assert all(r["grad_norm_loss_con"] > 0 and r["grad_norm_loss_rec"] > 0 for r in records)
    assert records[0]["con_weight"] == 0 < records[1]["con_weight"]  # 0 until the rule's first measurement


def test_exact_accumulation_with_grad_checkpointing_and_under_fsdp(synth_dir, tmp_path):
    """Activation checkpointing replays its own draws inside the replayed micro-batch; FSDP2 shards the heads
    that the cached pass runs: both take DDP's exact step (random masks and drop path on, per rank)."""
    preset = "configs/demo/vic_mae.yaml"
    overrides = one_step(synth_dir, preset, **{"train.accum_steps": 4, "train.contrastive_accumulation": "exact",
                                               "method.mask_ratio": 0.5, "model.drop_path": 0.1})
    torchrun_pretrain(preset, tmp_path / "ddp", overrides)
    torchrun_pretrain(preset, tmp_path / "fsdp", [*overrides, "train.strategy=fsdp", "train.grad_checkpointing=true"])
    grads, weights = step_difference(tmp_path / "ddp", tmp_path / "fsdp", load_config(preset, overrides))
    assert grads < 1e-5 and weights < 1e-5
