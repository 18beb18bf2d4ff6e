"""Clips <-> patch vectors, and MAE / VideoMAE normalised-pixel targets.

A clip `[B, C, T, H, W]` is cut into tubelets of (t, p, p) in the same time-major order
as `PatchEmbed`'s tokens; each tubelet is flattened as (t, p, p, C).
"""

from __future__ import annotations

import torch

from cmae.config import reject_choice


def fill_tubelet(clip: torch.Tensor, tubelet: int) -> torch.Tensor:
    """Repeat a clip shorter than the tubelet (an image is a one-frame clip) along time to fill it."""
    frames = clip.shape[2]
    if frames >= tubelet:
        return clip
    return clip.repeat_interleave(-(-tubelet // frames), dim=2)[:, :, :tubelet]


def token_grid(shape: torch.Size | tuple[int, ...], patch: int, tubelet: int) -> tuple[int, int, int]:
    """Token grid (T', H', W') of an input shape `[B, C, T, H, W]`, a clip shorter than the
    tubelet counting as one tubelet (see `fill_tubelet`)."""
    t, h, w = shape[-3:]
    if h % patch or w % patch:
        raise ValueError(f"input {h}x{w} is not divisible by the patch size (token stride) {patch}")
    t = max(t, tubelet)
    if t % tubelet:
        raise ValueError(f"{t} frames are not divisible by the tubelet size {tubelet}")
    return t // tubelet, h // patch, w // patch


def patchify(clip: torch.Tensor, patch: int, tubelet: int = 1) -> torch.Tensor:
    """`[B, C, T, H, W]` -> `[B, N, t*p*p*C]`, N = T/t * H/p * W/p."""
    clip = fill_tubelet(clip, tubelet)
    b, c, t, h, w = clip.shape
    x = clip.reshape(b, c, t // tubelet, tubelet, h // patch, patch, w // patch, patch)
    x = x.permute(0, 2, 4, 6, 3, 5, 7, 1)  # b, T', H', W', t, p, p, c
    return x.reshape(b, (t // tubelet) * (h // patch) * (w // patch), tubelet * patch * patch * c)


def unpatchify(
    patches: torch.Tensor, grid: tuple[int, int, int], patch: int, tubelet: int = 1, channels: int = 3
) -> torch.Tensor:
    """Inverse of `patchify`: `[B, N, t*p*p*C]` with token grid (T', H', W') -> `[B, C, T'*t, H'*p, W'*p]`."""
    gt, gh, gw = grid
    b = patches.shape[0]
    x = patches.reshape(b, gt, gh, gw, tubelet, patch, patch, channels)
    x = x.permute(0, 7, 1, 4, 2, 5, 3, 6)  # b, c, T', t, H', p, W', p
    return x.reshape(b, channels, gt * tubelet, gh * patch, gw * patch)


def patch_statistics(
    patches: torch.Tensor, mode: str, channels: int = 3, eps: float = 1e-6
) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, scale), each `[B, N, S]`, of patch vectors `[B, N, P]`; target = (x - mean) / scale.

    mode "patch" (MAE): S = 1, the mean and sqrt(unbiased var + eps) of the whole patch
    vector, as MAE's `target.var(dim=-1)`. mode "channel" (VideoMAE): S = C, the mean and
    unbiased std + eps of each colour channel over the tubelet's pixels.
    """
    if mode == "patch":
        return patches.mean(dim=-1, keepdim=True), (patches.var(dim=-1, keepdim=True) + eps).sqrt()
    if mode == "channel":
        b, n, p = patches.shape
        x = patches.reshape(b, n, p // channels, channels)
        return x.mean(dim=-2), x.std(dim=-2) + eps
    reject_choice("normalised-pixel mode", mode, ("patch", "channel", "none"))


def normalized_pixel_targets(
    patches: torch.Tensor, mode: str = "patch", channels: int = 3, eps: float = 1e-6
) -> torch.Tensor:
    """Per-patch normalised targets `[B, N, P]` from patch vectors (statistics: `patch_statistics`);
    mode "none" gives the raw pixels."""
    if mode == "none":
        return patches
    mean, scale = patch_statistics(patches, mode, channels, eps)  # [B, N, S]
    b, n, p = patches.shape  # S = 1 or C (last in the vector): broadcast over a patch's pixels
    x = patches.reshape(b, n, -1, mean.shape[-1])
    return ((x - mean[:, :, None]) / scale[:, :, None]).reshape(b, n, p)
