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
from cmae.engine.checkpoint import load_checkpoint
from cmae.methods import build_method


def load_pretrained(
    checkpoint: str | Path, config_path: str | Path | None = None, overrides: Sequence[str] = ()
) -> tuple[Config, torch.nn.Module]:
    """The pre-trained method (encoder, decoder, heads) of a checkpoint, on the CPU, in eval mode.

    `checkpoint="random"` builds a randomly initialised method of the `config_path` preset
    (seeded by train.seed): the floor every evaluation is compared with. Otherwise the
    config stored in the checkpoint is the base; `config_path` (e.g. an evaluation preset)
    and `overrides` are applied on top, so `data.val=...` or `eval.clips=5` can change
    while the model stays the one that was trained.
    """
    if str(checkpoint) == "random":
        if config_path is None:
            raise ConfigError("--checkpoint random needs --config (the pre-training preset to initialise)")
        config = load_config(config_path, overrides)
        torch.manual_seed(config.train.seed)
        method = build_method(config)
    else:
        state = load_checkpoint(checkpoint)
        config = config_from_dict(state["config"])
        if config_path is not None:
            config = _overlay(config, load_config(config_path), Path(config_path))
        for text in overrides:
            set_key(config, *parse_override(text))
        validate(config)
        method = build_method(config)
        method.load_state_dict(state["model"])
    return config, method.eval()


def _overlay(base: Config, preset: Config, path: Path) -> Config:
    """Apply the keys that an evaluation preset (or one of its bases) sets."""
    for _, values in read_preset(path):
        for section, entries in values.items():
            for key in entries or {}:
                set_key(base, f"{section}.{key}", getattr(getattr(preset, section), key))
    return base
