"""How much of the normalised-pixel target of `cmae synth` data is the scene, and how much the codec's noise.

    python benchmarks/synth_targets.py                       # every style, 64 clips each
    python benchmarks/synth_targets.py --styles natural --crf 20 12 --clips 32
    python benchmarks/synth_targets.py --styles camera --light 1.2 --leaf-shade 0 0 --motion-scale 2.5  # synth's options

VideoMAE's target is each tubelet patch normalised by its own mean and spread (`norm_pix=channel`: per
channel; `patch`: over the whole patch). On a flat patch the spread is the codec's noise, and the normalised
target is that noise blown up to unit variance: unpredictable, whatever the model learns. For every clip the
script renders the frames (lossless), writes and decodes them as `cmae synth` does, and takes the demo's view
(8 frames at rate 2, tubelets 2 x 8 x 8). Per patch, `noise / target` is the variance of decoded minus
rendered pixels over the variance of the decoded ones: the share of the normalised target no model can predict
from the scene. Its mean over patches is the **noise floor** of the normalised-pixel loss (a model that knew
every rendered pixel would still score it); `flat` is the share of patches where it is above one half.
`colour share, patch` is the share of a patch's variance that lies between its channels' means: under
`norm_pix=patch` a prediction of the patch's colour alone, a constant of the clip's background, scores it.
`neighbour r` is the mean correlation of a patch's `norm_pix=channel` target with its right or lower
neighbour's at the same time step (what a 90 % tube mask leaves to copy from: the same position at other times
is hidden too), `next step r` with its own at the next token time step (what a random mask leaves).
The `copy` columns bound what the simplest reconstructions score under the demo's 90 % tube mask: every
masked target predicted by the mean of the visible targets at its time step (`copy mean`) or by its nearest
visible neighbour's (`copy nearest`), each times the one scale that is best over all clips, against
`zero` (predicting nothing). Where both stay near `zero`, the data offers no easy reconstruction to learn
first (benchmarks/reconstruction_plateau.py: even an easy one takes the demo's model a few hundred steps).
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
import torch

from cmae.data.decoding import open_video
from cmae.data.synth import SynthSpec, sample_and_render, write_mp4
from cmae.masking import make_mask

PATCH, TUBELET, FRAMES, RATE, MASK_RATIO = 8, 2, 8, 2, 0.9


def decode(path: Path) -> np.ndarray:
    """Every frame [T, H, W, 3] uint8, through cmae's own reader (as training decodes)."""
    with open_video(path) as reader:
        return reader.get_frames(range(reader.num_frames)).permute(0, 2, 3, 1).numpy()


