"""The one training loop (pre-training and fine-tuning), in one process or under torchrun.

    train_loop(config, output, make_job, resume)
      start_run      seed, build the job (method, data, parameter groups), loader, DDP or FSDP2, AdamW
      restore_state  --resume (a path, or auto): weights, optimiser, scaler, epoch and step within it,
                     every rank's RNG streams
      train_one_epoch, which calls save_state (atomic checkpoint-last.pt) at epoch ends, every
                     `save_every_steps` and when SIGTERM / SIGUSR1 asks the run to stop (exit status 75)
      summarize      steps, first/last logged metrics, the job's own `finish` entries

Per-iteration cosine schedule with warmup, gradient accumulation (ranks reduce gradients on the last
micro-batch only), optional clipping, metrics.jsonl and TensorBoard every `log_every` steps.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from cmae.config import Config, ConfigError, TrainConfig, config_from_dict, save_config
from cmae.data.loader import close_loader, make_loader, set_loader_epoch
from cmae.distributed import (
    DistInfo,
    all_reduce_sum,
    all_true,
    cleanup,
    gather_objects,
    init_distributed,
)
from cmae.engine.checkpoint import CheckpointWriteError, load_checkpoint, rng_states, save_checkpoint, set_rng_states
from cmae.engine.parallel import (
    compile_model,
    enable_grad_checkpointing,
    full_state,
    gradient_norm,
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
KEPT_COPY = re.compile(r"checkpoint-(step)?(\d+)\.pt")  # checkpoint-NNNN.pt (epochs), checkpoint-stepNNNNNNN.pt
# sysexits.h's EX_TEMPFAIL ("try again later"): the run stopped on SIGTERM / SIGUSR1 after saving
# its checkpoint, and a requeued job continues it with --resume auto.
EXIT_PREEMPTED = 75
# a resumed run must build and feed the same model: keys outside these sections may change
MODEL_KEYS = ("model.", "method.", "data.num_frames", "data.image_size", "data.views")


class Preempted(SystemExit):
    """Raised on every rank after the checkpoint that SIGTERM / SIGUSR1 asked for is written."""

    def __init__(self, path: Path):
        super().__init__(EXIT_PREEMPTED)
        self.path = path


class StopSignals:
    """SIGTERM / SIGUSR1 (SLURM's warnings before preemption or the time limit) set a flag that the
    loop reads after each step, so the step in flight finishes and the checkpoint is consistent."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1)

    def __init__(self):
        self.received: int | None = None
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> StopSignals:
        try:
            self.previous = {s: signal.signal(s, self.handle) for s in self.SIGNALS}
        except ValueError:  # not the main thread: a library caller keeps its own handling
            self.previous = {}
        return self

    def handle(self, signum: int, frame) -> None:
        self.received = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def agreed(self) -> bool:
        """Whether any rank got a signal (a collective under torchrun: every rank calls it each step)."""
        return not all_true(self.received is None)


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


class DecodeFailures:
    """Totals skipped (corrupt) files over workers and ranks; stops the run past the allowed fraction."""

    # Judge the fraction only once enough files were tried, so one bad file early is not fatal.
    MIN_ATTEMPTS = 100

    def __init__(self, max_fraction: float, repeat: int = 1):
        self.max_fraction, self.repeat = max_fraction, repeat  # each decode gives `repeat` samples
        self.failed = 0
        self.attempted = 0
        self.pending = torch.zeros(2, dtype=torch.float64)  # this rank's (failed, decoded) since the last check

    def update(self, num_failed: torch.Tensor) -> None:
        """Count a batch's failures (a CPU tensor from the loader: no device sync, no collective)."""
        self.pending += torch.stack([num_failed.sum(), torch.tensor(num_failed.numel())]).double() / self.repeat

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
class Interval:
    """Wall time, time spent waiting for the loader, and steps since the last log line."""

    started: float = field(default_factory=time.perf_counter)
    data_wait: float = 0.0
    steps: int = 0


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
    stop: StopSignals = field(default_factory=StopSignals)
    start_epoch: int = 0
    start_epoch_step: int = 0  # steps of start_epoch a mid-epoch checkpoint already took
    step: int = 0
    started: float = 0.0
    # non-finite losses since the last check, kept on the device: checking each step would sync it
    nonfinite: torch.Tensor = field(default_factory=lambda: torch.zeros(()))
    last_terms: dict[str, float] = field(default_factory=dict)
    interval: Interval = field(default_factory=Interval)
    sample_log: TextIO | None = None  # train.log_samples

    @property
    def train(self) -> TrainConfig:
        return self.job.train

    @property
    def total_steps(self) -> int:
        return self.steps_per_epoch * self.train.epochs


def train_loop(config: Config, output: str | Path, make_job: Callable[[torch.device], Job],
               resume: str | Path | None = None, resume_override: bool = False) -> dict[str, Any]:
    """Train `make_job(device)`'s method; returns the summary (also written to summary.json).

    `resume`: a checkpoint to continue from, or "auto" (the output folder's checkpoint-last.pt
    when there is one, else a fresh start). `resume_override` accepts a checkpoint whose model
    settings differ from this config's. Raises `Preempted` (exit status 75) after the checkpoint
    that SIGTERM / SIGUSR1 asked for.
    """
    output = Path(output)
    if resume == "auto":
        resume = output / CHECKPOINT_NAME if (output / CHECKPOINT_NAME).is_file() else None
    device = resolve_device(config.train.device)
    dist_info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    run = None
    # handlers from the start: a signal during start-up stops the run after its first step
    with StopSignals() as stop:
        try:
            run = start_run(config, output, make_job, device, dist_info)
            run.stop = stop
            if resume is not None:
                restore_state(run, resume, resume_override)
            if dist_info.is_main:
                save_config(config, output / "config.yaml")
            run.metrics.open_tensorboard(config.train.tensorboard, purge_step=run.step + 1 if resume else None)
            run.started = time.time()
            for epoch in range(run.start_epoch, run.train.epochs):
                train_one_epoch(run, epoch)
            return summarize(run)
        finally:
            if run is not None:
                close_loader(run.loader)
                run.metrics.close()
                if run.sample_log is not None:
                    run.sample_log.close()
            cleanup()


def start_run(config: Config, output: Path, make_job: Callable[[torch.device], Job], device: torch.device,
              dist_info: DistInfo) -> Run:
    """Seed, build the job, its loader and optimiser; nothing trained yet."""
    dtype = resolve_precision(config.train.precision, device)
    seed_everything(config.train.seed + dist_info.rank)
    job = make_job(device)
    train = job.train
    micro_batch = per_rank_batch(train, dist_info.world_size)
    loader = make_loader(job.dataset, config, dist_info, micro_batch)  # micro_batch / data.repeat videos
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
    sample_log = (output / f"samples-rank{dist_info.rank}.txt").open("a") if train.log_samples else None
    return Run(config, output, job, device, dtype, dist_info, loader, optimizer, scaler, model,
               metrics=MetricsLog(output / "metrics.jsonl", enabled=dist_info.is_main),
               failures=DecodeFailures(config.data.max_failed_fraction, getattr(job.dataset, "repeat", 1)),
               steps_per_epoch=steps_per_epoch,
               warmup_steps=train.warmup_epochs * steps_per_epoch, lr_peak=lr_peak,
               nonfinite=torch.zeros((), device=device), sample_log=sample_log)


def make_optimizer(groups: list[dict], lr: float, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (one pass over all parameters, on CPU as on CUDA: 2x the
    per-parameter loop here); FSDP2's sharded parameters take the multi-tensor (foreach) update."""
    fast = {"foreach": True} if train.strategy == "fsdp" else {"fused": True}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(train.betas), **fast)


def restore_state(run: Run, resume: str | Path, override: bool = False) -> None:
    """Continue a saved run exactly: weights, optimiser, scaler, position and RNG streams."""
    state = load_checkpoint(resume)
    check_resumable(run.config, config_from_dict(state["config"]), resume, override)
    load_full_state(run.model, run.job.method, run.optimizer, state["model"], state["optimizer"])
    run.scaler.load_state_dict(state["scaler"])
    run.start_epoch, run.step = state["epoch"], state["step"]
    run.start_epoch_step = state.get("epoch_step", 0)  # checkpoints before mid-epoch saves: 0
    if run.start_epoch_step:  # the samples to skip are counted in this run's batches: they must be the saved ones
        saved = config_from_dict(state["config"])
        fine_tuning = run.job.method.name == "finetune"
        batch_key, saved_batch = (("finetune.batch_size", saved.finetune.batch_size) if fine_tuning
                                  else ("train.batch_size", saved.train.batch_size))
        for key, now, before in ((batch_key, run.train.batch_size, state.get("batch_size", saved_batch)),
                                 ("data.repeat", run.config.data.repeat, saved.data.repeat),
                                 ("data.train", run.config.data.train, saved.data.train)):
            if now != before:
                raise ConfigError(f"{resume} was saved mid-epoch with {key}={before}; this run has {now}, so it "
                                  "cannot tell which samples of the epoch were used: keep the value, or resume "
                                  "from a checkpoint saved at an epoch's end")
        if state.get("failed_samples") and hasattr(run.job.dataset, "mark_failed"):  # tar shards: passed over
            run.job.dataset.mark_failed(state["failed_samples"])
    run.failures.failed, run.failures.attempted = state.get("decode_failures", (0, 0))  # older checkpoints: none
    restore_rng(state["rng"], run.dist_info, run.config.train.seed + 1_000_003 * run.start_epoch)
    if run.dist_info.is_main:
        truncate_metrics(run.metrics.path, run.step)
        set_aside_later_copies(run.output, Path(resume), run.step, run.start_epoch)


def train_one_epoch(run: Run, epoch: int) -> None:
    """`steps_per_epoch` optimiser steps, with the method's `set_epoch` / `after_step` hooks around each;
    checkpoints where `save_due` says, then stops the run if a signal asked for it."""
    method, train = run.job.method, run.train
    run.model.train()
    first = run.start_epoch_step if epoch == run.start_epoch else 0
    # skip the samples a mid-epoch checkpoint already trained on (each sample's randomness is its own)
    set_loader_epoch(run.loader, epoch, skip=first * train.accum_steps * run.loader.batch_size)
    bar = tqdm(total=run.steps_per_epoch, initial=first, desc=f"epoch {epoch + 1}/{train.epochs}",
               disable=None if run.dist_info.is_main else True, dynamic_ncols=True, leave=False)
    batches = iter(run.loader)
    run.interval = Interval()
    for index in range(first, run.steps_per_epoch):
        lr = cosine_with_warmup(run.step, run.total_steps, run.warmup_steps, run.lr_peak, train.min_lr)
        method.set_epoch(run.step / run.steps_per_epoch)
        for group in run.optimizer.param_groups:
            group["lr"] = lr * group.get("lr_scale", 1.0)
        last_step = index == run.steps_per_epoch - 1
        logging = (run.step + 1) % train.log_every == 0 or run.step + 1 == run.total_steps or last_step
        measure = (logging and train.log_term_grads) or method.wants_term_grads(logging)
        sums, term_grads = accumulate_gradients(run, batches, epoch, measure)
        if term_grads:
            method.observe_term_grads(term_grads)
            if logging:
                sums.update({f"grad_norm_{name}": torch.tensor(norm) for name, norm in term_grads.items()})
        grad_norm = None
        if train.clip_grad > 0 or logging:  # the norm before clipping: a sync, so only when needed
            run.scaler.unscale_(run.optimizer)
            grad_norm = gradient_norm(method.parameters(), train.clip_grad)
        run.scaler.step(run.optimizer)
        run.scaler.update()
        run.optimizer.zero_grad(set_to_none=True)
        run.step += 1
        run.interval.steps += 1
        method.after_step(run.step, run.total_steps)
        # the loop's only host syncs and collectives, every log_every steps (beyond what the
        # strategy does: DDP / FSDP reductions, clipping's norm under FSDP, fp16's scaler, and
        # the stop-signal flag, a CPU reduction)
        if logging:
            check_finite(run, epoch)
            run.failures.check()
            log_step(run, {**sums, "grad_norm": grad_norm}, epoch, lr, bar)
        bar.update(1)
        stopping = run.stop.agreed()
        if save_due(run, epoch, last_step) or stopping:
            if not logging:  # never save over the last checkpoint with weights a non-finite loss broke
                check_finite(run, epoch)
            save_state(run, epoch + 1, 0) if last_step else save_state(run, epoch, index + 1)
        if stopping:
            bar.close()
            if run.dist_info.is_main:
                print(f"stopped by signal {run.stop.received or 'on another rank'} at step {run.step}; "
                      f"resume with --resume auto (exit status {EXIT_PREEMPTED})", flush=True)
            raise Preempted(run.output / CHECKPOINT_NAME)
    bar.close()
    run.failures.check(final=True)
    if run.dist_info.is_main:
        print(f"epoch {epoch + 1}/{train.epochs}  step {run.step}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in run.last_terms.items())
              + f"  ({time.time() - run.started:.0f}s)", flush=True)


def save_due(run: Run, epoch: int, last_step: bool) -> bool:
    """A checkpoint every `save_every_steps` steps, and at the end of every `save_every`-th and the last epoch."""
    train = run.train
    by_steps = train.save_every_steps > 0 and run.step % train.save_every_steps == 0
    by_epochs = last_step and ((epoch + 1) % train.save_every == 0 or epoch + 1 == train.epochs)
    return by_steps or by_epochs


def accumulate_gradients(run: Run, batches, epoch: int, measure: bool = False
                         ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Forward and backward `accum_steps` micro-batches; returns the loss terms averaged over them and,
    with `measure`, each loss part's gradient norm on the shared encoder (first micro-batch, ranks averaged)."""
    accum = run.train.accum_steps
    sums: dict[str, torch.Tensor] = {}
    term_grads: dict[str, float] = {}
    for micro in range(accum):
        waiting = time.perf_counter()
        data = next(batches)
        run.interval.data_wait += time.perf_counter() - waiting
        run.failures.update(data["num_failed"])
        if run.sample_log is not None:
            run.sample_log.write(f"{epoch} {run.step} {' '.join(map(str, data['index'].tolist()))}\n")
        data = to_device(data, run.device)
        # Reduce gradients over ranks on the last micro-batch only.
        with gradient_sync(run.model, micro == accum - 1):
            with autocast(run.device, run.dtype):
                out = run.model(data)
            if measure and micro == 0:
                term_grads = term_gradient_norms(out.parts, run.job.method.encoder, run.dist_info.world_size)
            run.scaler.scale(out.loss / accum).backward()
        run.nonfinite += ~torch.isfinite(out.loss.detach())
        for name, value in {"loss": out.loss.detach(), **out.terms}.items():
            sums[name] = sums.get(name, 0.0) + value.float() / accum
    return sums, term_grads


def term_gradient_norms(parts: dict[str, torch.Tensor], encoder: nn.Module, world_size: int) -> dict[str, float]:
    """{name: L2 norm of d part / d encoder parameters}, averaged over ranks (a collective: every rank
    measures at the same steps). One extra backward per part, through the graph kept for the real one."""
    if not parts:
        return {}
    params = [p for p in encoder.parameters() if p.requires_grad]
    norms = []
    for part in parts.values():
        grads = [g for g in torch.autograd.grad(part.float(), params, retain_graph=True, allow_unused=True)
                 if g is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])) if grads
                     else torch.zeros((), device=part.device))
    averaged = all_reduce_sum(torch.stack(norms).cpu().double()) / world_size
    return dict(zip(parts, averaged.tolist(), strict=True))


