"""The one training loop (pre-training and fine-tuning), in one process or under torchrun.

    train_loop(config, output, make_job, resume)
      start_run      seed, build the job (method, data, parameter groups), loader, DDP or FSDP2, AdamW
      restore_state  --resume: weights, optimiser, scaler, epoch/step, every rank's RNG streams
      train_one_epoch, then save_state after each epoch (atomic checkpoint-last.pt)
      summarize      steps, first/last logged metrics, the job's own `finish` entries

Per-iteration cosine schedule with warmup, gradient accumulation (ranks reduce gradients on the last
micro-batch only), optional clipping, metrics.jsonl every `log_every` steps.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from cmae.config import Config, ConfigError, TrainConfig, config_from_dict, save_config
from cmae.distributed import (
    DistInfo,
    all_reduce_sum,
    all_true,
    barrier,
    cleanup,
    gather_objects,
    init_distributed,
)
from cmae.engine.checkpoint import load_checkpoint, rng_states, save_checkpoint, set_rng_states
from cmae.engine.parallel import (
    compile_model,
    enable_grad_checkpointing,
    full_state,
    gradient_sync,
    load_full_state,
    wrap_method,
)
from cmae.engine.runtime import (
    MetricsLog,
    autocast,
    read_metrics,
    resolve_device,
    resolve_precision,
    seed_everything,
    to_device,
)
from cmae.engine.schedule import cosine_with_warmup
from cmae.methods.base import Method

CHECKPOINT_NAME = "checkpoint-last.pt"


@dataclass
class Job:
    """What the loop trains, built after the process group is up and the seed is set.

    `train` holds the optimiser/schedule settings: `config.train` for pre-training, the
    `finetune` section mapped onto a TrainConfig for fine-tuning. Parameter groups may
    carry an "lr_scale" (layer-wise decay). `finish(method)` runs on every rank after the
    last epoch (e.g. the test set) and returns entries for the summary.
    """

    method: Method
    dataset: Dataset
    groups: list[dict]
    train: TrainConfig
    finish: Callable[[nn.Module], dict[str, Any]] | None = None


def per_rank_batch(train: TrainConfig, world_size: int) -> int:
    """`batch_size` is global: split over processes and accumulation steps."""
    parts = world_size * train.accum_steps
    if train.batch_size % parts:
        raise ConfigError(
            f"batch_size={train.batch_size} is not divisible by "
            f"{world_size} processes x accum_steps={train.accum_steps}"
        )
    return train.batch_size // parts


def peak_lr(train: TrainConfig) -> float:
    """Linear scaling rule: lr = base_lr x global batch / 256, unless lr is set."""
    return train.lr if train.lr > 0 else train.base_lr * train.batch_size / 256


def make_loader(dataset, config: Config, dist_info: DistInfo, batch: int, train: bool = True) -> DataLoader:
    """A DistributedSampler even for one process: its (seed, epoch) permutation makes resume exact.
    Evaluation (train=False) keeps every sample once, in order, split over ranks."""
    sampler = DistributedSampler(
        dataset,
        num_replicas=dist_info.world_size,
        rank=dist_info.rank,
        shuffle=train,
        seed=config.train.seed,
        drop_last=train,
    )
    return DataLoader(
        dataset,
        batch_size=batch,
        sampler=sampler,
        num_workers=config.data.num_workers,
        drop_last=train,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=False,
    )


class DecodeFailures:
    """Totals skipped (corrupt) files over workers and ranks; stops the run past the allowed fraction."""

    # Judge the fraction only once enough files were tried, so one bad file early is not fatal.
    MIN_ATTEMPTS = 100

    def __init__(self, max_fraction: float):
        self.max_fraction = max_fraction
        self.failed = 0
        self.attempted = 0
        self.pending = torch.zeros(2, dtype=torch.float64)  # this rank's (failed, decoded) since the last check

    def update(self, num_failed: torch.Tensor) -> None:
        """Count a batch's failures (a CPU tensor from the loader: no device sync, no collective)."""
        self.pending += torch.stack([num_failed.sum(), torch.tensor(num_failed.numel())]).double()

    def check(self, final: bool = False) -> None:
        """Total the counts over ranks (a collective: every rank calls it at the same steps) and judge."""
        counts, self.pending = all_reduce_sum(self.pending), torch.zeros(2, dtype=torch.float64)
        self.failed += int(counts[0])
        self.attempted += int(counts[0] + counts[1])
        if self.attempted == 0 or (self.attempted < self.MIN_ATTEMPTS and not final):
            return
        fraction = self.failed / self.attempted
        if fraction > self.max_fraction:
            raise RuntimeError(
                f"{self.failed} of {self.attempted} files could not be decoded ({fraction:.1%} > "
                f"data.max_failed_fraction={self.max_fraction:.1%}); the warnings above name them"
            )


