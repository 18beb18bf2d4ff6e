import re
import subprocess
import sys
import time
import typing
from pathlib import Path

import pytest
import yaml

from cmae.config import Config, ConfigError, config_from_dict, load_config, parse_override, save_config
from cmae.methods import resolve_method

PRESETS = sorted(Path("configs").rglob("*.yaml"))


@pytest.mark.parametrize("path", PRESETS, ids=[str(p) for p in PRESETS])
def test_every_preset_loads(path):
    load_config(path)


def test_overrides_are_typed():
    config = load_config(None, ["train.epochs=3", "train.base_lr=1e-3", "data.crop_scale=[0.2, 1]",
                                "data.hflip=false", "data.train=/x/train.txt", "train.warmup_epochs=5"])
    assert config.train.epochs == 3 and config.train.base_lr == 1e-3
    assert config.data.crop_scale == [0.2, 1.0] and config.data.hflip is False
    assert config.data.train == "/x/train.txt"
    assert config.train.warmup_epochs == 5.0 and isinstance(config.train.warmup_epochs, float)


@pytest.mark.parametrize(
    "override, message",
    [
        ("trian.epochs=2", "unknown config key 'trian'"),
        ("train.epoch=2", "unknown config key 'train.epoch'"),
        ("train.epochs=two", "'train.epochs' expects int"),
        ("train.epochs=2.5", "'train.epochs' expects int"),
        ("data.hflip=3", "'data.hflip' expects bool"),
        ("data.crop_scale=0.5", "'data.crop_scale' expects list"),
        ("data.crop_scale=[a, 1]", r"'data.crop_scale\[0\]' expects float"),
        ("train=3", "'train' is a section"),
        ("train.epochs", "not of the form key=value"),
    ],
)
def test_bad_overrides_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(None, [override])


def test_bad_file_names_file_and_key(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("train:\n  epocs: 3\n")
    with pytest.raises(ConfigError, match=r"bad.yaml: unknown config key 'train.epocs'"):
        load_config(path)
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")


def test_round_trip_through_yaml(tmp_path):
    config = load_config("configs/demo/videomae.yaml", ["train.seed=7"])
    save_config(config, tmp_path / "config.yaml")
    assert load_config(tmp_path / "config.yaml") == config
    assert config_from_dict(yaml.safe_load((tmp_path / "config.yaml").read_text())) == config


def test_parse_override_yaml_values():
    assert parse_override("a.b=[1, 2]") == ("a.b", [1, 2])
    assert parse_override("a.b=") == ("a.b", "")
    assert Config().train.betas == [0.9, 0.95]


@pytest.mark.parametrize("override, message", [
    ("train.log_every=0", r"'train.log_every' must be > 0, got 0"),
    ("train.accum_steps=0", r"'train.accum_steps' must be > 0"),
    ("train.save_every=-1", r"'train.save_every' must be > 0"),
    ("train.betas=[0.9]", r"'train.betas' must be two values in \[0, 1\), got \[0.9\]"),
    ("method.vicreg_weights=[25, 25]", r"'method.vicreg_weights' must be three values"),
    ("method.mask_ratio=1.0", r"'method.mask_ratio' must be in \[0, 1\)"),
    ("data.crop_scale=[0.9, 0.5]", r"'data.crop_scale' must be \[low, high\]"),
    ("eval.label_fraction=0", r"'eval.label_fraction' must be in \(0, 1\]"),
    ("finetune.randaug_m=30", r"'finetune.randaug_m' must be in \[0, 10\]"),
    ("eval.feature=max", r"'eval.feature' must be one of mean, temporal, cls, got 'max'"),
    ("model.pos_embed=sin", r"'model.pos_embed' must be one of separable, mae_2d, videomae_1d, joint, learned, got 'sin'"),
    ("model.init=kaiming", r"'model.init' must be one of xavier, normal, got 'kaiming'"),
    ("model.decoder_init=zeros", r"'model.decoder_init' must be one of xavier, normal, got 'zeros'"),
])
def test_out_of_range_values_name_the_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config("configs/demo/videomae.yaml", [override])


def choice_keys() -> dict[str, tuple[str, ...]]:
    """Every choice-valued key (a `Literal` field) and its allowed values."""
    keys = {}
    for section, section_type in typing.get_type_hints(Config).items():
        for name, hint in typing.get_type_hints(section_type).items():
            if typing.get_origin(hint) is typing.Literal:
                keys[f"{section}.{name}"] = typing.get_args(hint)
    return keys


def test_every_choice_key_is_checked_when_the_config_loads():
    keys = choice_keys()
    assert {"data.views", "method.masking", "method.pooling", "eval.feature", "train.precision"} <= set(keys)
    for key, choices in keys.items():
        with pytest.raises(ConfigError, match=f"config key '{key}' must be one of {', '.join(choices)}, got 'foo'"):
            load_config(None, [f"{key}=foo"])
        for choice in choices:
            # a view sampler needs a method that reads its views (auto resolves to videomae's clip)
            method = {"temporal_shift": "cmae_v", "frame_pair": "vic_mae"}.get(choice, "videomae") \
                if key == "data.views" else "videomae"
            config = resolve_method(load_config(None, [f"{key}={choice}", f"method.name={method}"]))
            expected = "clip" if (key, choice) == ("data.views", "auto") else choice
            assert getattr(getattr(config, key.split(".")[0]), key.split(".")[1]) == expected


@pytest.mark.parametrize("override, message", [
    ("method.masking=foo", "method.masking.*auto, tube, random"),  # the schema, as the config loads
    ("method.name=videomea", "unknown method.name 'videomea'"),  # the method registry, as the run starts
    ("data.views=frame_pair", "data.views=frame_pair does not give method 'videomae' its inputs"),
])
def test_cli_rejects_a_bad_choice_before_reading_data(tmp_path, override, message):
    started = time.time()
    result = subprocess.run(
        [sys.executable, "-m", "cmae.cli", "pretrain", "--config", "configs/demo/videomae.yaml", "--output",
         str(tmp_path / "run"), f"data.train={tmp_path / 'missing.txt'}", override],
        capture_output=True, text=True)
    assert result.returncode == 2 and time.time() - started < 15
    assert re.search(message, result.stderr), result.stderr
    assert "missing.txt" not in result.stderr and not (tmp_path / "run").exists()


def test_presets_inherit_from_a_base(tmp_path):
    (tmp_path / "root.yaml").write_text("train:\n  epochs: 7\n  batch_size: 64\n")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "child.yaml").write_text("base: ../root.yaml\ntrain:\n  epochs: 3\n")
    config = load_config(tmp_path / "sub" / "child.yaml", ["train.seed=5"])
    assert (config.train.epochs, config.train.batch_size, config.train.seed) == (3, 64, 5)
    (tmp_path / "root.yaml").write_text("base: sub/child.yaml\n")
    with pytest.raises(ConfigError, match="makes a cycle"):
        load_config(tmp_path / "sub" / "child.yaml")
    (tmp_path / "lone.yaml").write_text("base: nope.yaml\n")
    with pytest.raises(ConfigError, match="nope.yaml.*the base of"):
        load_config(tmp_path / "lone.yaml")
    ssv2 = load_config("configs/pretrain/cmae_v_convvit_b_ssv2.yaml")
    assert ssv2.model.name == "convvit_base" and ssv2.data.sampling_rate == 2 and ssv2.method.name == "cmae_v"