def check_finite(run: Run, epoch: int) -> None:
    """Stop if any loss since the last check was not finite, before it is logged or saved.
    Every rank must agree, or the ranks that carry on would wait for this one forever."""
    if not all_true(bool(run.nonfinite == 0)):
        raise FloatingPointError(
            f"the loss was not finite on some rank between the last log and step {run.step} (epoch {epoch + 1}); "
            f"the last checkpoint in {run.output} is intact. Try a lower lr or train.clip_grad"
        )


def log_step(run: Run, sums: dict[str, torch.Tensor | None], epoch: int, lr: float, bar: tqdm) -> None:
    """Average the terms over ranks; append them with the interval's throughput to metrics.jsonl,
    TensorBoard and the progress bar. `grad_norm` is the global norm before clipping."""
    names = sorted(n for n, v in sums.items() if v is not None)
    values = all_reduce_sum(torch.stack([sums[n].float() for n in names]).cpu()) / run.dist_info.world_size
    run.last_terms = {n: float(v) for n, v in zip(names, values, strict=True)}
    if "grad_norm" in run.last_terms:  # already global: every rank holds the same norm
        run.last_terms["grad_norm"] = float(sums["grad_norm"])
    elapsed = time.perf_counter() - run.interval.started
    steps = max(run.interval.steps, 1)
    timing = {"step_time": elapsed / steps, "data_wait": run.interval.data_wait / max(elapsed, 1e-9),
              "clips_per_s": run.train.batch_size * steps / max(elapsed, 1e-9)}
    if run.device.type == "cuda":
        timing["max_memory_gb"] = torch.cuda.max_memory_allocated(run.device) / 2**30
    if run.scaler.is_enabled():
        timing["loss_scale"] = float(run.scaler.get_scale())
    run.metrics.write({"step": run.step, "epoch": epoch, **run.last_terms, "lr": lr,
                       **{k: round(v, 6) for k, v in timing.items()}, "time": round(time.time() - run.started, 2)})
    bar.set_postfix(loss=f"{run.last_terms['loss']:.4f}", lr=f"{lr:.2e}", clips_s=f"{timing['clips_per_s']:.1f}",
                    data_wait=f"{timing['data_wait']:.0%}")
    run.interval = Interval()


