"""Checkpoint writes that fail: a writer killed with SIGKILL mid-write, and a disk that is full.

Both are real OS events in a child process: SIGKILL, and a write past the file-size limit
(RLIMIT_FSIZE), which fails with EFBIG as a full disk fails with ENOSPC.
"""

import os
import resource
import signal
import subprocess
import sys
import time

import torch

from cmae.engine.checkpoint import load_checkpoint
from tests.helpers import tiny_overrides

WRITER = """
import sys, torch
from cmae.engine.checkpoint import save_checkpoint
save_checkpoint(sys.argv[1], {"step": 1, "weights": torch.ones(4)})
print("first written", flush=True)
save_checkpoint(sys.argv[1], {"step": 2, "weights": torch.zeros(64 * 2**20)})  # 256 MB: a long write
"""


def test_kill_during_a_checkpoint_write_leaves_the_previous_one(tmp_path):
    path = tmp_path / "checkpoint-last.pt"
    writer = subprocess.Popen([sys.executable, "-c", WRITER, str(path)], stdout=subprocess.PIPE, text=True)
    assert writer.stdout.readline().strip() == "first written"
    deadline = time.time() + 60
    while not list(tmp_path.glob(".checkpoint-last.pt.tmp-*")) and time.time() < deadline:
        time.sleep(0.001)
    writer.send_signal(signal.SIGKILL)
    writer.wait()
    assert writer.returncode == -signal.SIGKILL
    assert list(tmp_path.glob(".checkpoint-last.pt.tmp-*")), "killed before the write began"
    state = load_checkpoint(path)
    assert state["step"] == 1 and torch.equal(state["weights"], torch.ones(4))


def test_a_failed_write_stops_the_run_with_a_clear_error_and_keeps_the_previous_checkpoint(synth_dir, tmp_path):
    cli = [sys.executable, "-m", "cmae.cli", "pretrain", "--config", "configs/demo/videomae.yaml",
           "--output", str(tmp_path), "--resume", "auto"]
    overrides = tiny_overrides(synth_dir, **{"train.epochs": 1})
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    first = subprocess.run([*cli, *overrides], capture_output=True, text=True, env=env, timeout=120)
    assert first.returncode == 0, first.stderr[-2000:]
    size = (tmp_path / "checkpoint-last.pt").stat().st_size

    def small_files():  # the logs still fit; the next checkpoint does not
        resource.setrlimit(resource.RLIMIT_FSIZE, (size // 2, size // 2))

    full = subprocess.run([*cli, *overrides, "train.epochs=2"], capture_output=True, text=True, env=env,
                          timeout=120, preexec_fn=small_files)
    assert full.returncode == 1, full.stderr[-2000:]
    message = full.stderr.strip().splitlines()[-1]
    assert message.startswith("cmae pretrain: error: could not write checkpoint"), message
    assert "still holds the previous checkpoint" in message and "the write stopped short" in message
    assert load_checkpoint(tmp_path / "checkpoint-last.pt")["step"] == 3  # the first run's, intact
    assert not list(tmp_path.glob(".checkpoint-last.pt.tmp-*"))
