"""A run's state and its life on disk: what the loop trains (`Job`) and holds while it trains (`Run`);
the checkpoint a run saves (atomic checkpoint-last.pt, kept copies by epoch and by step) and restores
exactly (weights, optimiser, scaler, position in the epoch, every rank's RNG streams), the check that a
resumed run builds the same model, the kept copies a restart from an older checkpoint sets aside,
and the metrics it logged past the checkpoint, dropped."""

from __future__ import annotations

import json
import os
import re
import shutil
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from cmae.config import Config, ConfigError, TrainConfig, config_from_dict
from cmae.distributed import DistInfo, all_reduce_sum, all_true, gather_objects
from cmae.engine.checkpoint import CheckpointWriteError, rng_states, save_checkpoint, set_rng_states
from cmae.engine.parallel import full_state, load_full_state
from cmae.engine.run_folder import CHECKPOINT_NAME
from cmae.engine.runtime import MetricsLog, read_metrics, seed_everything, undecodable
from cmae.engine.signals import StopSignals
from cmae.methods.base import Method

KEPT_COPY = re.compile(r"checkpoint-(step)?(\d+)\.pt")  # checkpoint-NNNN.pt (epochs), checkpoint-stepNNNNNNN.pt

# a resumed run must build and feed the same model: keys outside these sections may change
# (finetune.model_ema adds the average's weights to the checkpoint: toggled, the strict load would fail)
MODEL_KEYS = ("model.", "method.", "data.num_frames", "data.image_size", "data.views", "finetune.model_ema")


@dataclass
class Job:
    """What the loop trains, built after the process group is up and the seed is set.

    `train` holds the optimiser/schedule settings: `config.train` for pre-training, the
    `finetune` section mapped onto a TrainConfig for fine-tuning. Parameter groups may
    carry an "lr_scale" (layer-wise decay). `finish(method)` runs on every rank after the
    last epoch (e.g. the test set) and returns entries for the summary. `after_epoch(method,
    epochs_done)` runs on every rank after each epoch's checkpoint and returns entries to log
    (`monitor_top1`, fine-tuning's validation; {} for none); a true "best" entry also keeps that
    checkpoint as checkpoint-best.pt.
    """

    method: Method
    dataset: Dataset
    groups: list[dict]
    train: TrainConfig
    finish: Callable[[nn.Module], dict[str, Any]] | None = None
    after_epoch: Callable[[nn.Module, int], dict[str, Any]] | None = None


class DecodeFailures:
    """Counts the files that failed to decode, over workers and ranks; stops the run past the allowed fraction.

    With `num_files` (a list's files: a failed item stood in for the files just before it), each bad file
    counts once however often it is tried, against the data set's size, so the run stops as soon as the
    bad files already exceed the fraction. Without (tar shards), failures and attempts are summed."""

    # Judge the fraction only once enough files were tried, so one bad file early is not fatal.
    MIN_ATTEMPTS = 100

    def __init__(self, max_fraction: float, repeat: int = 1, num_files: int | None = None):
        self.max_fraction, self.repeat = max_fraction, repeat  # each decode gives `repeat` samples
        self.num_files = num_files
        self.failed = 0
        self.attempted = 0
        self.pending = torch.zeros(2, dtype=torch.float64)  # this rank's (failed, decoded) since the last check
        self.bad: set[int] = set()  # with num_files: the positions of the files found bad (all ranks, after check)
        self.new_bad: set[int] = set()  # this rank's, since the last check

    def update(self, num_failed: torch.Tensor, index: torch.Tensor | None = None) -> None:
        """Count a batch's failures (CPU tensors from the loader: no device sync, no collective)."""
        self.pending += torch.stack([num_failed.sum(), torch.tensor(num_failed.numel())]).double() / self.repeat
        if self.num_files and index is not None and bool(num_failed.any()):
            for position, tries in zip(index.tolist(), num_failed.tolist(), strict=True):
                self.new_bad.update((position - k) % self.num_files for k in range(1, tries + 1))

    def check(self, final: bool = False) -> None:
        """Total the counts over ranks (a collective: every rank calls it at the same steps) and judge."""
        counts, self.pending = all_reduce_sum(self.pending), torch.zeros(2, dtype=torch.float64)
        if self.num_files:
            self.bad.update(*gather_objects(self.new_bad))
            self.new_bad = set()
            self.failed, self.attempted = len(self.bad), self.num_files
        else:
            self.failed += int(counts[0])
            self.attempted += int(counts[0] + counts[1])
        if self.attempted == 0 or (self.attempted < self.MIN_ATTEMPTS and not final and not self.num_files):
            return
        fraction = self.failed / self.attempted
        if fraction > self.max_fraction:
            raise undecodable(self.failed, self.attempted, f"{fraction:.1%} > "
                              f"data.max_failed_fraction={self.max_fraction:.1%}")


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
    first_step: int = 0  # the step this process started (or resumed) at: the ETA's pace counts from it
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


