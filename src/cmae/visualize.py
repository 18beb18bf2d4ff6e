"""Pictures of what a model does: masked-autoencoder reconstructions and loss curves.

`visualize` draws one clip as a grid (rows: original, masked input, reconstruction,
reconstruction pasted into the visible patches; columns: frames). `plot_runs` draws the
loss curves of run folders. `denormalize_patches` is the one subtle step: with
normalised-pixel targets (`method.norm_pix` = patch or channel) the decoder predicts each
patch *normalised by its own mean and spread*, so the prediction has to be scaled back
before it can be shown. Scaling a masked patch back with its true statistics (as MAE's
demo notebook does) leaks its mean colour and contrast into the picture, which makes the
reconstruction look far better than what the model predicted; by default the statistics
of a masked patch are estimated from its nearest visible neighbours instead.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from matplotlib.figure import Figure

from cmae.config import ConfigError, DataConfig
from cmae.data.dataset import open_source
from cmae.data.views import clip_indices, evenly_spaced_starts, spatial_transform, to_clip
from cmae.engine.loading import load_pretrained
from cmae.engine.runtime import read_metrics
from cmae.models.patchify import patch_statistics, patchify, unpatchify

DEFAULT_PLOT_KEYS = ("loss", "loss_rec", "loss_con", "monitor_top1")  # monitor_top1: train.monitor

# --------------------------------------------------------------------------------------
# De-normalising predicted patches
# --------------------------------------------------------------------------------------


def neighbour_weights(masked: torch.Tensor, grid: tuple[int, int, int], k: int = 4) -> torch.Tensor:
    """Averaging weights `[B, N, N]`: row n spreads 1 over the k visible patches nearest to n.

    "Nearest" is the Euclidean distance on the patch grid within n's own time step (ties
    broken by token order). A time step without visible patches (possible with random
    masking) falls back to all visible patches of the sample. Only visible columns ever get
    weight, so no masked patch's pixels can enter an estimate.
    """
    b, n = masked.shape
    gt, gh, gw = grid
    if gt * gh * gw != n:
        raise ValueError(f"grid {grid} has {gt * gh * gw} patches but the mask has {n}")
    visible = ~masked
    if not visible.any(dim=1).all():
        raise ValueError("a sample has no visible patch to estimate the masked patches' statistics from")
    t, h, w = torch.meshgrid(torch.arange(gt), torch.arange(gh), torch.arange(gw), indexing="ij")
    t, h, w = t.flatten(), h.flatten(), w.flatten()
    distance = ((h[:, None] - h[None, :]) ** 2 + (w[:, None] - w[None, :]) ** 2).float()
    distance = distance.masked_fill(t[:, None] != t[None, :], float("inf")).to(masked.device)  # [N, N]
    distance = distance.expand(b, n, n).masked_fill(masked[:, None, :], float("inf"))  # only visible columns
    nearest_distance, nearest = distance.sort(dim=-1, stable=True)
    nearest_distance, nearest = nearest_distance[..., :k], nearest[..., :k]
    weights = torch.zeros(b, n, n, device=masked.device)
    weights.scatter_(-1, nearest, nearest_distance.isfinite().float())
    no_neighbour = weights.sum(dim=-1, keepdim=True) == 0  # [B, N, 1]: empty time step
    weights = torch.where(no_neighbour, visible[:, None, :].float(), weights)
    return weights / weights.sum(dim=-1, keepdim=True)


def denormalize_patches(
    pred: torch.Tensor,
    clip_patches: torch.Tensor,
    masked: torch.Tensor,
    mode: str,
    grid: tuple[int, int, int],
    k: int = 4,
    true_stats: bool = False,
    channels: int = 3,
) -> torch.Tensor:
    """Predicted normalised patches -> patches in the clip's (data-normalised) pixel space.

    pred, clip_patches: `[B, N, P]` (P = t*p*p*C in (t, p, p, C) order); masked: `[B, N]`
    bool, True where hidden; grid: token grid (T', H', W'). mode is `method.norm_pix`:
    "none" returns `pred` as it is. Visible patches are scaled back with their own
    statistics. Masked patches use the average (mean, scale) of their k nearest visible
    patches in the same time step (see `neighbour_weights`), or, with `true_stats`, their
    own true statistics, which leaks the hidden patch's mean and variance into the result.
    """
    if mode == "none":
        return pred
    b, n, p = pred.shape
    mean, scale = patch_statistics(clip_patches.float(), mode, channels)  # [B, N, S]
    if not true_stats:
        weights = neighbour_weights(masked, grid, k)
        hidden = masked[..., None]
        mean = torch.where(hidden, weights @ mean, mean)
        scale = torch.where(hidden, weights @ scale, scale)
    # [B, N, S] broadcasts over the pixels of a patch: S = 1 (patch) or C (channel, last in the vector)
    values = pred.float().reshape(b, n, -1, mean.shape[-1])
    return (values * scale[:, :, None] + mean[:, :, None]).reshape(b, n, p)


# --------------------------------------------------------------------------------------
# Reconstruction figure
# --------------------------------------------------------------------------------------


def read_clip(input_path: str | Path, data: DataConfig) -> tuple[torch.Tensor, list[int]]:
    """The centred clip of `data.num_frames` frames at `data.sampling_rate` of a video (an image
    is a one-frame video, repeated), eval transform -> (`[1, C, T, H, W]`, source frame indices)."""
    source = open_source(Path(input_path), data.decoder)
    try:
        start = evenly_spaced_starts(source.num_frames, data.num_frames, data.sampling_rate, 1)[0]
        indices = clip_indices(source.num_frames, data.num_frames, data.sampling_rate, start=start)
        frames = source.get_frames(indices)
    finally:
        source.close()
    return to_clip(frames, spatial_transform(data, train=False))[None], indices


def to_display(clip: torch.Tensor, data: DataConfig) -> torch.Tensor:
    """Undo the data normalisation: `[C, T, H, W]` -> RGB in [0, 1] `[T, H, W, C]`."""
    mean = torch.tensor(data.mean).view(-1, 1, 1, 1)
    std = torch.tensor(data.std).view(-1, 1, 1, 1)
    return (clip.float() * std + mean).clamp(0, 1).permute(1, 2, 3, 0)


def stats_caption(norm_pix: str, true_stats: bool) -> str:
    if norm_pix == "none":
        return "pixel targets (norm_pix=none): no de-normalisation needed"
    if true_stats:
        return (f"norm_pix={norm_pix}: de-normalised with the true patch statistics "
                "(leaks the masked patches' mean/variance)")
    return f"norm_pix={norm_pix}: de-normalised with neighbouring visible patches' statistics"


@torch.no_grad()
def visualize(
    checkpoint: str | Path,
    input_path: str | Path,
    output_png: str | Path,
    config_path: str | Path | None = None,
    overrides: Sequence[str] = (),
    seed: int = 0,
    true_stats: bool = False,
) -> dict[str, Any]:
    """Mask one clip with the method's own masking, reconstruct it and draw the grid to `output_png`.

    `checkpoint` may be "random" (with `config_path`). Returns the loss (masked-patch MSE
    on the normalised targets), the mask ratio drawn, the frame indices and the paths.
    """
    config, method = load_pretrained(checkpoint, config_path, overrides)
    clip, indices = read_clip(input_path, config.data)
    torch.manual_seed(seed)  # the mask is the only random draw: the same seed gives the same figure
    mask = method.make_mask(clip)
    rec = method.reconstruct(clip, mask)

    encoder = method.encoder
    patch, tubelet = encoder.patch_size, encoder.tubelet_size
    grid = encoder.token_grid(clip.shape)
    patches = patchify(clip.float(), patch, tubelet)  # [1, N, P]; pads an image to the tubelet
    predicted = denormalize_patches(rec.pred, patches, mask.masked, config.method.norm_pix, grid,
                                    true_stats=true_stats)
    hidden = mask.masked[..., None].expand_as(patches).float()  # [1, N, P]: 1 on masked pixels

    def image(tokens: torch.Tensor) -> torch.Tensor:  # [1, N, P] -> [T, H, W, C] in [0, 1]
        return to_display(unpatchify(tokens, grid, patch, tubelet)[0], config.data)

    original, reconstruction = image(patches), image(predicted)
    hidden_pixels = unpatchify(hidden, grid, patch, tubelet)[0].permute(1, 2, 3, 0) > 0.5  # [T, H, W, C]
    rows = {
        "original": original,
        "masked input": torch.where(hidden_pixels, torch.full_like(original, 0.5), original),
        "reconstruction": reconstruction,
        "reconstruction +\nvisible patches": torch.where(hidden_pixels, reconstruction, original),
    }
    loss = float(rec.loss)
    ratio = float(mask.masked.float().mean())
    # fill_tubelet repeats a short clip (an image) along time: label each shown frame by its source frame
    repeat = -(-original.shape[0] // len(indices))
    labels = [f"frame {indices[min(j // repeat, len(indices) - 1)]}" for j in range(original.shape[0])]
    title = (f"{config.method.name} ({config.model.name}), {Path(input_path).name}: "
             f"loss {loss:.4f}, {method.masking} mask {ratio:.0%}, seed {seed}\n"
             f"reconstruction {stats_caption(config.method.norm_pix, true_stats)}")
    output = Path(output_png)
    draw_grid(rows, labels, title, output)
    return {"loss": loss, "mask_ratio": ratio, "frames": indices, "output": output,
            "input": Path(input_path), "checkpoint": str(checkpoint),
            "stats": "none" if config.method.norm_pix == "none" else ("true" if true_stats else "neighbours")}


def draw_grid(rows: dict[str, torch.Tensor], labels: list[str], title: str, output: Path) -> None:
    """Images `{row label: [T, H, W, C] in [0, 1]}` -> a PNG grid with one column per frame."""
    columns, cell = len(labels), 1.8  # inches per frame
    # at least 7.5 inches wide so the two-line title fits even above a one-frame image;
    # the constrained layout keeps the title, column and row labels from overlapping
    figure = Figure(figsize=(max(cell * columns + 1.2, 7.5), cell * len(rows) + 1.0), dpi=100, layout="constrained")
    axes = figure.subplots(len(rows), columns, squeeze=False)
    for r, (name, frames) in enumerate(rows.items()):
        for c in range(columns):
            ax = axes[r][c]
            ax.imshow(frames[c].numpy(), interpolation="nearest")  # nearest: keep the patch grid crisp
            ax.set_xticks([])
            ax.set_yticks([])
            if c == 0:
                ax.set_ylabel(name, fontsize=9)
            if r == 0:
                ax.set_title(labels[c], fontsize=9)
    figure.suptitle(title, fontsize=9)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)


# --------------------------------------------------------------------------------------
# Loss curves
# --------------------------------------------------------------------------------------


def plot_runs(runs: Sequence[str | Path], output: str | Path, keys: Sequence[str] | None = None) -> Path:
    """Loss curves of run folders (each with `metrics.jsonl`) -> one PNG, one subplot per key.

    x is the step, one line per run labelled by its folder name. keys default to those of
    loss, loss_rec, loss_con and monitor_top1 that any run logged; a key no run logged is an error naming it.
    """
    if not runs:
        raise ConfigError("plot needs at least one run folder")
    records: dict[str, list[dict[str, Any]]] = {}
    for run in map(Path, runs):
        metrics = run / "metrics.jsonl"
        if not metrics.is_file():
            raise FileNotFoundError(f"{metrics} not found: is {run} a run folder?")
        name = run.resolve().name
        records[name if name not in records else str(run)] = read_metrics(metrics)
    logged = {key for rows in records.values() for row in rows for key in row}
    if keys is None:
        keys = [key for key in DEFAULT_PLOT_KEYS if key in logged]
        if not keys:
            raise ConfigError(f"none of {', '.join(DEFAULT_PLOT_KEYS)} is logged in {', '.join(map(str, runs))}")
    missing = [key for key in keys if key not in logged]
    if missing:
        raise ConfigError(f"key(s) {', '.join(map(repr, missing))} not logged by any run; "
                          f"logged keys: {', '.join(sorted(logged))}")

    figure = Figure(figsize=(5.0 * len(keys), 3.6), dpi=100, layout="constrained")
    axes = figure.subplots(1, len(keys), squeeze=False)[0]
    for ax, key in zip(axes, keys, strict=True):
        for label, rows in records.items():
            points = [(row["step"], row[key]) for row in rows if key in row and "step" in row]
            if points:
                steps, values = zip(*points, strict=True)
                ax.plot(steps, values, label=label, linewidth=1.2, marker=".")  # one logged point shows too
        ax.set_title(key)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    output = Path(output)
    output.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(output)
    return output
