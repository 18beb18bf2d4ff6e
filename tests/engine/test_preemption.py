"""Cluster runs: a SIGTERM mid-epoch, `--resume auto`, kept checkpoints, refused resumes, TensorBoard.

The signalled runs are real `cmae pretrain` processes (one, and two under torchrun) stopped with a
real SIGTERM while they train; each is compared with an uninterrupted run of the same command.
"""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from cmae.config import ConfigError, load_config
from cmae.engine.loop import EXIT_PREEMPTED
from cmae.engine.pretrain import pretrain
from cmae.engine.runtime import read_metrics
from tests.helpers import tiny_overrides

PRESET = "configs/demo/videomae.yaml"
TIMING_KEYS = {"time", "step_time", "data_wait", "clips_per_s", "max_memory_gb"}  # wall-clock, never equal


def command(output: Path, processes: int, overrides: list[str]) -> list[str]:
    cli = ["-m", "cmae.cli", "pretrain", "--config", PRESET, "--output", str(output), "--resume", "auto", *overrides]
    if processes == 1:
        return [sys.executable, *cli]
    torchrun = Path(sys.executable).with_name("torchrun")
    return [str(torchrun), "--standalone", f"--nproc_per_node={processes}", *cli]


def logged_steps(output: Path) -> int:
    path = output / "metrics.jsonl"
    return len(path.read_text().splitlines()) if path.exists() else 0


def run_to_end(output: Path, processes: int, overrides: list[str]) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command(output, processes, overrides), capture_output=True, text=True, timeout=300,
                            env=env)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result


def run_and_signal(output: Path, processes: int, overrides: list[str], after_steps: int) -> tuple[int, str]:
    """Start the run, SIGTERM it (the launcher: torchrun forwards it to its workers) once
    `after_steps` steps are logged; -> (exit status, output)."""
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    process = subprocess.Popen(command(output, processes, overrides), stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.time() + 240
    while logged_steps(output) < after_steps and process.poll() is None and time.time() < deadline:
        time.sleep(0.005)
    process.send_signal(signal.SIGTERM)
    text, _ = process.communicate(timeout=120)
    return process.returncode, text


def comparable(output: Path) -> list[dict]:
    return [{k: v for k, v in r.items() if k not in TIMING_KEYS} for r in read_metrics(output / "metrics.jsonl")]


@pytest.mark.parametrize("processes", [1, 2])
def test_sigterm_mid_epoch_then_resume_auto_matches_an_uninterrupted_run(synth_dir, tmp_path, processes):
    # 12 steps an epoch, 36 in all (two processes: each video repeated twice, data.repeat=2);
    # a checkpoint every 3 steps, the last 2 kept
    overrides = tiny_overrides(synth_dir, **{"train.batch_size": 2 * processes, "data.repeat": processes,
                                             "train.epochs": 3, "train.save_every_steps": 3,
                                             "train.keep_checkpoints": 2})
    run_to_end(tmp_path / "full", processes, overrides)

    status, text = run_and_signal(tmp_path / "run", processes, overrides, after_steps=4)
    assert "stopped by signal" in text, text[-3000:]
    # one process exits with the documented status; torchrun's launcher reports its workers' exit as 1
    assert status == (EXIT_PREEMPTED if processes == 1 else 1), text[-3000:]
    stopped = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    assert stopped["epoch_step"] > 0, "the signal should have landed mid-epoch"
    assert stopped["step"] == logged_steps(tmp_path / "run") < 36
    kept = sorted(p.name for p in (tmp_path / "run").glob("checkpoint-step*.pt"))
    assert len(kept) == 2 and kept[-1] == f"checkpoint-step{stopped['step']:07d}.pt"

    run_to_end(tmp_path / "run", processes, overrides)  # the same command: --resume auto continues
    full = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)
    resumed = torch.load(tmp_path / "run" / "checkpoint-last.pt", weights_only=True)
    assert full["step"] == resumed["step"] == 36
    for name, value in full["model"].items():
        assert torch.equal(value, resumed["model"][name]), name
    assert comparable(tmp_path / "run") == comparable(tmp_path / "full")


def test_a_model_changing_resume_is_refused_unless_overridden(synth_dir, tmp_path):
    overrides = tiny_overrides(synth_dir, **{"train.epochs": 1})
    pretrain(load_config(PRESET, overrides), tmp_path)
    longer = load_config(PRESET, [*overrides, "train.epochs=2", "data.num_workers=1"])  # length and loader: fine
    assert pretrain(longer, tmp_path, resume="auto")["steps"] == 6
    changed = load_config(PRESET, [*overrides, "train.epochs=3", "method.mask_ratio=0.5"])
    with pytest.raises(ConfigError, match=r"method\.mask_ratio=0\.5 \(checkpoint: 0\.9\).*--resume-override"):
        pretrain(changed, tmp_path, resume="auto")
    with pytest.warns(UserWarning, match="method.mask_ratio"):
        assert pretrain(changed, tmp_path, resume="auto", resume_override=True)["steps"] == 9


