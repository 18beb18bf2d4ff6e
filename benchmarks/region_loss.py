"""Where does a `videomae` checkpoint's reconstruction loss fall: on the main object's tubelets or the background's?

    python benchmarks/region_loss.py --checkpoints RUN/checkpoint-last.pt random --background-light 110 \
        --spec background_light_angle=240,300 distractors=0

The clips are the demo's spec (`--style shapes`, `--background-light`, `--spec` as in `data_budget.py`), rendered
without the codec: training clips 1,280 on (data_budget's selection split), their first 8 frames at rate 2 (the
probe's view). Each tubelet is put in one region by the share of its pixels that the main object covers: object
(more than 90 %), edge (5-90 %), background (none; distractors count as background). The masked-token loss of each
region is averaged over four tube masks of the checkpoint's own mask ratio. Predicting zero scores about 1 in every
region; copying the visible tokens' targets scores 0.71 on the background-lit data (`synth_targets.py`). About 10 s
a checkpoint on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses

import numpy as np
import torch
from data_budget import SELECTION, spec_fields

from cmae.data.synth import MOTION_CLASSES, render_clip, sample_and_render
from cmae.demo import DEMO_SPEC

REGIONS = ("object", "edge", "background")


def clips_and_object_share(spec, count: int, patch: int = 8, tubelet: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """`[count, 3, 8, H, W]` clips in 0..1 and `[count, N]` the share of each tubelet's pixels the main object covers."""
    from cmae.models.patchify import normalized_targets

    first = spec.num_train - round(SELECTION * spec.num_train)
    clips, covered = [], []
    for i in range(first, first + count):
        params, frames = sample_and_render(spec, i % len(MOTION_CLASSES), np.random.default_rng(spec.seed + i), [])
        black = dataclasses.replace(params.obj, color=(0, 0, 0), mark_color=(0, 0, 0))
        without = render_clip(dataclasses.replace(params, obj=black))  # the same clip, the object drawn black
        clips.append(frames[0:16:2])
        covered.append(np.any(without != frames, -1)[0:16:2])
    x = torch.from_numpy(np.stack(clips)).float().div(255).permute(0, 4, 1, 2, 3)
    mask = torch.from_numpy(np.stack(covered)).float()[:, None].expand(-1, 3, -1, -1, -1)
    return x, normalized_targets(mask, patch, tubelet, "none").mean(-1)


def region_losses(checkpoint: str, clips: torch.Tensor, share: torch.Tensor, masks: int = 4) -> dict[str, float]:
    """The mean masked-token loss (the checkpoint's normalised-pixel target) of each region."""
    from cmae.engine.loading import load_pretrained

    config, method = load_pretrained(checkpoint, "demo/videomae" if checkpoint == "random" else None,
                                     ["data.num_frames=8"])
    method.eval()
    mean, std = (torch.tensor(values)[:, None, None, None] for values in (config.data.mean, config.data.std))
    view = (clips - mean) / std
    targets = method.targets(view)
    regions = {"object": share > 0.9, "edge": (share > 0.05) & (share <= 0.9), "background": share == 0}
    errors: dict[str, list[torch.Tensor]] = {name: [] for name in REGIONS}
    torch.manual_seed(0)
    with torch.no_grad():
        for _ in range(masks):
            rec = method.reconstruct(view)  # a fresh tube mask, every token decoded
            error = (rec.pred.float() - targets).square().mean(-1)  # [B, N]
            for name, region in regions.items():
                errors[name].append(error[rec.mask.masked & region])
    return {name: torch.cat(values).mean().item() for name, values in errors.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint files, or random")
    parser.add_argument("--background-light", type=float, default=DEMO_SPEC.background_light)
    parser.add_argument("--spec", nargs="*", default=[], metavar="FIELD=VALUE", help="any other SynthSpec field")
    parser.add_argument("--clips", type=int, default=96)
    args = parser.parse_args(argv)
    spec = dataclasses.replace(DEMO_SPEC, background_light=args.background_light, **spec_fields(args.spec))
    clips, share = clips_and_object_share(spec, args.clips)
    print("| encoder | " + " | ".join(f"masked loss, {name}" for name in REGIONS) + " |")
    print("| --- |" + " ---: |" * len(REGIONS))
    for checkpoint in args.checkpoints:
        losses = region_losses(checkpoint, clips, share)
        print(f"| {checkpoint} | " + " | ".join(f"{losses[name]:.3f}" for name in REGIONS) + " |", flush=True)


if __name__ == "__main__":
    main()
