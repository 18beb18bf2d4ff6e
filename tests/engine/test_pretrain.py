"""End-to-end pre-training on real (tiny) H.264 clips: files, resume, corrupt data, torchrun."""

import json
import os
import shutil

import pytest
import torch

from cmae.config import ConfigError, InputError, load_config
from cmae.engine.pretrain import pretrain
from cmae.engine.runtime import read_metrics
from tests.helpers import tiny_overrides, torchrun_pretrain

PRESET = "configs/demo/videomae.yaml"


def test_pretrain_writes_the_run_folder(synth_dir, tmp_path):
    config = load_config(PRESET, tiny_overrides(synth_dir, **{"train.epochs": 3, "train.base_lr": 0.01}))
    summary = pretrain(config, tmp_path / "run")
    run = tmp_path / "run"
    for name in ("config.yaml", "metrics.jsonl", "checkpoint-last.pt"):
        assert (run / name).is_file(), name
    assert load_config(run / "config.yaml") == config
    records = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in records] == list(range(1, 10))  # 24 clips / batch 8 = 3 steps x 3 epochs
    assert {"step", "epoch", "loss", "loss_rec", "lr"} <= set(records[0])
    assert records[-1]["loss_rec"] < records[0]["loss_rec"]
    state = torch.load(run / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == 9 and state["epoch"] == 3
    assert {"model", "optimizer", "scaler", "rng", "config"} <= set(state)
    assert "encoder.patch_embed.proj.weight" in state["model"]
    assert summary["failed_files"] == 0


def test_resume_matches_an_uninterrupted_run(synth_dir, tmp_path):
    overrides = tiny_overrides(synth_dir, **{"train.epochs": 2, "train.keep_every": 1})
    pretrain(load_config(PRESET, overrides), tmp_path / "full")
    assert (tmp_path / "full" / "checkpoint-0001.pt").is_file()
    # a run that stopped after epoch 1: its folder as it was then, metrics past the checkpoint included
    (tmp_path / "resumed").mkdir()
    for name in ("metrics.jsonl", "checkpoint-0001.pt"):
        shutil.copy(tmp_path / "full" / name, tmp_path / "resumed" / name)
    torch.manual_seed(999)  # the checkpoint's RNG states, not this, must drive the rest
    pretrain(load_config(PRESET, overrides), tmp_path / "resumed",
             resume=tmp_path / "resumed" / "checkpoint-0001.pt")
    a = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint-last.pt", weights_only=True)
    assert a["step"] == b["step"] == 6
    for name, value in a["model"].items():
        assert torch.allclose(value, b["model"][name], atol=1e-6), name
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    resumed = read_metrics(tmp_path / "resumed" / "metrics.jsonl")
    assert [r["step"] for r in resumed] == [r["step"] for r in full]  # no duplicated steps
    assert resumed[-1]["loss"] == pytest.approx(full[-1]["loss"], rel=1e-5)


def test_corrupt_file_is_skipped_and_counted(synth_dir, tmp_path):
    lines = (synth_dir / "train.txt").read_text().splitlines()
    (tmp_path / "broken.mp4").write_bytes(os.urandom(2000))
    absolute = [f"{synth_dir / line.rsplit(' ', 1)[0]} {line.rsplit(' ', 1)[1]}" for line in lines]
    (tmp_path / "list.txt").write_text("\n".join(absolute[:15] + ["broken.mp4 0"] + absolute[15:]) + "\n")
    overrides = tiny_overrides(synth_dir, **{"data.train": tmp_path / "list.txt", "train.epochs": 1,
                                            "data.max_failed_fraction": 0.2})
    with pytest.warns(UserWarning, match="broken.mp4"):
        summary = pretrain(load_config(PRESET, overrides), tmp_path / "run")
    assert summary["failed_files"] == 1
    with pytest.warns(UserWarning, match="broken.mp4"):  # a resumed run carries the bad files on
        resumed = pretrain(load_config(PRESET, overrides + ["train.epochs=2"]), tmp_path / "run", resume="auto")
    assert resumed["failed_files"] == 1  # a file, however often it is tried
    with pytest.raises(InputError, match=r"1 of 25 files could not be decoded"):
        pretrain(load_config(PRESET, overrides + ["data.max_failed_fraction=0.01"]), tmp_path / "strict")


def test_config_problems_stop_the_run_before_training(synth_dir, tmp_path):
    with pytest.raises(ConfigError, match="unknown method.name 'videomea'"):
        pretrain(load_config(PRESET, tiny_overrides(synth_dir, **{"method.name": "videomea"})), tmp_path / "a")
    with pytest.raises(ConfigError, match="not divisible"):
        pretrain(load_config(PRESET, tiny_overrides(synth_dir, **{"train.batch_size": 7,
                                                                  "train.accum_steps": 2})), tmp_path / "b")
    with pytest.raises(ConfigError, match="fewer than one global batch"):
        pretrain(load_config(PRESET, tiny_overrides(synth_dir, **{"train.batch_size": 64})), tmp_path / "c")
    assert not (tmp_path / "a" / "checkpoint-last.pt").exists()


def test_gradient_accumulation_matches_a_full_batch(synth_dir, tmp_path):
    """Two micro-batches of 4 take the same optimiser steps' data as one batch of 8."""
    base = tiny_overrides(synth_dir, **{"train.epochs": 1})
    pretrain(load_config(PRESET, base), tmp_path / "full")
    pretrain(load_config(PRESET, base + ["train.accum_steps=2"]), tmp_path / "accum")
    full = read_metrics(tmp_path / "full" / "metrics.jsonl")
    accum = read_metrics(tmp_path / "accum" / "metrics.jsonl")
    assert [r["step"] for r in full] == [r["step"] for r in accum] == [1, 2, 3]
    assert all(r["lr"] == s["lr"] for r, s in zip(full, accum, strict=False))


def test_gradient_accumulation_warns_where_it_shrinks_the_contrastive_batch(synth_dir, tmp_path):
    overrides = tiny_overrides(synth_dir, **{"train.epochs": 1, "train.accum_steps": 2, "train.max_steps_per_epoch": 1})
    with pytest.warns(UserWarning, match="CMAEV's contrastive negatives and batch statistics cover 4 samples per "
                                         "step, not the global batch of 8"):
        pretrain(load_config("configs/demo/cmae_v.yaml", overrides), tmp_path / "cmae_v")


@pytest.mark.parametrize("preset", [PRESET, "configs/demo/cmae_v.yaml", "configs/demo/vic_mae.yaml"])
def test_torchrun_two_processes(synth_dir, tmp_path, preset):
    extra = {"train.epochs": 2, "train.max_steps_per_epoch": 2}
    if "vic_mae" in preset:
        extra["method.con_start_epoch"] = 1  # lambda switches on mid-run, under DDP
    torchrun_pretrain(preset, tmp_path / "ddp", tiny_overrides(synth_dir, **extra))
    records = read_metrics(tmp_path / "ddp" / "metrics.jsonl")
    assert [r["step"] for r in records] == [1, 2, 3, 4]  # rank 0 logs alone
    state = torch.load(tmp_path / "ddp" / "checkpoint-last.pt", weights_only=True)
    assert state["step"] == 4
    assert len(state["rng"]) == 2  # one RNG state per rank
    assert json.loads((tmp_path / "ddp" / "summary.json").read_text())["steps"] == 4


def test_torchrun_resume_matches_an_uninterrupted_run(synth_dir, tmp_path):
    """Each rank resumes its own random streams (masks differ per rank), so the result is exact."""
    overrides = tiny_overrides(synth_dir, **{"train.epochs": 2, "train.max_steps_per_epoch": 2,
                                            "train.keep_every": 1})
    torchrun_pretrain(PRESET, tmp_path / "full", overrides)
    torchrun_pretrain(PRESET, tmp_path / "resumed", overrides,
                      "--resume", str(tmp_path / "full" / "checkpoint-0001.pt"))
    a = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint-last.pt", weights_only=True)
    assert a["step"] == b["step"] == 4
    for name, value in a["model"].items():
        assert torch.allclose(value, b["model"][name], atol=1e-6), name
    # on another number of processes the old streams cannot continue: new ones, and a warning
    with pytest.warns(UserWarning, match="RNG states of 2 process"):
        summary = pretrain(load_config(PRESET, overrides), tmp_path / "one", tmp_path / "full" / "checkpoint-0001.pt")
    assert summary["steps"] == 4
