"""Shared fixtures: a tiny synthetic data set (real H.264 files) and a tiny config."""

from __future__ import annotations

import pytest

from cmae.config import load_config
from tests.helpers import tiny_overrides


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """24 training and 8 validation clips of 8 frames at 32x32, written once per test session."""
    from cmae.data.synth import SynthSpec, write_synthetic_dataset

    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, SynthSpec(num_train=24, num_val=8, num_frames=8, size=32, seed=0))
    return out


@pytest.fixture
def tiny_config(synth_dir):
    return load_config("configs/demo/videomae.yaml", tiny_overrides(synth_dir))
