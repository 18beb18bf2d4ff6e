"""A tiny pre-trained run shared by the evaluation tests (one epoch of the demo's videomae, tiny)."""

import pytest

from cmae.config import load_config
from cmae.engine.pretrain import pretrain
from tests.helpers import tiny_overrides


@pytest.fixture(scope="module")
def tiny_run(synth_dir, tmp_path_factory):
    run = tmp_path_factory.mktemp("run")
    pretrain(load_config("configs/demo/videomae.yaml", tiny_overrides(synth_dir, **{"train.epochs": 1})), run)
    return run
