"""Projector / predictor heads and token pooling."""

from __future__ import annotations

import torch
from torch import nn


class MLPHead(nn.Sequential):
    """BYOL-style head: (Linear -> BatchNorm1d -> ReLU) for each hidden width, then Linear.

    `MLPHead(768, [1536], 256)` is CMAE's projector: Linear(768, 1536) -> BN -> ReLU ->
    Linear(1536, 256). Input `[B, in_dim]` -> `[B, out_dim]`.
    """

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int):
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), nn.BatchNorm1d(width), nn.ReLU(inplace=True)]
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)


def mean_pool(tokens: torch.Tensor) -> torch.Tensor:
    """`[B, N, D]` -> `[B, D]`."""
    return tokens.mean(dim=1)
