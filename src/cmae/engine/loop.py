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

The run's state (`Job`, `Run`) and its checkpoints (`save_state`, `restore_state`, kept and superseded
copies) are `cmae.engine.run_state`'s; the stop signals (`StopSignals`, `Preempted`, `EXIT_PREEMPTED`)
`cmae.engine.signals`'. Their names are importable from here too.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from tqdm import tqdm

from cmae.config import Config, ConfigError, TrainConfig, save_config
from cmae.data.loader import close_loader, make_loader, set_loader_epoch
from cmae.distributed import DistInfo, all_reduce_sum, all_true, cleanup, init_distributed
from cmae.engine.checkpoint import load_checkpoint
from cmae.engine.grad_cache import cached_accumulation
from cmae.engine.parallel import (
    compile_model,
    enable_grad_checkpointing,
    gradient_norm,
    gradient_sync,
    term_gradient_norms,
    wrap_method,
)
from cmae.engine.run_folder import claim_output
from cmae.engine.run_state import (
    CHECKPOINT_NAME,
    KEPT_COPY,
    MODEL_KEYS,
    DecodeFailures,
    Interval,
    Job,
    Run,
    check_resumable,
    flat_config,
    keep_copies,
    link_or_copy,
    restore_rng,
    restore_state,
    save_state,
    set_aside_later_copies,
    superseded_folder,
    truncate_metrics,
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
from cmae.engine.schedule import cosine_with_warmup, set_group_rates
from cmae.engine.signals import EXIT_PREEMPTED, Preempted, StopSignals
from cmae.methods.contrastive import ContrastiveMethod

BEST_NAME = "checkpoint-best.pt"  # the epoch an `after_epoch` judged best (fine-tuning's eval_every)

# the loop's own names, and those of the run state and signals that were defined here (importable as before)
__all__ = [
    "CHECKPOINT_NAME", "EXIT_PREEMPTED", "KEPT_COPY", "MODEL_KEYS", "DecodeFailures", "Interval", "Job", "Preempted",
    "Run", "StopSignals", "accumulate_gradients", "check_finite", "check_resumable", "flat_config", "keep_copies",
    "link_or_copy", "log_step", "make_optimizer", "peak_lr", "per_rank_batch", "restore_rng", "restore_state",
    "save_due", "save_state", "set_aside_later_copies", "start_run", "summarize", "term_gradient_norms",
    "train_loop", "train_one_epoch", "truncate_metrics",
]


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


def train_loop(config: Config, output: str | Path, make_job: Callable[[torch.device], Job],
               resume: str | Path | None = None, resume_override: bool = False,
               overwrite: bool = False) -> dict[str, Any]:
    """Train `make_job(device)`'s method; returns the summary (also written to summary.json).

    `resume`: a checkpoint to continue from, or "auto" (the output folder's checkpoint-last.pt
    when there is one, else a fresh start). A folder that holds a run is never reused silently:
    without `resume` it is an error, unless `overwrite` moves the old run aside (`run_folder`).
    `resume_override` accepts a checkpoint whose model settings differ from this config's. Raises
    `Preempted` (exit status 75; 130 for Ctrl-C) after the checkpoint a signal asked for.
    """
    output = Path(output)
    device = resolve_device(config.train.device)
    dist_info = init_distributed(device)
    restarted = resume == "auto" and not (output / CHECKPOINT_NAME).is_file()  # a run that never saved
    resume = claim_output(output, resume, overwrite, dist_info.is_main)
    saved = load_checkpoint(resume) if resume is not None else None  # a bad file: refused before the run folder
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
                restore_state(run, resume, saved, resume_override)
            elif restarted and dist_info.is_main:
                truncate_metrics(run.metrics.path, 0, superseded_folder(output, 0))  # a run that never saved
            if dist_info.is_main:
                save_config(config, output / "config.yaml")
            run.metrics.open_tensorboard(config.train.tensorboard,
                                         purge_step=run.step + 1 if resume or restarted else None)
            run.started, run.first_step = time.time(), run.step
            if run.start_epoch >= run.train.epochs:  # nothing left to train: a fine-tuning run tests again,
                return summarize(run, write=run.job.finish is not None)  # a pre-training run's summary stands
            for epoch in range(run.start_epoch, run.train.epochs):
                train_one_epoch(run, epoch)
                after_epoch(run, epoch)
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
    micro_contrast = train.contrastive_accumulation == "micro" and isinstance(job.method, ContrastiveMethod)
    if train.accum_steps > 1 and micro_contrast and dist_info.is_main:
        # Two-view losses and their heads' BatchNorm couple the samples of one forward pass.
        warnings.warn(f"train.accum_steps={train.accum_steps}: {job.method.__class__.__name__}'s contrastive "
                      f"negatives and batch statistics cover {micro_batch * dist_info.world_size} samples per "
                      f"step, not the global batch of {train.batch_size} (train.contrastive_accumulation=exact "
                      f"covers it, for a second forward pass)", stacklevel=3)
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
               failures=DecodeFailures(config.data.max_failed_fraction, getattr(job.dataset, "repeat", 1),
                                       len(job.dataset) if hasattr(job.dataset, "samples") else None),
               steps_per_epoch=steps_per_epoch,
               warmup_steps=train.warmup_epochs * steps_per_epoch, lr_peak=lr_peak,
               nonfinite=torch.zeros((), device=device), sample_log=sample_log)


