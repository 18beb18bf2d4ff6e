"""train.monitor: a frozen evaluation during pre-training, in metrics.jsonl and losses.png."""

import json

import pytest

from cmae.config import ConfigError, load_config
from cmae.engine.pretrain import pretrain
from cmae.visualize import plot_runs
from tests.helpers import tiny_overrides


@pytest.mark.parametrize("protocol", ["knn", "linprobe"])
def test_monitor_logs_top1_every_n_epochs_and_is_plotted(synth_dir, tmp_path, protocol):
    overrides = tiny_overrides(synth_dir, **{"train.epochs": 3, "train.monitor.every_epochs": 2,
                                             "train.monitor.train": synth_dir / "train.txt",
                                             "train.monitor.val": synth_dir / "val.txt",
                                             "train.monitor.protocol": protocol, "eval.probe_epochs": 3})
    summary = pretrain(load_config("configs/demo/videomae.yaml", overrides), tmp_path / "run")
    rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    monitored = [row for row in rows if "monitor_top1" in row]
    assert [row["epoch"] for row in monitored] == [1, 2]  # every second epoch and the last
    assert all(0 <= row["monitor_top1"] <= 100 and "loss" not in row for row in monitored)
    assert "loss" in summary["last"]  # the summary's losses skip the monitor rows
    events = list((tmp_path / "run").glob("events.out.tfevents.*"))
    assert events and any(b"monitor_top1" in path.read_bytes() for path in events)
    plot_runs([tmp_path / "run"], tmp_path / "losses.png")  # the default keys include monitor_top1
    assert (tmp_path / "losses.png").stat().st_size > 0
    if protocol == "linprobe":  # the probe seeds torch: the run must train as it would unwatched
        plain = pretrain(load_config("configs/demo/videomae.yaml", tiny_overrides(synth_dir, **{"train.epochs": 3})),
                         tmp_path / "plain")
        assert plain["last"]["loss"] == summary["last"]["loss"]


def test_monitor_needs_its_lists():
    with pytest.raises(ConfigError, match="train.monitor.every_epochs needs train.monitor.train"):
        load_config(None, ["train.monitor.every_epochs=1"])
    with pytest.raises(ConfigError, match="'train.monitor.every_epochs' must be >= 0"):
        load_config(None, ["train.monitor.every_epochs=-1"])