@dataclass
class Run:
    """A run's live state: built by `start_run`, advanced by `train_one_epoch`."""

    config: Config
    output: Path
    job: Job
    device: torch.device
    dtype: torch.dtype
    dist_info: DistInfo
    loader: DataLoader
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    model: nn.Module  # what the loop calls: the method, its DDP wrapper, or the method sharded by FSDP2
    metrics: MetricsLog
    failures: DecodeFailures
    steps_per_epoch: int
    warmup_steps: int
    lr_peak: float
    start_epoch: int = 0
    step: int = 0
    started: float = 0.0
    # non-finite losses since the last check, kept on the device: checking each step would sync it
    nonfinite: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    last_terms: dict[str, float] = field(default_factory=dict)

    @property
    def train(self) -> TrainConfig:
        return self.job.train

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.train.epochs


def train_loop(config: Config, output: str | Path, make_job: Callable[[torch.device], Job],
               resume: str | Path | None = None) -> dict[str, Any]:
    """Train `make_job(device)`'s method; returns the summary (also written to summary.json)."""
    output = Path(output)
    device = resolve_device(config.train.device)
    dist_info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    try:
        run = start_run(config, output, make_job, device, dist_info)
        if resume is not None:
            restore_state(run, resume)
        if dist_info.is_main:
            save_config(config, output / "config.yaml")
        run.started = time.time()
        for epoch in range(run.start_epoch, run.train.epochs):
            train_one_epoch(run, epoch)
            if (epoch + 1) % run.train.save_every == 0 or epoch + 1 == run.train.epochs:
                save_state(run, epoch + 1)
        return summarize(run)
    finally:
        cleanup()


def start_run(config: Config, output: Path, make_job: Callable[[torch.device], Job], device: torch.device,
              dist_info: DistInfo) -> Run:
    """Seed, build the job, its loader and optimiser; nothing trained yet."""
    dtype = resolve_precision(config.train.precision, device)
    seed_everything(config.train.seed + dist_info.rank)
    job = make_job(device)
    train = job.train
    micro_batch = per_rank_batch(train, dist_info.world_size)
    loader = make_loader(job.dataset, config, dist_info, micro_batch)
    if train.accum_steps > 1 and len(job.method.views) > 1 and dist_info.is_main:
        # Two-view losses and their heads' BatchNorm couple the samples of one forward pass.
        warnings.warn(f"train.accum_steps={train.accum_steps}: {job.method.__class__.__name__}'s contrastive "
                      f"negatives and batch statistics cover {micro_batch * dist_info.world_size} samples per "
                      f"step, not the global batch of {train.batch_size}", stacklevel=3)
    steps_per_epoch = len(loader) // train.accum_steps
    if train.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, train.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"the training set has {len(job.dataset)} samples, fewer than one global batch "
            f"(batch_size={train.batch_size}); lower the batch size"
        )
    lr_peak = peak_lr(train)
    if train.grad_checkpointing:
        enable_grad_checkpointing(job.method)
    model, groups = wrap_method(job.method, job.groups, train.strategy, device, dtype, dist_info)
    if train.compile:
        compile_model(model)
    optimizer = make_optimizer(groups, lr_peak, train)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    output.mkdir(parents=True, exist_ok=True)
    return Run(config, output, job, device, dtype, dist_info, loader, optimizer, scaler, model,
               metrics=MetricsLog(output / "metrics.jsonl", enabled=dist_info.is_main),
               failures=DecodeFailures(config.data.max_failed_fraction), steps_per_epoch=steps_per_epoch,
               warmup_steps=train.warmup_epochs * steps_per_epoch, lr_peak=lr_peak,
               nonfinite=torch.zeros((), device=device))


