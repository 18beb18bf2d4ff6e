"""Loss functions, each a plain function of tensors so it can be tested by hand."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmae.engine.distributed import gather_no_grad, rank_and_world


def reconstruction_loss(pred: torch.Tensor, target: torch.Tensor, masked: torch.Tensor) -> torch.Tensor:
    """Mean squared error over the masked tokens only (MAE eq., CMAE-V eq. 7).

    pred, target: `[B, N, P]`; masked: `[B, N]` bool. Each token's error is the mean over
    its P values; the loss is the mean over all masked tokens of the batch, so visible
    tokens' predictions get no gradient.
    """
    per_token = (pred - target).pow(2).mean(dim=-1)
    weights = masked.to(per_token.dtype)
    return (per_token * weights).sum() / weights.sum().clamp(min=1.0)


def info_nce(
    query: torch.Tensor, keys: torch.Tensor, temperature: float, labels: torch.Tensor | None = None
) -> torch.Tensor:
    """InfoNCE (CMAE-V eq. 5): cross-entropy of cosine similarities / temperature.

    query: `[B, D]` this rank's predictions; keys: `[M, D]` every candidate (the global
    batch, gathered across ranks); labels: `[B]` index of each query's positive in keys
    (default `arange(B)`, i.e. keys is this rank's own batch). Mean over the B queries.
    """
    query = F.normalize(query.float(), dim=-1)
    keys = F.normalize(keys.float(), dim=-1)
    logits = query @ keys.T / temperature
    if labels is None:
        labels = torch.arange(query.shape[0], device=query.device)
    return F.cross_entropy(logits, labels)


def global_info_nce(query: torch.Tensor, keys: torch.Tensor, temperature: float) -> torch.Tensor:
    """InfoNCE whose negatives are every other sample of the **global** batch.

    The target keys `[B, D]` (no gradient) are gathered from all ranks; this rank's
    positives sit at `arange(B) + B * rank`. Averaged over ranks by DDP's gradient mean,
    the loss equals that of one process holding the whole batch.
    """
    rank, _ = rank_and_world()
    all_keys = gather_no_grad(keys.detach())
    labels = torch.arange(query.shape[0], device=query.device) + query.shape[0] * rank
    return info_nce(query, all_keys, temperature, labels)
