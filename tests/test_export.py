"""`cmae export`: cmae checkpoints loaded by transformers and timm themselves, outputs compared."""

import json
import subprocess
import sys

import pytest
import torch

from cmae.config import ConfigError, load_config
from cmae.engine.loading import load_pretrained
from cmae.engine.pretrain import pretrain
from cmae.export import hf_videomae
from tests.helpers import tiny_overrides

transformers = pytest.importorskip("transformers")
timm = pytest.importorskip("timm")


def cli_export(checkpoint, format, output):
    result = subprocess.run([sys.executable, "-m", "cmae.cli", "export", "--checkpoint", str(checkpoint), "--format",
                             format, "--output", str(output)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr[-2000:]


def test_a_videomae_1d_checkpoint_loads_in_transformers_and_matches(synth_dir, tmp_path):
    pretrain(load_config("configs/demo/videomae.yaml", tiny_overrides(synth_dir, **{"train.epochs": 1})), tmp_path)
    cli_export(tmp_path / "checkpoint-last.pt", "hf", tmp_path / "hf")
    hf, loading = transformers.VideoMAEModel.from_pretrained(tmp_path / "hf", output_loading_info=True)
    assert not any(loading.values()), loading  # no missing, unexpected or mismatched weights
    _, method = load_pretrained(tmp_path / "checkpoint-last.pt")
    clip = torch.randn(2, 3, 4, 32, 32)
    with torch.no_grad():
        ours = method.encoder(clip)
        theirs = hf.eval()(clip.transpose(1, 2)).last_hidden_state
    assert (ours - theirs).abs().max() < 1e-4


def test_an_image_checkpoint_loads_in_timm_and_matches(synth_dir, tmp_path):
    overrides = tiny_overrides(synth_dir, **{"model.name": "vit_tiny", "model.patch_size": 16, "model.pos_embed":
                                             "mae_2d", "model.cls_token": True, "train.epochs": 1,
                                             "train.max_steps_per_epoch": 1})
    pretrain(load_config("configs/demo/mae.yaml", overrides), tmp_path)
    cli_export(tmp_path / "checkpoint-last.pt", "timm", tmp_path / "timm")
    spec = json.loads((tmp_path / "timm" / "config.json").read_text())
    assert spec["architecture"] == "vit_tiny_patch16_224"
    model = timm.create_model(spec["architecture"], pretrained=True, **spec["model_args"], num_classes=spec["num_classes"],
                              pretrained_cfg_overlay={"file": str(tmp_path / "timm" / "model.safetensors")}).eval()
    _, method = load_pretrained(tmp_path / "checkpoint-last.pt")
    image = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        assert (method.encoder(image[:, :, None]) - model.forward_features(image)).abs().max() < 1e-5


def test_hf_export_refuses_a_table_hugging_face_cannot_hold(synth_dir, tmp_path):
    overrides = tiny_overrides(synth_dir, **{"model.pos_embed": "separable", "train.epochs": 1,
                                             "train.max_steps_per_epoch": 1})
    pretrain(load_config("configs/demo/videomae.yaml", overrides), tmp_path)
    with pytest.raises(ConfigError, match="model.pos_embed='separable'"):
        hf_videomae(tmp_path / "checkpoint-last.pt", tmp_path / "hf")
