"""`cmae extract`: the probes' features in a safetensors file, in one process and under torchrun."""

import os
import subprocess
import sys
from pathlib import Path

import torch
from safetensors.torch import load_file

from cmae.config import load_config
from cmae.data.lists import read_samples
from cmae.engine.evaluate import extract_features
from cmae.engine.loading import load_pretrained
from cmae.engine.pretrain import pretrain
from tests.helpers import tiny_overrides


def test_extract_writes_the_probe_features_alike_in_one_and_two_processes(synth_dir, tmp_path):
    pretrain(load_config("configs/demo/videomae.yaml", tiny_overrides(synth_dir, **{"train.epochs": 1})), tmp_path)
    checkpoint, val = tmp_path / "checkpoint-last.pt", f"data.val={synth_dir / 'val.txt'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    torchrun = Path(sys.executable).with_name("torchrun")
    for launcher, name in (([sys.executable], "one"), ([str(torchrun), "--standalone", "--nproc_per_node=2"], "two")):
        result = subprocess.run([*launcher, "-m", "cmae.cli", "extract", "--checkpoint", str(checkpoint), "--output",
                                 str(tmp_path / f"{name}.safetensors"), val, "eval.batch_size=3"],
                                capture_output=True, text=True, env=env, timeout=300)
        assert result.returncode == 0, result.stderr[-2000:]
    one, two = load_file(tmp_path / "one.safetensors"), load_file(tmp_path / "two.safetensors")
    config, method = load_pretrained(checkpoint, overrides=[val])
    features, labels = extract_features(method.encoder, read_samples(config.data.val), config)
    assert torch.allclose(one["features"], features, atol=1e-5) and torch.equal(one["labels"], labels)
    assert one["indices"].tolist() == list(range(8))
    assert torch.allclose(two["features"], one["features"], atol=1e-5) and torch.equal(two["indices"], one["indices"])
