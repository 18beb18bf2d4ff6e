"""Turn `--checkpoint CKPT|random [--config FILE] [key=value ...]` into a config and a method.

One path, read top to bottom, with each step taken once:
    file -> (format, weights, stored config)     `import_weights`
         -> the config: stored (or the file's own description, or the preset), preset and overrides on top,
            validated                             `resolve_config`
         -> the method                            `build_method`
         -> its weights                           `load_weights`
`cmae.load_encoder` and `cmae.load_method` are this path, as are the commands that take a checkpoint.
"""

from __future__ import annotations

import warnings
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
from cmae.config_schema import apply_values
from cmae.interop import FORMATS, Imported, WeightsError, import_weights, load_imported
from cmae.methods import Method, build_method
from cmae.models.vit import VIT_PRESETS


def load_pretrained(
    checkpoint: str | Path, config_path: str | Path | None = None, overrides: Sequence[str] = ()
) -> tuple[Config, torch.nn.Module]:
    config, method, _ = load_with_head(checkpoint, config_path, overrides)
    return config, method


def load_with_head(
    checkpoint: str | Path, config_path: str | Path | None = None, overrides: Sequence[str] = (),
    report: bool = True,
) -> tuple[Config, Method, dict[str, torch.Tensor]]:
    """The pre-trained method (encoder, decoder, heads) of a checkpoint, on the CPU, in eval mode.

    `checkpoint="random"` builds a randomly initialised method of the `config_path` preset
    (seeded by train.seed): the floor every evaluation is compared with. A cmae checkpoint's
    stored config is the base; `config_path` (e.g. an evaluation preset) and `overrides` are
    applied on top, so `data.val=...` or `eval.clips=5` can change while the model stays the
    one that was trained. Any other file (MAE / timm, VideoMAE, Hugging Face; `cmae.interop`)
    has no cmae config: a folder that cmae exported (or a Hugging Face one) describes its model,
    else `config_path` gives the architecture; the file gives its weights and position table, and
    the loaded and dropped keys are printed (`report`). The third value is a fine-tuned foreign
    file's classification head (`fc_norm.*`, `head.*`; empty otherwise).
    """
    if str(checkpoint) == "random":
        if config_path is None:
            raise ConfigError("--checkpoint random needs --config (the pre-training preset to initialise)")
        config = load_config(config_path, overrides)
        torch.manual_seed(config.train.seed)
        return config, build_method(config).eval(), {}
    imported = import_weights(checkpoint)
    config = resolve_config(imported, config_path, overrides)
    torch.manual_seed(config.train.seed)
    method = build_method(config)
    load_weights(method, imported, report)
    return config, method.eval(), imported.head


def resolve_config(imported: Imported, config_path: str | Path | None, overrides: Sequence[str]) -> Config:
    """One Config: the file's (stored, or described by its folder), the preset's keys and the overrides
    laid over it, checked once."""
    if imported.format == "cmae" and any(key.startswith("classifier.") for key in imported.weights):
        raise ConfigError(f"{imported.path} is a cmae fine-tuning checkpoint, not a pre-trained one: to test it "
                          f"again, run the command that trained it with --resume {imported.path} (eval.* and "
                          "data.val may change)")
    stored = imported.config if imported.format == "cmae" else described_config(imported.folder_config)
    if stored is None and config_path is None:
        raise ConfigError(f"{imported.path} is a {FORMATS[imported.format]} file without a cmae config: "
                          "give --config (a preset whose model.* matches the file)")
    config = config_from_dict(stored or {})
    trained = dict(vars(config.model))  # the model the file was trained as (a cmae checkpoint)
    for preset, values in read_preset(config_path) if config_path is not None else []:
        try:
            apply_values(config, values, "")
        except ConfigError as error:
            raise ConfigError(f"{preset}: {error}") from None
    if imported.format == "cmae" and config_path is not None:
        keep_trained_model(config, trained, config_path)
    for text in overrides:
        set_key(config, *parse_override(text))
    if imported.format == "cmae" and config.method.name != stored["method"]["name"]:
        raise ConfigError(f"{imported.path} was trained with method.name={stored['method']['name']}, and "
                          f"{config_path or 'an override'} sets {config.method.name}: give a preset of the same "
                          "method (or an evaluation preset, which leaves method.* alone)")
    adopt_architecture(config, imported)
    return validate(config)


# model keys that only initialise or regularise training: a preset may set them over a trained model
TRAINING_ONLY_MODEL_KEYS = ("drop_path", "init", "decoder_init")


def keep_trained_model(config: Config, trained: dict, preset: str | Path) -> None:
    """A preset laid over a cmae checkpoint changes the data, eval.* and finetune.*, not the model it was
    trained as: model.* keys the preset changed (a position table is computed, not stored, so the weights
    would not notice) go back to the checkpoint's, with a warning. A key=value override still sets them."""
    kept = []
    for key, value in trained.items():
        if key not in TRAINING_ONLY_MODEL_KEYS and getattr(config.model, key) != value:
            kept.append(f"model.{key}={value!r} (the preset: {getattr(config.model, key)!r})")
            setattr(config.model, key, value)
    if kept:
        warnings.warn(f"{preset} is laid over a trained model: kept the checkpoint's {', '.join(kept)}", stacklevel=3)


def described_config(folder_config: dict | None) -> dict | None:
    """The config sections a folder's config.json fixes: a cmae export's own entry, or a Hugging Face
    VideoMAE's sizes mapped onto the cmae preset of that width and depth."""
    if not folder_config:
        return None
    if "cmae" in folder_config:
        return folder_config["cmae"]
    if folder_config.get("model_type") != "videomae":
        return None
    size = (folder_config["hidden_size"], folder_config["num_hidden_layers"], folder_config["num_attention_heads"])
    name = next((n for n, s in VIT_PRESETS.items() if (s.embed_dim, s.depth, s.num_heads) == size), None)
    if name is None:
        raise WeightsError(f"no cmae encoder is {size[0]} wide with {size[1]} blocks and {size[2]} heads "
                           "(cmae models lists them)")
    return {"model": {"name": name, "patch_size": folder_config["patch_size"],
                      "tubelet_size": folder_config["tubelet_size"], "pos_embed": "videomae_1d"},
            "data": {"image_size": folder_config["image_size"], "num_frames": folder_config["num_frames"]}}


def load_weights(method: Method, imported: Imported, report: bool = True) -> None:
    """A cmae checkpoint's state dict, strictly (a mismatch is one line, not every key); any other
    file through `load_imported`, which says what it loaded."""
    if imported.format != "cmae":
        text = load_imported(method, imported)
        if report:
            print(text, flush=True)
        return
    own = method.state_dict()
    missing, unexpected = sorted(set(own) - set(imported.weights)), sorted(set(imported.weights) - set(own))
    shapes = [k for k in set(own) & set(imported.weights) if own[k].shape != imported.weights[k].shape]
    if missing or unexpected or shapes:
        raise ConfigError(f"{imported.path} does not fit the configured model ({len(missing)} tensors missing, e.g. "
                          f"{missing[:2]}; {len(unexpected)} unexpected, e.g. {unexpected[:2]}; {len(shapes)} of "
                          "another shape): the preset or overrides change model.* or method.*; leave them to the "
                          "checkpoint")
    method.load_state_dict(imported.weights)


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
