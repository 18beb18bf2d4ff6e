"""Token pooling, all of it: `[B, N, D]` encoder tokens -> one feature per sample.

mean_pool (CMAE-V's global features), Pooling (ViC-MAE's Omega: mean, max, GeM) and
pool_tokens (evaluation and fine-tuning readouts: mean, temporal, cls).
"""

from __future__ import annotations

import torch
from torch import nn

from cmae.config import ConfigError


def mean_pool(tokens: torch.Tensor) -> torch.Tensor:
    """`[B, N, D]` -> `[B, D]`."""
    return tokens.mean(dim=1)


class Pooling(nn.Module):
    """ViC-MAE's Omega over tokens `[B, N, D]` -> `[B, D]`: mean, max or GeM.

    GeM (generalised mean, Radenovic et al.) = (mean(clamp(x, eps)^p))^(1/p) with a
    learnable p (initialised at 3); like the original it clamps to positive values, so
    p = 1 equals the mean for positive tokens.
    """

    def __init__(self, kind: str = "mean", p: float = 3.0, eps: float = 1e-6):
        super().__init__()
        self.kind = kind
        self.eps = eps
        self.p = nn.Parameter(torch.tensor(float(p))) if kind == "gem" else None

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        if self.kind == "mean":
            return tokens.mean(dim=1)
        if self.kind == "max":
            return tokens.max(dim=1).values
        return tokens.clamp(min=self.eps).pow(self.p).mean(dim=1).pow(1.0 / self.p)


def pool_tokens(encoder: nn.Module, tokens: torch.Tensor, kind: str, time_steps: int = 1) -> torch.Tensor:
    """Encoder output `[B, (1+)N, D]` -> `[B, D]`: mean of patch tokens, or the class token;
    or `[B, T' x D]` for kind `temporal`: the spatial mean of each of the `time_steps` (T')
    token time steps, concatenated in time order. Mean pooling over time discards the order
    of events, which is all that tells e.g. "move left" from "move right"; a linear layer on
    the temporal feature can compare time steps."""
    prefix = encoder.num_prefix_tokens
    if kind == "mean":
        return tokens[:, prefix:].mean(dim=1)
    if kind == "temporal":
        patches = tokens[:, prefix:]
        return patches.reshape(len(tokens), time_steps, -1, patches.shape[-1]).mean(dim=2).flatten(1)
    if prefix == 0:  # cls
        raise ConfigError("eval.feature=cls but the encoder has no class token (model.cls_token=false)")
    return tokens[:, 0]