def save_state(run: Run, epochs_done: int, epoch_step: int) -> None:
    """checkpoint-last.pt (atomic) after `epochs_done` whole epochs and `epoch_step` steps of the next,
    a kept copy every `keep_every` epochs and the last `keep_checkpoints` saves; every rank's RNG.
    A failed write (disk full) stops every rank, naming the file; the previous checkpoint stays."""
    rng = gather_objects(rng_states())  # every rank's, so each resumes its own stream
    run.failures.check()  # every rank saves at the same step: the totals so far go into the checkpoint
    marked = getattr(run.job.dataset, "failed_samples", None)  # tar shards: which members failed, on any rank
    failed_samples = sorted(set().union(*gather_objects(marked()))) if marked else None
    weights, optimizer_state = full_state(run.model, run.job.method, run.optimizer)  # every rank: FSDP gathers
    path, error = run.output / CHECKPOINT_NAME, None
    if run.dist_info.is_main:
        try:  # any failure here must reach the collective below, or the other ranks would wait forever
            save_checkpoint(path, {
                "model": weights,
                "optimizer": optimizer_state,
                "scaler": run.scaler.state_dict(),
                "epoch": epochs_done,
                "epoch_step": epoch_step,
                "step": run.step,
                "batch_size": run.train.batch_size,  # samples per step: what a mid-epoch resume skips by
                "rng": rng,
                "decode_failures": (run.failures.failed, run.failures.attempted),
                "failed_samples": failed_samples,
                "config": run.config.to_dict(),
            })
            keep_copies(run, path, epochs_done, epoch_step)
        except Exception as failure:  # noqa: BLE001 - re-raised below, after every rank knows
            error = failure
    if not all_true(error is None):
        if isinstance(error, OSError) and not isinstance(error, CheckpointWriteError):  # a kept copy failed
            raise CheckpointWriteError(f"could not keep a copy of {path} ({error}); {path} itself was written") \
                from error
        raise error or CheckpointWriteError(f"rank 0 could not write {path}; see its error")


