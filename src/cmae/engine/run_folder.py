"""Which run a folder holds, and the rule that one is never overwritten silently.

A training command into a folder that holds a run stops with one line naming the two ways on:
`--resume auto` continues it, `--overwrite` moves it to a sibling folder (nothing is deleted).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

from cmae.errors import ConfigError

CHECKPOINT_NAME = "checkpoint-last.pt"
# what a started run leaves behind; any one of them makes the folder a run's
RUN_FILES = (CHECKPOINT_NAME, "metrics.jsonl", "config.yaml", "summary.json")


def holds_run(output: Path) -> bool:
    return any((output / name).exists() for name in RUN_FILES)


def claim_output(output: Path, resume: str | Path | None, overwrite: bool, is_main: bool = True) -> Path | None:
    """Check `output` before anything is read or written; -> the checkpoint to resume from (None: a fresh start).

    `resume="auto"` continues the folder's checkpoint-last.pt when there is one; without one a run that
    never saved starts afresh (its logs are truncated when the run starts). With `overwrite`, the main
    process moves an existing run aside first. Raises ConfigError for a run folder given neither."""
    if resume == "auto":
        found = output / CHECKPOINT_NAME
        if found.is_file() and not overwrite:
            return found
        resume = None
    if resume is not None and overwrite:
        raise ConfigError("--overwrite starts a new run; it does not go with --resume PATH")
    if resume is not None and holds_run(output) and not Path(resume).resolve().is_relative_to(output.resolve()):
        raise ConfigError(f"{output} already holds a run, and --resume {resume} is another folder's checkpoint: "
                          "continue a run in its own folder, or give a new --output")
    if resume is None and holds_run(output):
        if not overwrite:
            raise ConfigError(f"{output} already holds a run; continue it with --resume auto, or pass --overwrite "
                              "to move it aside and start afresh")
        if is_main:
            moved = move_aside(output)
            print(f"moved the previous run in {output} to {moved}", flush=True)
    return Path(resume) if resume is not None else None


def move_aside(output: Path) -> Path:
    """Rename `output` to a sibling `NAME.previous-YYYYmmdd-HHMMSS` (the old run's last change; -2, -3 when taken)."""
    output = output.resolve()  # "." has no name to make a sibling of
    latest = max((output / name).stat().st_mtime for name in RUN_FILES if (output / name).exists())
    stamp = time.strftime("%Y%m%d-%H%M%S", time.localtime(latest))
    target = output.with_name(f"{output.name}.previous-{stamp}")
    for number in range(2, 1000):
        if not target.exists():
            break
        target = output.with_name(f"{output.name}.previous-{stamp}-{number}")
    os.replace(output, target)
    return target
