"""Stopping a run on request: SIGTERM / SIGUSR1 (SLURM's warnings before preemption or the time limit)
and Ctrl-C (SIGINT) become a flag that the loop reads after each step; once the checkpoint is written,
every rank raises `Preempted`, which exits with `EXIT_PREEMPTED` (a requeued job continues with
--resume auto) or, after Ctrl-C, with the shell's 130. A second Ctrl-C stops at once: the checkpoint
before it stays (checkpoints are written atomically)."""

from __future__ import annotations

import signal
from pathlib import Path
from typing import Any

from cmae.distributed import all_true

# sysexits.h's EX_TEMPFAIL ("try again later"): the run stopped on SIGTERM / SIGUSR1 after saving
# its checkpoint, and a requeued job continues it with --resume auto.
EXIT_PREEMPTED = 75
EXIT_INTERRUPTED = 130  # 128 + SIGINT: what a shell reports for a Ctrl-C'd command


class Preempted(SystemExit):
    """Raised on every rank after the checkpoint that SIGTERM / SIGUSR1 asked for is written."""

    def __init__(self, path: Path, signum: int | None = None):
        super().__init__(EXIT_INTERRUPTED if signum == signal.SIGINT else EXIT_PREEMPTED)
        self.path = path


class StopSignals:
    """SIGTERM / SIGUSR1 (SLURM's warnings before preemption or the time limit) and SIGINT set a flag
    that the loop reads after each step, so the step in flight finishes and the checkpoint is consistent.
    A second SIGINT raises KeyboardInterrupt at once (a user who cannot wait for the step)."""

    SIGNALS = (signal.SIGTERM, signal.SIGUSR1, signal.SIGINT)

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
        if signum == signal.SIGINT and self.received == signal.SIGINT:
            raise KeyboardInterrupt
        if signum == signal.SIGINT:
            print("stopping at the end of this step to save a checkpoint (Ctrl-C again: stop now, keeping the "
                  "checkpoint before)", flush=True)
        self.received = signum

    def __exit__(self, *exc) -> None:
        for signum, handler in self.previous.items():
            signal.signal(signum, handler)

    def agreed(self) -> bool:
        """Whether any rank got a signal (a collective under torchrun: every rank calls it each step)."""
        return not all_true(self.received is None)