def make_optimizer(groups: list[dict], lr: float, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (one pass over all parameters, on CPU as on CUDA: 2x the
    per-parameter loop here); FSDP2's sharded parameters take the multi-tensor (foreach) update."""
    fast = {"foreach": True} if train.strategy == "fsdp" else {"fused": True}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(train.betas), **fast)


def restore_state(run: Run, resume: str | Path) -> None:
    """Continue a saved run exactly: weights, optimiser, scaler, position and RNG streams."""
    state = load_checkpoint(resume)
    check_resumable(run.config, config_from_dict(state["config"]), resume)
    load_full_state(run.model, run.job.method, run.optimizer, state["model"], state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.step = state["epoch"], state["step"]
    restore_rng(state["rng"], run.dist_info, run.config.train.seed + 1_000_003 * run.start_epoch)
    if run.dist_info.is_main:
        truncate_metrics(run.metrics.path, run.step)


def train_one_epoch(run: Run, epoch: int) -> None:
    """`steps_per_epoch` optimiser steps, with the method's `set_epoch` / `after_step` hooks around each."""
    method, train = run.job.method, run.train
    run.model.train()
    run.loader.sampler.set_epoch(epoch)
    bar = tqdm(total=run.steps_per_epoch, desc=f"epoch {epoch + 1}/{train.epochs}",
               disable=None if run.dist_info.is_main else True, dynamic_ncols=True, leave=False)
    batches = iter(run.loader)
    for index in range(run.steps_per_epoch):
        lr = cosine_with_warmup(run.step, run.total_steps, run.warmup_steps, run.lr_peak, train.min_lr)
        method.set_epoch(run.step / run.steps_per_epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        sums = accumulate_gradients(run, batches, epoch)
        if train.clip_grad > 0:
            run.scaler.unscale_(run.optimizer)
            torch.nn.utils.clip_grad_norm_(method.parameters(), train.clip_grad)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        method.after_step(run.step, run.total_steps)
        # the loop's only host syncs and collectives, every log_every steps (beyond what the
        # strategy does: DDP / FSDP reductions, clipping's norm under FSDP, fp16's scaler)
        if run.step % train.log_every == 0 or run.step == run.total_steps or index == run.steps_per_epoch - 1:
            check_finite(run, epoch)
            run.failures.check()
            log_step(run, sums, epoch, lr, bar)
        bar.update(1)
    bar.close()
    run.failures.check(final=True)
    if run.dist_info.is_main:
        print(f"epoch {epoch + 1}/{train.epochs}  step {run.step}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in run.last_terms.items())
              + f"  ({time.time() - run.started:.0f}s)", flush=True)


def accumulate_gradients(run: Run, batches, epoch: int) -> dict[str, torch.Tensor]:
    """Forward and backward `accum_steps` micro-batches; returns the loss terms averaged over them."""
    accum = run.train.accum_steps
    sums: dict[str, torch.Tensor] = {}
    for micro in range(accum):
        data = next(batches)
        run.failures.update(data["num_failed"])
        data = to_device(data, run.device)
        # Reduce gradients over ranks on the last micro-batch only.
        with gradient_sync(run.model, micro == accum - 1):
            with autocast(run.device, run.dtype):
                out = run.model(data)
            run.scaler.scale(out.loss / accum).backward()
        run.nonfinite += ~torch.isfinite(out.loss.detach())
        for name, value in {"loss": out.loss.detach(), **out.terms}.items():
            sums[name] = sums.get(name, 0.0) + value.float() / accum
    return sums


def check_finite(run: Run, epoch: int) -> None:
    """Stop if any loss since the last check was not finite, before it is logged or saved.
    Every rank must agree, or the ranks that carry on would wait for this one forever."""
    if not all_true(bool(run.nonfinite == 0)):
        raise FloatingPointError(
            f"the loss was not finite on some rank between the last log and step {run.step} (epoch {epoch + 1}); "
            f"the last checkpoint in {run.output} is intact. Try a lower lr or train.clip_grad"
        )


def log_step(run: Run, sums: dict[str, torch.Tensor], epoch: int, lr: float, bar: tqdm) -> None:
    """Average the terms over ranks, append them to metrics.jsonl and the progress bar."""
    names = sorted(sums)
    values = all_reduce_sum(torch.stack([sums[n] for n in names]).cpu()) / run.dist_info.world_size
    run.last_terms = {n: float(v) for n, v in zip(names, values, strict=True)}
    run.metrics.write({"step": run.step, "epoch": epoch, **run.last_terms, "lr": lr,
                       "time": round(time.time() - run.started, 2)})
    bar.set_postfix(loss=f"{run.last_terms['loss']:.4f}", lr=f"{lr:.2e}")


def save_state(run: Run, epochs_done: int) -> None:
    """checkpoint-last.pt (atomic), and a kept copy every `keep_every` epochs; every rank's RNG."""
    rng = gather_objects(rng_states())  # every rank's, so each resumes its own stream
    weights, optimizer_state = full_state(run.model, run.job.method, run.optimizer)  # every rank: FSDP gathers
    if run.dist_info.is_main:
        save_checkpoint(run.output / CHECKPOINT_NAME, {
            "model": weights,
            "optimizer": optimizer_state,
            "scaler": run.scaler.state_dict(),
            "epoch": epochs_done,
            "step": run.step,
            "rng": rng,
            "config": run.config.to_dict(),
        })
        if run.train.keep_every > 0 and epochs_done % run.train.keep_every == 0:
            shutil.copy2(run.output / CHECKPOINT_NAME, run.output / f"checkpoint-{epochs_done:04d}.pt")
    barrier()


def summarize(run: Run) -> dict[str, Any]:
    summary = {"steps": run.step, "epochs": run.train.epochs, "output": str(run.output),
               "failed_files": run.failures.failed, "seconds": round(time.time() - run.started, 1)}
    if run.job.finish is not None:
        summary.update(run.job.finish(run.job.method))
    if run.dist_info.is_main and (run.output / "metrics.jsonl").exists():
        records = read_metrics(run.output / "metrics.jsonl")
        summary["first"], summary["last"] = records[0], records[-1]
        (run.output / "summary.json").write_text(json.dumps(summary, indent=2))
    return summary


def check_resumable(config: Config, saved: Config, path) -> None:
    """A resumed run must train the same model the same way; only its length may change."""
    for section in ("model", "method"):
        if getattr(config, section) != getattr(saved, section):
            raise ConfigError(f"cannot resume from {path}: its {section} config differs from this run's")


def restore_rng(saved: list[dict] | dict, dist_info: DistInfo, reseed: int) -> None:
    """Give each rank back its own RNG streams (masks, augmentations, data-loader seeds).

    A run resumed on a different number of processes cannot continue the old streams:
    each rank then starts fresh ones from `reseed + rank`, which keeps ranks distinct and
    the run reproducible, though not identical to an uninterrupted one.
    """
    saved = [saved] if isinstance(saved, dict) else saved  # checkpoints before per-rank states
    if len(saved) == dist_info.world_size:
        set_rng_states(saved[dist_info.rank])
        return
    if dist_info.is_main:
        warnings.warn(f"the checkpoint holds RNG states of {len(saved)} process(es), this run has "
                      f"{dist_info.world_size}: starting new random streams (seed {reseed} + rank)", stacklevel=2)
    seed_everything(reseed + dist_info.rank)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint a crashed run is resumed from."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