def make_optimizer(groups: list[dict], lr: float, train: TrainConfig) -> torch.optim.AdamW:
    """AdamW with torch's fused kernel (one pass over all parameters, on CPU as on CUDA: 2x the
    per-parameter loop here); FSDP2's sharded parameters take the multi-tensor (foreach) update."""
    fast = {"foreach": True} if train.strategy == "fsdp" else {"fused": True}
    return torch.optim.AdamW(groups, lr=lr, betas=tuple(train.betas), **fast)


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
        lr = cosine_with_warmup(run.step, run.total_steps, run.warmup_steps, run.lr_peak, train.min_lr, train.warmup_lr)
        method.set_epoch(run.step / run.steps_per_epoch)
        decay = None if train.weight_decay_end is None else cosine_with_warmup(  # BEiT's and VideoMAE's schedule
            run.step, run.total_steps, 0, train.weight_decay, train.weight_decay_end)
        set_group_rates(run.optimizer.param_groups, lr, decay)
        last_step = index == run.steps_per_epoch - 1
        logging = (run.step + 1) % train.log_every == 0 or run.step + 1 == run.total_steps or last_step
        measure = (logging and train.log_term_grads) or method.wants_term_grads(logging)
        sums, term_grads = accumulate_gradients(run, batches, epoch, measure)
        if term_grads:
            method.observe_term_grads(term_grads)
            if logging:
                sums.update({f"grad_norm_{name}": torch.tensor(norm, device=run.device)  # stacked with the rest
                             for name, norm in term_grads.items()})
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
            stopped = Preempted(run.output / CHECKPOINT_NAME, run.stop.received)
            if run.dist_info.is_main:
                print(f"stopped by signal {run.stop.received or 'on another rank'} at step {run.step}; checkpoint "
                      f"{stopped.path}: continue with the same command and --resume auto (exit status "
                      f"{stopped.code})", flush=True)
            raise stopped
    bar.close()
    run.failures.check(final=True)
    if run.dist_info.is_main:
        print(f"epoch {epoch + 1}/{train.epochs}  step {run.step}  "
              + "  ".join(f"{k} {v:.4f}" for k, v in run.last_terms.items())
              + f"  ({time.time() - run.started:.0f}s)", flush=True)


def after_epoch(run: Run, epoch: int) -> None:
    """The job's `after_epoch` entries (monitor, validation) as one metrics.jsonl / TensorBoard row at the
    epoch's last step; a "best" one also copies the epoch's checkpoint to checkpoint-best.pt."""
    if run.job.after_epoch is None:
        return
    with torch.random.fork_rng(devices=[run.device] if run.device.type == "cuda" else []):  # probes seed their draws
        entries = run.job.after_epoch(run.job.method, epoch + 1)
    run.model.train()
    if not entries:
        return
    if entries.pop("best", False):  # the checkpoint first: a row naming a best epoch always has its file
        if not save_due(run, epoch, last_step=True):
            save_state(run, epoch + 1, 0)
        if run.dist_info.is_main:
            shutil.copyfile(run.output / CHECKPOINT_NAME, run.output / (BEST_NAME + ".tmp"))
            os.replace(run.output / (BEST_NAME + ".tmp"), run.output / BEST_NAME)
    run.metrics.write({"step": run.step, "epoch": epoch, **entries})