def test_data_views_follow_the_method():
    """The checks that need the method registry: cmae.methods.resolve_method, which runs call after loading."""
    def resolved(*overrides):
        return resolve_method(load_config(None, list(overrides)))

    assert resolved("method.name=cmae_v").data.views == "temporal_shift"
    assert resolved("method.name=mae_simsiam", "model.cls_token=true").data.views == "frame_pair"
    assert resolved("method.name=mae").data.views == "clip"
    assert load_config(None, ["method.name=mae"]).data.views == "auto"  # the config alone knows no method
    with pytest.raises(ConfigError, match="data.views=clip does not give method 'cmae_v' its inputs.*temporal_shift"):
        resolved("method.name=cmae_v", "data.views=clip")
    with pytest.raises(ConfigError, match="unknown method.name 'videomea'"):
        resolved("method.name=videomea")


def test_videomae_fine_tuning_presets_follow_the_official_scripts():
    """The official K400 ViT-B script: 384 videos a step (64 GPUs x 6), 2 samples each, lr 5e-4 x 384 / 256;
    cmae's batch counts samples and its lr follows them."""
    k400, ssv2 = (load_config(f"configs/finetune/videomae_vit_b_{name}.yaml") for name in ("k400", "ssv2"))
    for config in (k400, ssv2):
        ft = config.finetune
        assert config.finetune.batch_size // config.data.repeat == 384 and config.data.repeat == 2
        assert ft.base_lr * ft.batch_size / 256 == pytest.approx(5e-4 * 384 / 256)
        assert (ft.layer_decay, ft.reprob, ft.randaug_n, ft.randaug_m, config.eval.crops) == (0.75, 0.25, 4, 7, 3)
        assert config.model.name == "vit_base" and config.model.tubelet_size == 2  # loads official weights alone
    assert (k400.data.temporal_sampling, k400.data.hflip, k400.finetune.epochs, k400.eval.clips) == ("dense", True, 75, 5)
    assert (ssv2.data.temporal_sampling, ssv2.data.hflip, ssv2.finetune.epochs, ssv2.eval.clips) == ("segment", False, 30, 2)


def test_an_unknown_key_suggests_the_closest_known_one():
    with pytest.raises(ConfigError, match=r"unknown config key 'train.epoch' \(did you mean 'train.epochs'\?"):
        load_config(None, ["train.epoch=2"])


def test_a_packaged_preset_loads_by_name_from_any_folder(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert load_config("demo/videomae").method.name == load_config("configs/demo/videomae.yaml").method.name
    with pytest.raises(ConfigError, match="cmae presets lists them"):
        load_config("demo/nothing")
