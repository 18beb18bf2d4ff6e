"""Loss functions, each a plain function of tensors so it can be tested by hand."""

from __future__ import annotations

import torch


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked tokens only (MAE eq., CMAE-V eq. 7).

    pred, target: `[B, N, P]`; masked: `[B, N]` bool. Each token's error is the mean over
    its P values; the loss is the mean over all masked tokens of the batch, so visible
    tokens' predictions get no gradient.
    """
    per_token = (pred - target).pow(2).mean(dim=-1)
    weights = masked.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)