def keep_copies(run: Run, path: Path, epochs_done: int, epoch_step: int) -> None:
    """checkpoint-NNNN.pt every `keep_every` epochs (kept for good); checkpoint-stepNNNNNNN.pt for the
    last `keep_checkpoints` saves (hard links to the written file, so no second copy on disk)."""
    train = run.train
    if train.keep_every > 0 and epoch_step == 0 and epochs_done % train.keep_every == 0:
        kept = run.output / f"checkpoint-{epochs_done:04d}.pt"
        partial = kept.with_name(f".{kept.name}.tmp")
        shutil.copy2(path, partial)  # then renamed: a failed copy never leaves a truncated checkpoint
        os.replace(partial, kept)
    if train.keep_checkpoints > 0:
        kept = run.output / f"checkpoint-step{run.step:07d}.pt"
        kept.unlink(missing_ok=True)
        link_or_copy(path, kept)
        for old in sorted(run.output.glob("checkpoint-step*.pt"))[: -train.keep_checkpoints]:
            old.unlink()


def link_or_copy(source: Path, target: Path) -> None:
    """A second name for a checkpoint: a hard link (no second copy on disk), else a copy."""
    try:
        os.link(source, target)
    except OSError:  # a file system without hard links
        shutil.copy2(source, target)


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