def save_due(run: Run, epoch: int, last_step: bool) -> bool:
    """A checkpoint every `save_every_steps` steps, and at the end of every `save_every`-th and the last epoch."""
    train = run.train
    by_steps = train.save_every_steps > 0 and run.step % train.save_every_steps == 0
    by_epochs = last_step and ((epoch + 1) % train.save_every == 0 or epoch + 1 == train.epochs)
    return by_steps or by_epochs


def accumulate_gradients(run: Run, batches, epoch: int, measure: bool = False
                         ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """Forward and backward `accum_steps` micro-batches; returns the loss terms averaged over them and,
    with `measure`, each loss part's gradient norm on the shared encoder (first micro-batch, ranks averaged).
    A contrastive method under `contrastive_accumulation=exact` goes through `cached_accumulation`."""
    accum = run.train.accum_steps
    if accum > 1 and run.train.contrastive_accumulation == "exact" and isinstance(run.job.method, ContrastiveMethod):
        return cached_accumulation(run, [next_micro_batch(run, batches, epoch) for _ in range(accum)], measure)
    sums: dict[str, torch.Tensor] = {}
    term_grads: dict[str, float] = {}
    for micro in range(accum):
        data = next_micro_batch(run, batches, epoch)
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


def next_micro_batch(run: Run, batches, epoch: int) -> dict[str, torch.Tensor]:
    """The loader's next micro-batch on the run's device; counts its wait and its failed files."""
    waiting = time.perf_counter()
    data = next(batches)
    run.interval.data_wait += time.perf_counter() - waiting
    run.failures.update(data["num_failed"], data["index"])
    if run.sample_log is not None:
        run.sample_log.write(f"{epoch} {run.step} {' '.join(map(str, data['index'].tolist()))}\n")
    return to_device(data, run.device)


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
    if run.dist_info.is_main and bar.disable:  # no terminal (sbatch, nohup, a pipe): a plain line for the log
        print_progress(run, epoch, lr, timing["clips_per_s"])
    bar.set_postfix(loss=f"{run.last_terms['loss']:.4f}", lr=f"{lr:.2e}", clips_s=f"{timing['clips_per_s']:.1f}",
                    data_wait=f"{timing['data_wait']:.0%}")
    run.interval = Interval()


def print_progress(run: Run, epoch: int, lr: float, clips_per_s: float) -> None:
    """One line to stderr: step, loss terms, lr, throughput and the time left at this step's pace."""
    elapsed = time.time() - run.started
    done = run.step - run.first_step
    eta = elapsed / max(done, 1) * (run.total_steps - run.step)
    terms = "  ".join(f"{k} {v:.4f}" for k, v in run.last_terms.items() if not k.startswith("grad_norm_"))
    print(f"step {run.step}/{run.total_steps}  epoch {epoch + 1}/{run.train.epochs}  {terms}  lr {lr:.2e}  "
          f"{clips_per_s:.1f} clips/s  eta {eta / 60:.1f} min", file=sys.stderr, flush=True)


def summarize(run: Run, write: bool = True) -> dict[str, Any]:
    """The run's summary (with the job's `finish`, e.g. fine-tuning's test), written to summary.json and
    told in one line; `write=False` (a pre-training resume with nothing left to train) leaves the finished
    run's summary.json as it is."""
    summary = {"steps": run.step, "epochs": run.train.epochs, "output": str(run.output),
               "failed_files": run.failures.failed, "seconds": round(time.time() - run.started, 1)}
    if run.job.finish is not None:
        summary.update(run.job.finish(run.job.method))
    if run.dist_info.is_main and (run.output / "metrics.jsonl").exists():
        records = [r for r in read_metrics(run.output / "metrics.jsonl") if "loss" in r]  # not monitor rows
        summary["first"], summary["last"] = records[0], records[-1]
        if write:
            (run.output / "summary.json").write_text(json.dumps(summary, indent=2))
            print(f"done: {run.step} steps in {summary['seconds']:.0f}s, loss {records[0]['loss']:.4f} -> "
                  f"{records[-1]['loss']:.4f}; {run.output / CHECKPOINT_NAME}", file=sys.stderr, flush=True)
        else:
            print(f"{run.output} is already trained to epoch {run.train.epochs} (step {run.step}); nothing to do",
                  file=sys.stderr, flush=True)
    return summary