def test_tensorboard_holds_the_logged_scalars(synth_dir, tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    pretrain(load_config(PRESET, tiny_overrides(synth_dir, **{"train.clip_grad": 1.0})), tmp_path)
    records = read_metrics(tmp_path / "metrics.jsonl")
    events = EventAccumulator(str(tmp_path))
    events.Reload()
    for key in ("loss", "loss_rec", "lr", "grad_norm", "step_time", "data_wait", "clips_per_s"):
        logged = [(e.step, e.value) for e in events.Scalars(f"train/{key}")]
        assert logged == [(r["step"], pytest.approx(r[key], rel=1e-6, abs=1e-12)) for r in records], key
    assert all(r["grad_norm"] > 0 and 0 <= r["data_wait"] <= 1 for r in records)


def test_metrics_without_tensorboard(synth_dir, tmp_path):
    pretrain(load_config(PRESET, tiny_overrides(synth_dir, **{"train.tensorboard": False})), tmp_path)
    assert not list(tmp_path.glob("events.out.tfevents*"))
    assert json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])["grad_norm"] > 0


def test_a_non_finite_run_does_not_save_over_its_last_checkpoint(synth_dir, tmp_path):
    overrides = tiny_overrides(synth_dir, **{"train.lr": 1e8, "train.log_every": 6, "train.save_every_steps": 2})
    with pytest.raises(FloatingPointError, match="not finite"):
        pretrain(load_config(PRESET, overrides), tmp_path)
    if (tmp_path / "checkpoint-last.pt").exists():
        state = torch.load(tmp_path / "checkpoint-last.pt", weights_only=True)
        assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_a_mid_epoch_checkpoint_refuses_a_changed_batch(synth_dir, tmp_path):
    overrides = tiny_overrides(synth_dir, **{"train.batch_size": 4, "train.epochs": 1, "train.save_every_steps": 2,
                                             "train.keep_checkpoints": 10})
    pretrain(load_config(PRESET, overrides), tmp_path / "run")
    mid_epoch = tmp_path / "run" / "checkpoint-step0000002.pt"
    assert torch.load(mid_epoch, weights_only=True)["epoch_step"] == 2
    with pytest.raises(ConfigError, match="saved mid-epoch with train.batch_size=4; this run has 8"):
        pretrain(load_config(PRESET, [*overrides, "train.batch_size=8"]), tmp_path / "other", resume=mid_epoch)


def test_resuming_from_an_older_copy_sets_the_later_copies_aside(synth_dir, tmp_path):
    # 3 steps an epoch, a save each: the first run keeps the epoch copies 1-3 and the step copies 8 and 9
    overrides = tiny_overrides(synth_dir, **{"train.epochs": 3, "train.keep_every": 1, "train.save_every_steps": 1,
                                             "train.keep_checkpoints": 2})
    pretrain(load_config(PRESET, overrides), tmp_path)
    (tmp_path / "checkpoint-0009-good.pt").write_bytes(b"a user's own file")  # not a kept copy: left alone
    older = tmp_path / "checkpoint-0001.pt"
    with pytest.warns(UserWarning, match=r"later checkpoints \(4 kept copies, and checkpoint-last.pt\) are now in"):
        pretrain(load_config(PRESET, [*overrides, "train.epochs=2"]), tmp_path, resume=older)
    names = sorted(p.name for p in tmp_path.glob("checkpoint-*.pt"))
    # the resumed run's own copies survive its rotation (stale steps 8 and 9 would have deleted each at once)
    assert names == ["checkpoint-0001.pt", "checkpoint-0002.pt", "checkpoint-0009-good.pt", "checkpoint-last.pt",
                     "checkpoint-step0000005.pt", "checkpoint-step0000006.pt"]
    aside = tmp_path / "superseded" / "step0000003"
    assert sorted(p.name for p in aside.iterdir()) == [
        "checkpoint-0002.pt", "checkpoint-0003.pt", "checkpoint-last.pt", "checkpoint-step0000008.pt",
        "checkpoint-step0000009.pt", "metrics.jsonl"]
    assert torch.load(aside / "checkpoint-last.pt", weights_only=True)["step"] == 9  # the abandoned branch's end
    # the abandoned branch's rows too: moved out of the run's metrics.jsonl, not deleted
    assert [r["step"] for r in read_metrics(aside / "metrics.jsonl")] == list(range(4, 10))
    assert max(r["step"] for r in read_metrics(tmp_path / "metrics.jsonl")) == 6
    with pytest.warns(UserWarning, match="step0000003-2"):  # a second resume from there: a folder of its own
        pretrain(load_config(PRESET, [*overrides, "train.epochs=2"]), tmp_path, resume=older)
    assert (aside / "checkpoint-step0000009.pt").is_file()  # the first branch's copies stay where they were put
    second = sorted(p.name for p in aside.with_name("step0000003-2").iterdir())
    assert second == ["checkpoint-0002.pt", "checkpoint-last.pt", "checkpoint-step0000005.pt", "checkpoint-step0000006.pt",
                      "metrics.jsonl"]