def restore_state(run: Run, resume: str | Path, state: dict[str, Any], override: bool = False) -> None:
    """Continue a saved run exactly: weights, optimiser, scaler, position and RNG streams, from
    `state`, the checkpoint `resume` as `load_checkpoint` read it."""
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
    run.failures.bad = set(state.get("bad_files", []))
    restore_rng(state["rng"], run.dist_info, run.config.train.seed + 1_000_003 * run.start_epoch)
    if run.dist_info.is_main:
        aside = set_aside_later_copies(run.output, Path(resume), run.step, run.start_epoch)
        truncate_metrics(run.metrics.path, run.step, aside or superseded_folder(run.output, run.step))
        print(f"resumed from {resume} at step {run.step} (epoch {run.start_epoch + 1})", file=sys.stderr, flush=True)
        warn_schedule_change(run, state, resume)


def warn_schedule_change(run: Run, state: dict[str, Any], resume: str | Path) -> None:
    """A longer or shorter run stretches the cosine schedule, so the learning rate jumps: say so."""
    saved = config_from_dict(state["config"])
    before = saved.finetune.epochs if run.job.method.name == "finetune" else saved.train.epochs
    if before != run.train.epochs:
        warnings.warn(f"resuming {resume} with {run.train.epochs} epochs ({run.total_steps} steps) instead of its "
                      f"{before} ({run.steps_per_epoch * before} steps): the cosine schedule is stretched to the new "
                      "total, so the learning rate moves from where the old schedule left it", stacklevel=3)


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
                "bad_files": sorted(run.failures.bad),
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


def superseded_folder(output: Path, step: int) -> Path:
    """A new output/superseded/stepNNNNNNN (-2, -3 when taken) for what a resume at `step` replaces."""
    aside = output / "superseded" / f"step{step:07d}"
    for number in range(2, 1000):
        if not aside.exists():
            break
        aside = aside.with_name(f"step{step:07d}-{number}")
    return aside


def set_aside_later_copies(output: Path, resumed: Path, step: int, epoch: int) -> Path | None:
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
        return None
    aside = superseded_folder(output, step)
    try:
        aside.mkdir(parents=True)
        for path in later:
            os.replace(path, aside / path.name)
        if keep_last:
            link_or_copy(last, aside / last.name)
    except OSError as error:
        warnings.warn(f"could not set aside the kept checkpoints of {output} ({error})", stacklevel=3)
        return None
    warnings.warn(f"resuming at step {step} from {resumed}: the folder's later checkpoints ({len(later)} kept "
                  f"cop{'y' if len(later) == 1 else 'ies'}{', and checkpoint-last.pt' if keep_last else ''}) are "
                  f"now in {aside}", stacklevel=3)
    return aside


def truncate_metrics(path: Path, step: int, aside: Path) -> None:
    """Take the lines logged after the checkpoint a run is resumed from out of `path`, so that no step is
    logged twice; they go to aside/metrics.jsonl (nothing is deleted). Each file is replaced whole."""
    if not path.exists():
        return
    rows = read_metrics(path)
    later = [r for r in rows if r["step"] > step]
    if later:
        aside.mkdir(parents=True, exist_ok=True)
        write_whole(aside / path.name, later)
    write_whole(path, [r for r in rows if r["step"] <= step])


def write_whole(path: Path, rows: list[dict[str, Any]]) -> None:
    """JSON lines written to a temporary file and renamed over `path`: a crash leaves the old or the new."""
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text("".join(json.dumps(r) + "\n" for r in rows))
    os.replace(temporary, path)
