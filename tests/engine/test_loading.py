"""One loading path: a checkpoint builds its config and its method once; `cmae.load_encoder` reads a cmae
checkpoint and the folders `cmae export` writes (hf, timm) to the same features."""

import json
import os
import stat
import subprocess
import sys

import pytest
import torch

import cmae
import cmae.engine.loading as loading
from cmae.config import Config, load_config
from cmae.engine.pretrain import pretrain
from tests.helpers import tiny_overrides


@pytest.fixture(scope="module")
def checkpoints(synth_dir, tmp_path_factory):
    """A video checkpoint (videomae_1d table: exports to hf) and an image one (exports to timm)."""
    root = tmp_path_factory.mktemp("loading")
    video = tiny_overrides(synth_dir, **{"model.pos_embed": "videomae_1d", "train.epochs": 1,
                                         "train.max_steps_per_epoch": 1})
    pretrain(load_config("demo/videomae", video), root / "video")
    image = tiny_overrides(synth_dir, **{"model.name": "vit_micro_p8", "data.num_frames": 1, "model.tubelet_size": 1,
                                         "train.epochs": 1, "train.max_steps_per_epoch": 1})
    pretrain(load_config("demo/mae", image), root / "image")
    return root


def test_loading_a_checkpoint_builds_its_config_and_method_once(checkpoints, monkeypatch, tmp_path):
    preset = tmp_path / "eval.yaml"  # an evaluation preset laid over the checkpoint's config
    preset.write_text("eval:\n  clips: 2\n")
    counts = {"configs": 0, "methods": 0, "validations": 0}
    config_init, build, validate = Config.__init__, loading.build_method, loading.validate

    def counting_init(self, *args, **kwargs):
        counts["configs"] += 1
        config_init(self, *args, **kwargs)

    def counting(name, function):
        def wrapped(*args, **kwargs):
            counts[name] += 1
            return function(*args, **kwargs)
        return wrapped

    monkeypatch.setattr(Config, "__init__", counting_init)
    monkeypatch.setattr(loading, "build_method", counting("methods", build))
    monkeypatch.setattr(loading, "validate", counting("validations", validate))
    config, _ = loading.load_pretrained(checkpoints / "video" / "checkpoint-last.pt", preset, ["eval.crops=3"])
    assert (config.eval.clips, config.eval.crops) == (2, 3)
    assert counts == {"configs": 1, "methods": 1, "validations": 1}


def test_load_encoder_reads_a_checkpoint_and_its_hf_and_timm_exports_alike(checkpoints, tmp_path):
    assert cmae.__version__ and cmae.__version__ != "0+unknown"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for kind, fmt in (("video", "hf"), ("image", "timm")):
        result = subprocess.run([sys.executable, "-m", "cmae.cli", "export", "--checkpoint",
                                 str(checkpoints / kind / "checkpoint-last.pt"), "--format", fmt, "--output",
                                 str(tmp_path / fmt)], capture_output=True, text=True, env=env)
        assert result.returncode == 0, result.stderr[-2000:]
        assert stat.S_IMODE((tmp_path / fmt / "model.safetensors").stat().st_mode) == 0o666 & ~current_umask()
    clips = {"video": torch.randn(2, 3, 4, 32, 32), "image": torch.randn(2, 3, 1, 32, 32)}
    for kind, fmt in (("video", "hf"), ("image", "timm")):
        original = cmae.load_encoder(checkpoints / kind / "checkpoint-last.pt")
        exported = cmae.load_encoder(tmp_path / fmt)
        assert not original.training and not exported.training
        assert exported.config.model.name == original.config.model.name
        with torch.no_grad():
            assert (original(clips[kind]) - exported(clips[kind])).abs().max() < 1e-5, fmt
    method = cmae.load_method(checkpoints / "video" / "checkpoint-last.pt")
    assert method.config.method.name == "videomae" and hasattr(method, "decoder")


def test_an_exported_timm_folder_loads_with_local_dir_and_an_hf_one_has_a_processor(checkpoints, tmp_path):
    timm = pytest.importorskip("timm")
    transformers = pytest.importorskip("transformers")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for kind, fmt in (("video", "hf"), ("image", "timm")):
        subprocess.run([sys.executable, "-m", "cmae.cli", "export", "--checkpoint",
                        str(checkpoints / kind / "checkpoint-last.pt"), "--format", fmt, "--output", str(tmp_path / fmt)],
                       check=True, capture_output=True, env=env)
    model = timm.create_model(f"local-dir:{tmp_path / 'timm'}", pretrained=True).eval()
    encoder = cmae.load_encoder(checkpoints / "image" / "checkpoint-last.pt")
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        ours = encoder(image[:, :, None]).mean(1)
        theirs = model(image)
    assert (ours - theirs).abs().max() < 1e-4  # a width (96) and depth (4) that timm names no model for
    processor = transformers.VideoMAEImageProcessor.from_pretrained(tmp_path / "hf")
    assert processor.crop_size == {"height": 32, "width": 32}
    assert json.loads((tmp_path / "hf" / "config.json").read_text())["cmae"]["model"]["name"] == "vit_pico_p4"


def current_umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def test_a_preset_laid_over_a_checkpoint_keeps_its_model(checkpoints, tmp_path):
    """A position table is computed, not stored: a preset's model.pos_embed over a checkpoint would change
    the encoder with every weight still loading. The checkpoint's value stays (a warning says so)."""
    path = checkpoints / "video" / "checkpoint-last.pt"
    plain, _ = loading.load_pretrained(path, None, [])
    other = "separable" if plain.model.pos_embed != "separable" else "mae_2d"
    preset = tmp_path / "other.yaml"
    preset.write_text(f"model:\n  pos_embed: {other}\n  drop_path: 0.1\neval:\n  clips: 2\n")
    with pytest.warns(UserWarning, match=f"kept the checkpoint's model.pos_embed='{plain.model.pos_embed}'"):
        config, _ = loading.load_pretrained(path, preset, [])
    assert config.model.pos_embed == plain.model.pos_embed and config.eval.clips == 2
    assert config.model.drop_path == 0.1  # training-only keys may change
    overridden, _ = loading.load_pretrained(path, preset, [f"model.pos_embed={other}"])
    assert overridden.model.pos_embed == other  # a key=value on the command line is meant
