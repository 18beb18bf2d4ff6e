"""The run-folder rule (engine/run_folder.py) at its edges, and metrics.jsonl cut short by a kill."""

import json
import os

import pytest

from cmae.config import ConfigError
from cmae.engine.run_folder import claim_output
from cmae.engine.runtime import read_metrics


def a_run(folder):
    folder.mkdir(parents=True)
    (folder / "checkpoint-last.pt").write_bytes(b"weights")
    (folder / "metrics.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0}) + "\n")
    return folder


def test_another_folders_checkpoint_is_not_resumed_into_a_run(tmp_path):
    run, other = a_run(tmp_path / "run"), a_run(tmp_path / "other")
    with pytest.raises(ConfigError, match="already holds a run, and --resume .* is another folder's checkpoint"):
        claim_output(run, other / "checkpoint-last.pt", overwrite=False)
    assert claim_output(run, run / "checkpoint-last.pt", overwrite=False) == run / "checkpoint-last.pt"
    assert claim_output(tmp_path / "new", other / "checkpoint-last.pt", overwrite=False) is not None


def test_overwrite_moves_the_working_directory_aside(tmp_path, monkeypatch):
    a_run(tmp_path / "run")
    monkeypatch.chdir(tmp_path / "run")
    claim_output(type(tmp_path)("."), None, overwrite=True)
    os.chdir(tmp_path)
    moved = [p.name for p in tmp_path.iterdir() if p.name.startswith("run.previous-")]
    assert len(moved) == 1 and (tmp_path / moved[0] / "checkpoint-last.pt").read_bytes() == b"weights"


def test_a_metrics_line_cut_short_by_a_kill_is_left_out(tmp_path):
    path = tmp_path / "metrics.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n{"step": 3, "lo')
    assert [r["step"] for r in read_metrics(path)] == [1, 2]
    path.write_text('{"step": 1}\n{"st\n{"step": 3}\n')  # damage inside the file is an error
    with pytest.raises(json.JSONDecodeError):
        read_metrics(path)
