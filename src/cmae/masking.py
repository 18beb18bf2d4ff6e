"""Token masks made on the model's device, with exact visible counts.

A mask is returned as `Mask(visible, masked)`: `visible` holds the sorted indices of the
kept tokens `[B, K]` (what the encoder gathers) and `masked` is a boolean `[B, N]`, True
where a token is hidden (what the reconstruction loss averages over).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import torch

from cmae.errors import reject_choice


class Mask(NamedTuple):
    visible: torch.Tensor  # [B, K] long, sorted
    masked: torch.Tensor  # [B, N] bool


def num_masked(num_tokens: int, ratio: float) -> int:
    """Tokens to hide: floor(N * ratio), as VideoMAE counts them (MAE keeps int(N * (1 - ratio)),
    one more hidden token when N * ratio is fractional); rounding guards 0.7*10 = 6.999...."""
    if not 0.0 <= ratio < 1.0:
        raise ValueError(f"mask ratio must lie in [0, 1), got {ratio}")
    return math.floor(round(num_tokens * ratio, 6))


def _mask_from_noise(noise: torch.Tensor, keep: int) -> Mask:
    """Keep the `keep` lowest-noise tokens of each row (MAE's argsort trick)."""
    visible = noise.argsort(dim=1)[:, :keep].sort(dim=1).values
    masked = torch.ones_like(noise, dtype=torch.bool)
    masked.scatter_(1, visible, False)
    return Mask(visible, masked)


def random_mask(
    batch: int, num_tokens: int, ratio: float, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Mask:
    """Independent uniform mask per sample over all N tokens."""
    noise = torch.rand(batch, num_tokens, device=device, generator=generator)
    return _mask_from_noise(noise, num_tokens - num_masked(num_tokens, ratio))


def tube_mask(
    batch: int, grid: tuple[int, int, int], ratio: float, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Mask:
    """VideoMAE's tube mask: one spatial mask per sample, the same at every time step.

    grid = (T', H', W'); tokens are time-major, so token t*H'*W' + s is spatial place s
    at time t. Each time step keeps exactly H'*W' - floor(H'*W' * ratio) places.
    """
    t, h, w = grid
    spatial = _mask_from_noise(
        torch.rand(batch, h * w, device=device, generator=generator), h * w - num_masked(h * w, ratio)
    )
    offsets = torch.arange(t, device=device)[:, None] * (h * w)  # [T', 1]
    visible = (spatial.visible[:, None, :] + offsets).reshape(batch, -1)
    return Mask(visible, spatial.masked.repeat(1, t))


def decoder_tokens(mask: Mask, ratio: float, generator: torch.Generator | None = None) -> torch.Tensor:
    """VideoMAE V2's decoder masking: sorted indices `[B, N']` of the tokens the decoder runs on,
    every visible token plus a uniformly random share (1 - ratio) of each sample's masked ones.

    V2 draws that share with "running cell" masking; uniform draws are the simpler reading
    and cover every masked place equally often over a run.
    """
    masked_count = mask.masked.shape[1] - mask.visible.shape[1]
    keep = masked_count - num_masked(masked_count, ratio)
    # visible places get noise 2 (> any draw), so the `keep` lowest are masked places
    noise = torch.rand(mask.masked.shape, device=mask.masked.device, generator=generator)
    noise = noise.masked_fill(~mask.masked, 2.0)
    kept_masked = noise.argsort(dim=1)[:, :keep]
    return torch.cat([mask.visible, kept_masked], dim=1).sort(dim=1).values


def scored_tokens(mask: Mask, decoded: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The masked tokens the reconstruction loss scores, as (positions in the decoder's output,
    token indices), each `[B, M]` in token order: every masked token, or with `decoded` (see
    `decoder_tokens`) the decoded ones. Counts are the same in every row, so no host sync."""
    flags = mask.masked if decoded is None else mask.masked.gather(1, decoded)
    count = flags.shape[1] - mask.visible.shape[1]
    positions = flags.to(torch.uint8).sort(dim=1, descending=True, stable=True).indices[:, :count]
    return positions, positions if decoded is None else decoded.gather(1, positions)


def make_mask(
    kind: str, batch: int, grid: tuple[int, int, int], ratio: float, device: torch.device | str = "cpu",
    generator: torch.Generator | None = None,
) -> Mask:
    """Dispatch by name: "random" (MAE, per token) or "tube" (VideoMAE)."""
    if kind == "random":
        return random_mask(batch, grid[0] * grid[1] * grid[2], ratio, device, generator)
    if kind == "tube":
        return tube_mask(batch, grid, ratio, device, generator)
    reject_choice("masking", kind, ("random", "tube"))
