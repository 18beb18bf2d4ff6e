"""Fixed sine-cosine position embeddings: cmae's separable space x time table, MAE's 2D
table and VideoMAE's 1D table.

The tables are computed for whatever token grid the input has, so one encoder takes
images (a grid of one time step), short clips and long clips, at any resolution.
"""

from __future__ import annotations

import torch


def sincos_1d(dim: int, positions: torch.Tensor) -> torch.Tensor:
    """Transformer sin-cos code of `positions` ([N], float) -> [N, dim] (sin half, cos half)."""
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000**omega
    angles = positions.double()[:, None] * omega[None, :]
    return torch.cat([angles.sin(), angles.cos()], dim=1).float()


def sincos_2d(dim: int, height: int, width: int) -> torch.Tensor:
    """MAE's 2D table: half the channels code the row, half the column -> [height*width, dim]."""
    if dim % 4:
        raise ValueError(f"2D sin-cos embedding needs a dimension divisible by 4, got {dim}")
    rows, cols = torch.meshgrid(torch.arange(height), torch.arange(width), indexing="ij")
    # MAE's order: the first half encodes the column (w), the second the row (h).
    return torch.cat([sincos_1d(dim // 2, cols.flatten()), sincos_1d(dim // 2, rows.flatten())], dim=1)


def split_space_time(dim: int) -> tuple[int, int]:
    """Channels for (space, time): three quarters to space (a multiple of 4), the rest to time."""
    space = (dim * 3 // 4) // 4 * 4
    time = dim - space
    if time % 2 or time == 0:
        raise ValueError(f"embed dim {dim} cannot be split into space/time sin-cos tables")
    return space, time


def sincos_3d(dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """Separable space-time table for a (T, H, W) token grid -> [T*H*W, dim], time-major.

    Channels are split (see `split_space_time`): a 2D table over (H, W) and a 1D table
    over T are concatenated, so every frame shares the spatial code and every position
    in a frame shares the temporal code. An image (T = 1) gets the constant code of t = 0.
    """
    t, h, w = grid
    space_dim, time_dim = split_space_time(dim)
    space = sincos_2d(space_dim, h, w)  # [H*W, Ds]
    time = sincos_1d(time_dim, torch.arange(t))  # [T, Dt]
    return torch.cat(
        [space[None].expand(t, -1, -1), time[:, None].expand(-1, h * w, -1)], dim=2
    ).reshape(t * h * w, dim)


def sincos_joint(dim: int, num_tokens: int) -> torch.Tensor:
    """VideoMAE's table: one 1D sin-cos code over the flattened token index -> [N, dim].

    Channel 2i holds sin(n / 10000^(2i/dim)), channel 2i+1 the matching cos (interleaved, as
    VideoMAE's and Hugging Face's `get_sinusoid_encoding_table`), so loaded VideoMAE weights see
    the positions they were trained with. Token n = t*H*W + h*W + w: the code does not separate
    space from time, so one encoder's table changes with the grid's width and height.
    """
    if dim % 2:
        raise ValueError(f"sin-cos embedding needs an even dimension, got {dim}")
    exponent = 2 * (torch.arange(dim, dtype=torch.float64) // 2) / dim
    angles = torch.arange(num_tokens, dtype=torch.float64)[:, None] / 10000**exponent[None, :]
    table = torch.empty_like(angles)
    table[:, 0::2], table[:, 1::2] = angles[:, 0::2].sin(), angles[:, 1::2].cos()
    return table.float()


# `joint` is the earlier name of `videomae_1d`, still read from old configs and checkpoints.
POS_EMBEDS = ("separable", "mae_2d", "videomae_1d", "joint")


def position_table(kind: str, dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    """The fixed table of `kind` for a (T', H', W') grid -> [T'*H'*W', dim], time-major.

    separable: space x time (cmae's default, `sincos_3d`); mae_2d: MAE's 2D table over all
    channels, the same at every time step (MAE, timm's MAE and ViC-MAE weights); videomae_1d:
    VideoMAE's 1D code over t*h*w (`sincos_joint`; official VideoMAE and Hugging Face weights).
    """
    t, h, w = grid
    if kind == "separable":
        return sincos_3d(dim, grid)
    if kind == "mae_2d":
        return sincos_2d(dim, h, w).repeat(t, 1)
    if kind in ("videomae_1d", "joint"):
        return sincos_joint(dim, t * h * w)
    raise ValueError(f"model.pos_embed must be one of {', '.join(POS_EMBEDS)}, got {kind!r}")
