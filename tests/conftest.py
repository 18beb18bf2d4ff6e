"""Shared fixtures: a tiny synthetic data set (real H.264 files) and a tiny config."""

from __future__ import annotations

import pytest

from cmae.config import load_config


@pytest.fixture(scope="session")
def synth_dir(tmp_path_factory):
    """24 training and 8 validation clips of 8 frames at 32x32, written once per test session."""
    from cmae.data.synth import SynthSpec, write_synthetic_dataset

    out = tmp_path_factory.mktemp("synth")
    write_synthetic_dataset(out, SynthSpec(num_train=24, num_val=8, num_frames=8, size=32, seed=0))
    return out


def tiny_overrides(synth_dir, **extra) -> list[str]:
    """Overrides that shrink any preset to seconds on a CPU."""
    values = {
        "data.train": str(synth_dir / "train.txt"),
        "data.num_frames": 4,
        "data.sampling_rate": 1,
        "data.image_size": 32,
        "data.num_workers": 0,
        "model.name": "vit_pico_p4",
        "model.patch_size": 8,
        "model.decoder_dim": 32,
        "model.decoder_depth": 1,
        "model.decoder_heads": 2,
        "train.batch_size": 8,
        "train.epochs": 2,
        "train.warmup_epochs": 1,
        "train.log_every": 1,
        **extra,
    }
    return [f"{key}={value}" for key, value in values.items()]


@pytest.fixture
def tiny_config(synth_dir):
    return load_config("configs/demo/videomae.yaml", tiny_overrides(synth_dir))
