"""Checkpoints that `torch.load(..., weights_only=True)` reads, written atomically.

A checkpoint holds plain containers and tensors only: the method's state dict, the
optimiser and grad-scaler states, the step/epoch counters, the RNG states and the
resolved config as a dict. It is written to a temporary file in the same folder, flushed
to disk and renamed over the old one, so a crash (even kill -9 or a power cut) mid-write
leaves the previous checkpoint intact, and a failed write (disk full) says so.
"""

from __future__ import annotations

import os
import pickle
import random
import shutil
from pathlib import Path
from typing import Any

import torch

from cmae.errors import ConfigError


def rng_states() -> dict[str, Any]:
    states: dict[str, Any] = {"torch": torch.get_rng_state(), "python": list_state(random.getstate())}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def list_state(state: tuple) -> list:
    """random.getstate() is (version, tuple-of-ints, gauss); store it as lists of ints."""
    version, internal, gauss = state
    return [version, list(internal), gauss]


def set_rng_states(states: dict[str, Any]) -> None:
    torch.set_rng_state(states["torch"])
    version, internal, gauss = states["python"]
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class CheckpointWriteError(OSError):
    """A checkpoint could not be written; the message names the file and says the old one is intact."""


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> None:
    path = Path(path)
    for stale in path.parent.glob(f".{path.name}.tmp-*"):  # left by a writer that was killed
        stale.unlink(missing_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            try:
                torch.save(state, handle)
            except RuntimeError as error:  # torch's zip writer reports a short write (a full disk) this way
                raise OSError(f"the write stopped short: {error}") from error
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        previous = f"{path} still holds the previous checkpoint" if path.exists() else "no checkpoint was kept"
        free = shutil.disk_usage(path.parent).free / 2**20
        raise CheckpointWriteError(f"could not write checkpoint {path} ({error.strerror or error}; {free:.0f} MiB "
                                   f"free there); {previous}. Free disk space (or fix the folder's permissions, "
                                   "or the file-size limit) and resume") from error
    try:  # make the rename itself survive a power cut; some network file systems cannot sync a folder
        directory = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(directory)
        finally:
            os.close(directory)
    except OSError:
        pass


def load_checkpoint(path: str | Path, map_location: str | torch.device = "cpu") -> dict[str, Any]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    # a truncated zip is an OSError (EINVAL) on some torch versions, a RuntimeError on others
    except (RuntimeError, EOFError, KeyError, ValueError, OSError, pickle.UnpicklingError) as error:
        raise ConfigError(f"{path}: not a cmae checkpoint torch can read (truncated, or another kind of file?): "
                          f"{str(error).splitlines()[0] if str(error) else type(error).__name__}") from None
