"""The pre-training loop: one loop for every method, one process or many under torchrun.

files -> VideoDataset(view) -> DataLoader -> method(batch) -> loss -> AdamW, with a
per-iteration cosine schedule, gradient accumulation, optional clipping, metrics.jsonl,
and an atomic checkpoint each epoch that `--resume` continues from exactly.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm import tqdm

from cmae.config import Config, ConfigError, TrainConfig, config_from_dict, save_config
from cmae.data.dataset import VideoDataset
from cmae.data.lists import Sample, mix_samples, read_samples
from cmae.data.views import build_view
from cmae.engine.checkpoint import load_checkpoint, rng_states, save_checkpoint, set_rng_states
from cmae.engine.distributed import (
    DistInfo,
    all_reduce_sum,
    all_true,
    barrier,
    cleanup,
    gather_objects,
    init_distributed,
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
from cmae.engine.schedule import cosine_with_warmup, param_groups
from cmae.methods import build_method

CHECKPOINT_NAME = "checkpoint-last.pt"


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


@dataclass
class Job:
    """What the loop trains, built after the process group is up and the seed is set.

    `train` holds the optimiser/schedule settings: `config.train` for pre-training, the
    `finetune` section mapped onto a TrainConfig for fine-tuning. Parameter groups may
    carry an "lr_scale" (layer-wise decay). `finish(method)` runs on every rank after the
    last epoch (e.g. the test set) and returns entries for the summary.
    """

    method: nn.Module
    dataset: Dataset
    groups: list[dict]
    train: TrainConfig
    finish: Callable[[nn.Module], dict[str, Any]] | None = None


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

    def update(self, num_failed: torch.Tensor) -> None:
        counts = all_reduce_sum(torch.tensor([num_failed.sum().item(), num_failed.numel()], dtype=torch.float64))
        self.failed += int(counts[0])
        self.attempted += int(counts[0] + counts[1])

    def check(self, final: bool = False) -> None:
        if self.attempted == 0 or (self.attempted < self.MIN_ATTEMPTS and not final):
            return
        fraction = self.failed / self.attempted
        if fraction > self.max_fraction:
            raise RuntimeError(
                f"{self.failed} of {self.attempted} files could not be decoded ({fraction:.1%} > "
                f"data.max_failed_fraction={self.max_fraction:.1%}); the warnings above name them"
            )


def training_samples(config: Config) -> list[Sample]:
    """data.train, with data.train_images mixed in at data.image_ratio when given."""
    samples = read_samples(config.data.train)
    if config.data.train_images:
        try:
            samples = mix_samples(samples, read_samples(config.data.train_images), config.data.image_ratio,
                                  config.train.seed)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return samples


def pretrain(config: Config, output: str | Path, resume: str | Path | None = None) -> dict[str, Any]:
    """Pre-train `config.method` and return a summary (steps, first/last logged losses, paths)."""

    def make_job(device: torch.device) -> Job:
        if not config.data.train:
            raise ConfigError("data.train is not set: give a list file or an ImageFolder directory")
        method = build_method(config).to(device)
        dataset = VideoDataset(training_samples(config), build_view(config.data, train=True),
                               backend=config.data.decoder, cache_decoded=config.data.cache_decoded)
        return Job(method, dataset, param_groups(method, config.train.weight_decay), config.train)

    return train_loop(config, output, make_job, resume)


def train_loop(config: Config, output: str | Path, make_job: Callable[[torch.device], Job],
               resume: str | Path | None = None) -> dict[str, Any]:
    """The one training loop (pre-training and fine-tuning), in one process or under torchrun."""
    output = Path(output)
    device = resolve_device(config.train.device)
    dist_info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
        torch.cuda.set_device(device)
    try:
        return _train_loop(config, output, make_job, resume, device, dist_info)
    finally:
        cleanup()


def _train_loop(config: Config, output: Path, make_job, resume, device: torch.device,
                dist_info: DistInfo) -> dict[str, Any]:
    dtype = resolve_precision(config.train.precision, device)
    seed_everything(config.train.seed + dist_info.rank)
    job = make_job(device)
    method, dataset, train = job.method, job.dataset, job.train
    micro_batch = per_rank_batch(train, dist_info.world_size)
    loader = make_loader(dataset, config, dist_info, micro_batch)
    accum = train.accum_steps
    if accum > 1 and len(getattr(method, "views", ())) > 1 and dist_info.is_main:
        # Two-view losses and their heads' BatchNorm couple the samples of one forward pass.
        warnings.warn(f"train.accum_steps={accum}: {method.__class__.__name__}'s contrastive negatives and batch "
                      f"statistics cover {micro_batch * dist_info.world_size} samples per step, not the global "
                      f"batch of {train.batch_size}", stacklevel=2)
    steps_per_epoch = len(loader) // accum
    if train.max_steps_per_epoch > 0:
        steps_per_epoch = min(steps_per_epoch, train.max_steps_per_epoch)
    if steps_per_epoch == 0:
        raise ConfigError(
            f"the training set has {len(dataset)} samples, fewer than one global batch "
            f"(batch_size={train.batch_size}); lower the batch size"
        )
    total_steps = steps_per_epoch * train.epochs
    warmup_steps = train.warmup_epochs * steps_per_epoch
    lr_peak = peak_lr(train)

    optimizer = torch.optim.AdamW(job.groups, lr=lr_peak, betas=tuple(train.betas))
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    model = DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None) \
        if dist_info.enabled else method

    output.mkdir(parents=True, exist_ok=True)
    metrics = MetricsLog(output / "metrics.jsonl", enabled=dist_info.is_main)
    start_epoch, step = 0, 0
    if resume is not None:
        state = load_checkpoint(resume)
        check_resumable(config, config_from_dict(state["config"]), resume)
        method.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        start_epoch, step = state["epoch"], state["step"]
        restore_rng(state["rng"], dist_info, config.train.seed + 1_000_003 * start_epoch)
        if dist_info.is_main:
            truncate_metrics(metrics.path, step)
    if dist_info.is_main:
        save_config(config, output / "config.yaml")

    failures = DecodeFailures(config.data.max_failed_fraction)
    # Optional method hooks: set_epoch(fractional epoch) before a step (loss-weight schedules),
    # after_step(step, total_steps) after the optimiser step (EMA targets).
    set_epoch = getattr(method, "set_epoch", None)
    after_step = getattr(method, "after_step", None)
    started = time.time()
    last_terms: dict[str, float] = {}
    for epoch in range(start_epoch, train.epochs):
        model.train()
        loader.sampler.set_epoch(epoch)
        bar = tqdm(total=steps_per_epoch, desc=f"epoch {epoch + 1}/{train.epochs}",
                   disable=None if dist_info.is_main else True, dynamic_ncols=True, leave=False)
        batches = iter(loader)
        for _ in range(steps_per_epoch):
            lr = cosine_with_warmup(step, total_steps, warmup_steps, lr_peak, train.min_lr)
            if set_epoch is not None:
                set_epoch(step / steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr * group.get("lr_scale", 1.0)
            sums: dict[str, torch.Tensor] = {}
            for micro in range(accum):
                data = next(batches)
                failures.update(data["num_failed"])
                data = to_device(data, device)
                # Skip DDP's gradient all-reduce on all but the last micro-batch.
                sync = micro == accum - 1 or not dist_info.enabled
                with (contextlib.nullcontext() if sync else model.no_sync()), autocast(device, dtype):
                    out = model(data)
                # Every rank must agree, or the ranks that carry on would wait for this one forever.
                if not all_true(bool(torch.isfinite(out.loss))):
                    raise FloatingPointError(
                        f"loss is not finite on some rank (here {out.loss.item()}) at step {step} (epoch {epoch}); "
                        f"the last checkpoint in {output} is intact. Try a lower lr or train.clip_grad"
                    )
                scaler.scale(out.loss / accum).backward()
                for name, value in {"loss": out.loss.detach(), **out.terms}.items():
                    sums[name] = sums.get(name, 0.0) + value.float() / accum
            if train.clip_grad > 0:
                scaler.unscale_(optimizer)
                torch.nn.utils.clip_grad_norm_(method.parameters(), train.clip_grad)
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if after_step is not None:
                after_step(step, total_steps)
            failures.check()

            if step % train.log_every == 0 or step == total_steps or _ == steps_per_epoch - 1:
                names = sorted(sums)
                values = all_reduce_sum(torch.stack([sums[n] for n in names]).cpu()) / dist_info.world_size
                last_terms = {n: float(v) for n, v in zip(names, values)}
                metrics.write({"step": step, "epoch": epoch, **last_terms, "lr": lr,
                               "time": round(time.time() - started, 2)})
                bar.set_postfix(loss=f"{last_terms['loss']:.4f}", lr=f"{lr:.2e}")
            bar.update(1)
        bar.close()
        failures.check(final=True)
        if dist_info.is_main:
            print(f"epoch {epoch + 1}/{train.epochs}  step {step}  "
                  + "  ".join(f"{k} {v:.4f}" for k, v in last_terms.items())
                  + f"  ({time.time() - started:.0f}s)", flush=True)
        if (epoch + 1) % train.save_every == 0 or epoch + 1 == train.epochs:
            rng = gather_objects(rng_states())  # every rank's, so each resumes its own stream
            if dist_info.is_main:
                save_checkpoint(output / CHECKPOINT_NAME, {
                    "model": method.state_dict(),
                    "optimizer": optimizer.state_dict(),
                    "scaler": scaler.state_dict(),
                    "epoch": epoch + 1,
                    "step": step,
                    "rng": rng,
                    "config": config.to_dict(),
                })
                if train.keep_every > 0 and (epoch + 1) % train.keep_every == 0:
                    shutil.copy2(output / CHECKPOINT_NAME, output / f"checkpoint-{epoch + 1:04d}.pt")
            barrier()

    summary = {"steps": step, "epochs": train.epochs, "output": str(output),
               "failed_files": failures.failed, "seconds": round(time.time() - started, 1)}
    if job.finish is not None:
        summary.update(job.finish(method))
    if dist_info.is_main and (output / "metrics.jsonl").exists():
        records = read_metrics(output / "metrics.jsonl")
        summary["first"], summary["last"] = records[0], records[-1]
        (output / "summary.json").write_text(json.dumps(summary, indent=2))
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
                      f"{dist_info.world_size}: starting new random streams (seed {reseed} + rank)")
    seed_everything(reseed + dist_info.rank)


def truncate_metrics(path: Path, step: int) -> None:
    """Drop lines logged after the checkpoint a crashed run is resumed from."""
    if path.exists():
        kept = [r for r in read_metrics(path) if r["step"] <= step]
        path.write_text("".join(json.dumps(r) + "\n" for r in kept))
