"""Per-iteration schedules and the AdamW parameter groups of MAE-style training."""

from __future__ import annotations

import math

from torch import nn


def cosine_with_warmup(step: float, total_steps: float, warmup_steps: float, peak: float, floor: float = 0.0,
                       start: float = 0.0) -> float:
    """Linear warmup from `start` to `peak` over `warmup_steps`, then half-cosine down to `floor`."""
    if step < warmup_steps:
        return start + (peak - start) * step / warmup_steps
    progress = (step - warmup_steps) / max(1.0, total_steps - warmup_steps)
    return floor + (peak - floor) * 0.5 * (1.0 + math.cos(math.pi * min(1.0, progress)))


def set_group_rates(groups: list[dict], lr: float, weight_decay: float | None = None) -> None:
    """This step's lr on every optimiser group (times its layer-decay `lr_scale`) and, unless None, this
    step's weight decay on the groups that decay (those that started with weight decay > 0)."""
    for group in groups:
        group["lr"] = lr * group.get("lr_scale", 1.0)
        if weight_decay is not None and group.setdefault("decays", group["weight_decay"] > 0):
            group["weight_decay"] = weight_decay


def no_weight_decay(name: str, param: nn.Parameter) -> bool:
    """Norm weights, biases, tokens and position embeddings are not decayed (MAE, timm)."""
    return param.ndim <= 1 or name.endswith(".bias") or "token" in name or "pos_embed" in name


def param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two AdamW groups: decayed weights and the rest; frozen parameters are left out."""
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            (no_decay if no_weight_decay(name, param) else decay).append(param)
    return [
        {"params": decay, "weight_decay": weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