def check_resumable(config: Config, saved: Config, path, override: bool = False) -> None:
    """A resumed run must build and feed the same model (`MODEL_KEYS`); its length, paths, logging and
    loader settings may change. `override` (`--resume-override`) accepts a difference with a warning."""
    now, before = flat_config(config), flat_config(saved)
    changed = [key for key in now if key.startswith(MODEL_KEYS) and now[key] != before.get(key)]
    if not changed:
        return
    listing = ", ".join(f"{key}={now[key]!r} (checkpoint: {before.get(key)!r})" for key in changed)
    if not override:
        raise ConfigError(f"cannot resume from {path}: this run changes the model: {listing}; "
                          "keep the checkpoint's values, or pass --resume-override to continue anyway")
    warnings.warn(f"resuming from {path} with a changed model (--resume-override): {listing}", stacklevel=3)


def flat_config(config: Config) -> dict[str, Any]:
    """{"section.key": value} of a config."""
    return {f"{section}.{key}": value for section, values in config.to_dict().items() for key, value in values.items()}


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


def set_aside_later_copies(output: Path, resumed: Path, step: int, epoch: int) -> None:
    """A run restarted from an older kept checkpoint: move the folder's newer kept copies into
    output/superseded/stepNNNNNNN (the step resumed at; a new folder each time), since the new run
    reuses their names and a stale newer step copy would make `keep_checkpoints` delete the run's own
    saves. checkpoint-last.pt, when it is not the file resumed from, is hard-linked there too: it
    stays in place for `--resume auto` until the new run's first save. Nothing is deleted; a file
    that cannot be moved is named in a warning (this runs on rank 0 only: it must not raise)."""
    later = []
    for path in output.glob("checkpoint-*.pt"):
        match = KEPT_COPY.fullmatch(path.name)
        if match and int(match[2]) > (step if match[1] else epoch):
            later.append(path)
    last = output / CHECKPOINT_NAME
    keep_last = last.is_file() and last.resolve() != resumed.resolve()
    if not later and not keep_last:
        return
    aside = output / "superseded" / f"step{step:07d}"
    for number in range(2, 1000):
        if not aside.exists():
            break
        aside = aside.with_name(f"step{step:07d}-{number}")
    try:
        aside.mkdir(parents=True)
        for path in later:
            os.replace(path, aside / path.name)
        if keep_last:
            link_or_copy(last, aside / last.name)
    except OSError as error:
        warnings.warn(f"could not set aside the kept checkpoints of {output} ({error})", stacklevel=3)
        return
    warnings.warn(f"resuming at step {step} from {resumed}: the folder's later checkpoints ({len(later)} kept "
                  f"cop{'y' if len(later) == 1 else 'ies'}{', and checkpoint-last.pt' if keep_last else ''}) are "
                  f"now in {aside}", stacklevel=3)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint a crashed run is resumed from."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
