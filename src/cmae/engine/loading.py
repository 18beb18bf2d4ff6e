"""Turn `--checkpoint CKPT|random [--config FILE] [key=value ...]` into a config and a method."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch

from cmae.config import (
    Config,
    ConfigError,
    config_from_dict,
    load_config,
    parse_override,
    read_preset,
    set_key,
    validate,
)
from cmae.interop import FORMATS, Imported, import_weights, load_imported
from cmae.methods import build_method


def load_pretrained(
    checkpoint: str | Path, config_path: str | Path | None = None, overrides: Sequence[str] = ()
) -> tuple[Config, torch.nn.Module]:
    config, method, _ = load_with_head(checkpoint, config_path, overrides)
    return config, method


def load_with_head(
    checkpoint: str | Path, config_path: str | Path | None = None, overrides: Sequence[str] = ()
) -> tuple[Config, torch.nn.Module, dict[str, torch.Tensor]]:
    """The pre-trained method (encoder, decoder, heads) of a checkpoint, on the CPU, in eval mode.

    `checkpoint="random"` builds a randomly initialised method of the `config_path` preset
    (seeded by train.seed): the floor every evaluation is compared with. A cmae checkpoint's
    stored config is the base; `config_path` (e.g. an evaluation preset) and `overrides` are
    applied on top, so `data.val=...` or `eval.clips=5` can change while the model stays the
    one that was trained. Any other file (MAE / timm, VideoMAE, Hugging Face; `cmae.interop`)
    has no cmae config: `config_path` and `overrides` give the architecture, the file its
    weights and its position table, and the loaded and dropped keys are printed. The third value
    is a fine-tuned foreign file's classification head (`fc_norm.*`, `head.*`; empty otherwise).
    """
    if str(checkpoint) == "random":
        if config_path is None:
            raise ConfigError("--checkpoint random needs --config (the pre-training preset to initialise)")
        config = load_config(config_path, overrides)
        torch.manual_seed(config.train.seed)
        return config, build_method(config).eval(), {}
    imported = import_weights(checkpoint)
    if imported.format == "cmae" and any(key.startswith("classifier.") for key in imported.weights):
        raise ConfigError(f"{checkpoint} is a cmae fine-tuning checkpoint, not a pre-trained one: to test it again, "
                          f"run the command that trained it with --resume {checkpoint} (eval.* and data.val may "
                          "change)")
    if imported.format == "cmae":
        config = config_from_dict(imported.config)
        if config_path is not None:
            config = _overlay(config, load_config(config_path), Path(config_path))
        for text in overrides:
            set_key(config, *parse_override(text))
        validate(config)
        method = build_method(config)
        method.load_state_dict(imported.weights)
        return config, method.eval(), {}
    if config_path is None:
        raise ConfigError(f"{checkpoint} is a {FORMATS[imported.format]} file without a cmae config: "
                          "give --config (a preset whose model.* matches the file)")
    config = load_config(config_path, overrides)
    adopt_architecture(config, imported)
    torch.manual_seed(config.train.seed)
    method = build_method(config)
    print(load_imported(method, imported), flush=True)
    return config, method.eval(), imported.head


def adopt_architecture(config: Config, imported: Imported) -> None:
    """What a foreign file fixes about the model: its position table (a learned one's size) and class token."""
    if imported.format != "cmae":
        config.model.pos_embed = imported.pos_embed
        config.model.cls_token = imported.cls_token
        if imported.pos_size is not None:
            config.model.pos_size = imported.pos_size
        config.model.pos_frames = imported.pos_frames or 0


def initialize_from(path: str | Path, config: Config) -> Imported:
    """`--init FILE`: read the weights, set the architecture they fix in `config`; load them with
    `load_imported` once the method is built."""
    imported = import_weights(path)
    adopt_architecture(config, imported)
    return imported


def _overlay(base: Config, preset: Config, path: Path) -> Config:
    """Apply the keys that an evaluation preset (or one of its bases) sets."""
    for _, values in read_preset(path):
        for section, entries in values.items():
            for key in entries or {}:
                set_key(base, f"{section}.{key}", getattr(getattr(preset, section), key))
    return base
