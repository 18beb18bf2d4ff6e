"""Projector / predictor heads (token pooling is in `cmae.models.pooling`)."""

from __future__ import annotations

import torch
from torch import nn

from cmae.distributed import gather_with_grad, rank_and_world


class GlobalBatchNorm1d(nn.BatchNorm1d):
    """BatchNorm1d whose training statistics are those of the global batch (every rank).

    What SyncBatchNorm does (MoCo v3 and CMAE's heads use it), but on any device and
    backend: PyTorch's SyncBatchNorm refuses CPU tensors. Each rank gathers the `[B, C]`
    features of all ranks with gradient, normalises the whole `[W*B, C]` batch (running
    statistics stay identical on every rank) and keeps its own rows. Heads are small, so
    the gather costs little. Without a process group it is plain BatchNorm1d, and its
    state dict is BatchNorm1d's.
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rank, world = rank_and_world()
        if not self.training or world == 1:
            return super().forward(x)
        return super().forward(gather_with_grad(x))[rank * len(x) : (rank + 1) * len(x)]


class MLPHead(nn.Sequential):
    """BYOL-style head: (Linear -> BatchNorm1d -> ReLU) for each hidden width, then Linear.

    `MLPHead(768, [1536], 256)` is CMAE's projector: Linear(768, 1536) -> BN -> ReLU ->
    Linear(1536, 256). Input `[B, in_dim]` -> `[B, out_dim]`. `global_bn` takes the
    BatchNorm statistics over the global batch under torchrun (`GlobalBatchNorm1d`);
    false keeps them per rank, as plain DDP would.
    """

    def __init__(self, in_dim: int, hidden: list[int], out_dim: int, global_bn: bool = True):
        norm = GlobalBatchNorm1d if global_bn else nn.BatchNorm1d
        layers: list[nn.Module] = []
        for width in hidden:
            layers += [nn.Linear(in_dim, width), norm(width), nn.ReLU(inplace=True)]
            in_dim = width
        layers.append(nn.Linear(in_dim, out_dim))
        super().__init__(*layers)
