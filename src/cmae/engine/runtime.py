"""Device, precision, seeding and logging shared by every training/evaluation loop."""

from __future__ import annotations

import contextlib
import json
import os
import random
from pathlib import Path
from typing import Any

import torch

from cmae.config import ConfigError, InputError


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device={name!r} but CUDA is not available on this machine")
    return torch.device(name)  # the config allows cpu, cuda and cuda:N only


def resolve_precision(name: str, device: torch.device) -> torch.dtype:
    """auto: bf16 on CUDA; fp32 on CPU, where bf16 autocast is ~20x slower without native support."""
    choices = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
    if name == "auto":
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    if name == "fp16" and device.type != "cuda":
        raise ConfigError("train.precision=fp16 needs CUDA; use fp32 or bf16 on CPU")
    return choices[name]


def autocast(device: torch.device, dtype: torch.dtype):
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


def seed_everything(seed: int) -> None:
    random.seed(seed)
    torch.manual_seed(seed)


def to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


class MetricsLog:
    """Appends one JSON object per logged step to `metrics.jsonl` and, once `open_tensorboard` is
    called, the same numbers as TensorBoard scalars (`train/<key>` at its `step`) in the same
    folder (main process only)."""

    def __init__(self, path: Path, enabled: bool = True):
        self.path = path
        self.enabled = enabled
        self.tensorboard = None

    def open_tensorboard(self, enabled: bool = True, purge_step: int | None = None) -> None:
        """`purge_step`: a resumed run hides the events a crashed run logged from this step on."""
        if not (self.enabled and enabled):
            return
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as error:  # tensorboard is a dependency; a broken install gets a clear message
            raise ConfigError(f"train.tensorboard=true needs the tensorboard package ({error}): "
                              "pip install tensorboard, or set train.tensorboard=false") from None
        self.tensorboard = SummaryWriter(str(self.path.parent), purge_step=purge_step)

    def write(self, record: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as handle:
            handle.write(json.dumps(record) + "\n")
        if self.tensorboard is not None:
            for key, value in record.items():
                if key not in ("step", "epoch") and isinstance(value, (int, float)):
                    self.tensorboard.add_scalar(f"train/{key}", value, record["step"])
            self.tensorboard.flush()

    def close(self) -> None:
        if self.tensorboard is not None:
            self.tensorboard.close()
            self.tensorboard = None


def undecodable(failed: int, total: int, why: str) -> InputError:
    """The one line that stops a run or an evaluation over too many files that do not decode."""
    return InputError(f"{failed} of {total} files could not be decoded ({why}); the warnings above name them "
                      "(cmae prepare check LIST lists them all)")


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The rows of a metrics.jsonl; a last line cut short (a run killed mid-write) is left out."""
    lines = [line for line in Path(path).read_text().splitlines() if line.strip()]
    rows = []
    for number, line in enumerate(lines):
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            if number < len(lines) - 1:  # not the last line: the file is damaged, not cut short
                raise
    return rows


def readable(path: Path) -> None:
    """Give a written file the mode the umask allows (0644 by default): safetensors writes 0600, which
    colleagues on a shared cluster cannot read."""
    umask = os.umask(0)
    os.umask(umask)
    path.chmod(0o666 & ~umask)