def tubelet_patches(frames: np.ndarray) -> np.ndarray:
    """[T, H, W, 3] -> [patches, channels, values per channel] of the demo's view (float, in [0, 1])."""
    x = frames[: FRAMES * RATE : RATE].astype(np.float64) / 255
    t, h, w, c = x.shape
    x = x.reshape(t // TUBELET, TUBELET, h // PATCH, PATCH, w // PATCH, PATCH, c)
    return x.transpose(0, 2, 4, 6, 1, 3, 5).reshape(-1, c, TUBELET * PATCH * PATCH)


def _normalised_grid(patches: np.ndarray, side: int) -> np.ndarray:
    """[patches, channels, values] -> [time, side, side, channels * values]: `norm_pix=channel` targets."""
    x = (patches - patches.mean(-1, keepdims=True)) / (patches.std(-1, ddof=1, keepdims=True) + 1e-6)
    return x.reshape(-1, side, side, x.shape[1] * x.shape[2])


def _correlation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Correlation of matching target vectors of `a` and `b` (both zero-mean per channel), flattened."""
    return ((a * b).sum(-1) / (np.linalg.norm(a, axis=-1) * np.linalg.norm(b, axis=-1) + 1e-12)).ravel()


class CopyBounds:
    """Sums over masked targets y and copies m of `y.m`, `m.m` and `y.y`: the loss of the best scale a*m."""

    def __init__(self, seed: int):
        self.generator = torch.Generator().manual_seed(seed)  # the tube masks
        self.sums = {name: np.zeros(3) for name in ("mean", "nearest")}
        self.count = 0

    def add(self, grid: np.ndarray) -> None:
        """`grid` [time, side, side, values]: one clip's targets, under a fresh tube mask."""
        t, side = grid.shape[:2]
        masked = make_mask("tube", 1, (t, side, side), MASK_RATIO, "cpu", self.generator).masked[0, : side * side]
        places = np.stack(np.meshgrid(np.arange(side), np.arange(side), indexing="ij"), -1).reshape(-1, 2)
        hidden, shown = places[masked.numpy()], places[~masked.numpy()]
        nearest = shown[np.square(hidden[:, None] - shown[None]).sum(-1).argmin(1)]  # [hidden, 2]
        y = grid[:, hidden[:, 0], hidden[:, 1]]  # [time, hidden, values]
        copies = {"mean": grid[:, shown[:, 0], shown[:, 1]].mean(1, keepdims=True).repeat(len(hidden), 1),
                  "nearest": grid[:, nearest[:, 0], nearest[:, 1]]}
        for name, m in copies.items():
            self.sums[name] += [(y * m).sum(), (m * m).sum(), (y * y).sum()]
        self.count += y.size

    def losses(self) -> dict[str, float]:
        """Mean squared error per target value: zero, and each copy at its best scale."""
        out = {"zero": self.sums["mean"][2] / self.count}
        for name, (ym, mm, yy) in self.sums.items():
            out[name] = (yy - ym**2 / mm) / self.count
        return out


def noise_shares(spec: SynthSpec, clips: int) -> dict[str, np.ndarray]:
    """Per patch, the share of the target's variance that is codec noise, for norm_pix channel and patch."""
    shares: dict[str, list[np.ndarray]] = {"channel": [], "patch": [], "offsets": [], "neighbour": [], "next": []}
    bounds = CopyBounds(spec.seed)
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(clips):
            _, frames = sample_and_render(spec, i % 8, np.random.default_rng(spec.seed + i), [])
            path = Path(tmp) / f"{i}.mp4"
            write_mp4(path, frames, spec.fps, spec.crf)
            decoded, rendered = tubelet_patches(decode(path)), tubelet_patches(frames)
            noise = decoded - rendered
            for mode, axes in (("channel", (-1,)), ("patch", (-2, -1))):
                var_target = decoded.var(axis=axes, ddof=1).reshape(len(decoded), -1)
                var_noise = noise.var(axis=axes, ddof=1).reshape(len(decoded), -1)
                shares[mode].append(np.minimum(1.0, var_noise / (var_target + 1e-12)).ravel())
            # norm_pix=patch: the share of a patch's variance that is its channels' mean offsets (its colour)
            between = decoded.mean(-1).var(-1)
            shares["offsets"].append(between / (decoded.reshape(len(decoded), -1).var(-1) + 1e-12))
            grid = _normalised_grid(decoded, spec.size // PATCH)
            shares["neighbour"] += [_correlation(grid[:, :, :-1], grid[:, :, 1:]),
                                    _correlation(grid[:, :-1], grid[:, 1:])]
            shares["next"].append(_correlation(grid[:-1], grid[1:]))
            bounds.add(grid)
    return {mode: np.concatenate(values) for mode, values in shares.items()} | {"copy": bounds.losses()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--styles", nargs="*", default=["shapes", "natural", "camera"])
    parser.add_argument("--crf", nargs="*", type=int, default=[20])
    parser.add_argument("--clips", type=int, default=64)
    parser.add_argument("--light", type=float, default=SynthSpec.light, help="cmae synth --light")
    parser.add_argument("--background-light", type=float, default=SynthSpec.background_light, help="shapes only")
    parser.add_argument("--background-light-angle", type=float, nargs=2, default=SynthSpec.background_light_angle,
                        help="shapes only")
    parser.add_argument("--leaf-shade", type=float, nargs=2, default=SynthSpec.leaf_shade, help="camera style only")
    parser.add_argument("--motion-scale", type=float, default=SynthSpec.motion_scale, help="camera style only")
    parser.add_argument("--leaf-outline", type=float, default=SynthSpec.leaf_outline, help="camera style only")
    args = parser.parse_args(argv)
    print("| style | crf | noise floor, norm_pix channel | flat patches, channel | noise floor, patch | flat, patch "
          "| colour share, patch | neighbour r | next step r | zero | copy mean | copy nearest |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for style in args.styles:
        for crf in args.crf:
            # the demo's spec (distractors in the object's shape and colours), in each style
            options = {"leaf_shade": tuple(args.leaf_shade), "motion_scale": args.motion_scale,
                       "leaf_outline": args.leaf_outline} if style == "camera" else {}
            options |= {"background_light": args.background_light,
                        "background_light_angle": tuple(args.background_light_angle)} if style == "shapes" else {}
            spec = SynthSpec(style=style, crf=crf, same_shape_distractors=True, same_color_distractors=True,
                             light=args.light, **options)
            shares = noise_shares(spec, args.clips)
            ch, pa = shares["channel"], shares["patch"]
            print(f"| {style} | {crf} | {ch.mean():.3f} | {(ch > 0.5).mean():.1%} | {pa.mean():.3f} | "
                  f"{(pa > 0.5).mean():.1%} | {shares['offsets'].mean():.3f} | {shares['neighbour'].mean():.3f} | "
                  f"{shares['next'].mean():.3f} | " + " | ".join(f"{v:.3f}" for v in shares["copy"].values()) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
