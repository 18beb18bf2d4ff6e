"""Range rules: values that the config schema's types allow but no run can use (`train.log_every=0`,
a `train.betas` of one number), each with the words that say its range ("> 0"). `cmae.config`
checks them when a config loads; the generated configuration reference lists them.

A sibling of `cmae.config` on the bottom floor: it imports nothing of cmae but the errors.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

from cmae.errors import ConfigError


def _positive(v) -> bool:
    return v > 0


def _non_negative(v) -> bool:
    return v >= 0


def _fraction(v) -> bool:  # [0, 1)
    return 0 <= v < 1


def _unit(v) -> bool:  # [0, 1]
    return 0 <= v <= 1


def _pair(check) -> Any:
    return lambda v: len(v) == 2 and all(check(x) for x in v) and v[0] <= v[1]


# Values the schema's types allow but no run can use, rejected when the config is loaded
# rather than as a ZeroDivisionError (log_every=0) or a shape error hours later.
# Enumerated choices (data.views, method.pooling, ...) are `Literal` types, checked with the types.
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    **{key: (_positive, "> 0") for key in (
        "data.num_frames", "data.sampling_rate", "data.image_size", "model.tubelet_size", "model.decoder_dim",
        "model.pos_size", "model.decoder_heads", "method.proj_hidden", "method.proj_dim", "method.pred_hidden",
        "method.temperature", "method.feature_decoder_depth", "method.con_grad_ratio",
        "train.epochs", "train.batch_size", "train.accum_steps", "train.log_every", "train.save_every",
        "data.repeat", "data.prefetch_factor",
        "eval.clips", "eval.crops", "eval.batch_size", "eval.probe_epochs", "eval.probe_batch_size",
        "eval.knn_k", "eval.knn_temperature", "eval.attn_queries", "eval.attn_depth", "eval.attn_heads",
        "eval.attn_epochs", "eval.attn_batch_size", "eval.attn_lr", "finetune.accum_steps")},
    **{key: (_non_negative, ">= 0") for key in (
        "data.num_workers", "data.max_shift", "data.pixel_shift", "data.frame_gap", "model.patch_size",
        "model.decoder_depth", "method.feature_decoder_dim", "method.con_start_epoch", "train.base_lr", "train.lr",
        "train.min_lr", "train.warmup_epochs", "train.weight_decay", "train.clip_grad", "train.keep_every",
        "train.max_steps_per_epoch", "model.pos_frames", "train.save_every_steps", "train.keep_checkpoints",
        "train.monitor.every_epochs",
        "eval.probe_base_lr", "eval.probe_warmup_epochs", "eval.probe_weight_decay", "eval.attn_weight_decay",
        "finetune.base_lr", "finetune.min_lr", "finetune.warmup_epochs", "finetune.weight_decay",
        "finetune.mixup", "finetune.cutmix", "finetune.randaug_n", "finetune.clip_grad",
        "finetune.batch_size",  # 0: train.batch_size
        "finetune.eval_every", "train.warmup_lr", "finetune.warmup_lr",
        "finetune.epochs")},  # 0: test a fine-tuned file as it is
    "method.con_weight": (lambda v: v == "grad_ratio" or v >= 0, ">= 0 or grad_ratio"),
    **{key: (_fraction, "in [0, 1)") for key in (
        "method.con_balance_smoothing", "data.image_ratio", "model.drop_path", "method.mask_ratio",
        "method.decoder_mask_ratio", "finetune.drop_path",
        "finetune.label_smoothing", "finetune.reprob", "finetune.head_dropout", "eval.select_fraction",
        "finetune.attn_drop_rate")},
    **{key: (_unit, "in [0, 1]") for key in ("data.max_failed_fraction", "method.momentum", "finetune.layer_decay",
                                             "finetune.model_ema_decay")},
    **{key: (lambda v: v is None or v >= 0, ">= 0 or unset") for key in ("train.weight_decay_end",
                                                                         "finetune.weight_decay_end")},
    "data.test_crop_ratio": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "eval.label_fraction": (lambda v: 0 < v <= 1, "in (0, 1]"),
    "finetune.randaug_m": (lambda v: 0 <= v <= 10, "in [0, 10] (timm's RandAugment scale)"),
    "train.device": (lambda v: v in ("auto", "cpu", "cuda") or re.fullmatch(r"cuda:\d+", v) is not None,
                     "one of auto, cpu, cuda, cuda:N"),
    **{key: (lambda v: len(v) == 2 and all(_fraction(x) for x in v), "two values in [0, 1)")
       for key in ("train.betas", "finetune.betas")},
    "data.crop_scale": (_pair(lambda x: 0 < x <= 1), "[low, high] with 0 < low <= high <= 1"),
    "data.crop_ratio": (_pair(_positive), "[low, high] with 0 < low <= high"),
    "data.mean": (lambda v: len(v) == 3, "three values (R, G, B)"),
    "data.std": (lambda v: len(v) == 3 and all(_positive(x) for x in v), "three positive values (R, G, B)"),
    "method.vicreg_weights": (lambda v: len(v) == 3 and all(_non_negative(x) for x in v),
                              "three values >= 0 (invariance, variance, covariance)"),
}


def check_ranges(config: Any) -> None:
    """Raise ConfigError naming the first key of `RULES` whose value in `config` (a `cmae.config.Config`)
    is out of its range."""
    for key, (check, expected) in RULES.items():
        value = config
        for name in key.split("."):  # sections nest (train.monitor.every_epochs)
            value = getattr(value, name)
        if not check(value):
            raise ConfigError(f"config key '{key}' must be {expected}, got {value!r}")
