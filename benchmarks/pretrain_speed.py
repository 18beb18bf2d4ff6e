"""Pre-training throughput of every method on random clips (no data loading): a table of
ms per step and clips per second, optionally compared with a saved reference in the same run.

    python benchmarks/pretrain_speed.py                       # demo presets, batch 32, CPU
    python benchmarks/pretrain_speed.py --save ref.json       # keep these numbers
    python benchmarks/pretrain_speed.py --compare ref.json    # ratio against them
    git worktree add /tmp/ref 80a1167                         # the code before issue 14
    python benchmarks/pretrain_speed.py --baseline-tree /tmp/ref --rounds 3
    python benchmarks/pretrain_speed.py model.name=vit_base data.image_size=224 data.num_frames=16 --batch 8
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cmae.config import TrainConfig, load_config
from cmae.engine.loop import make_optimizer
from cmae.engine.runtime import autocast, resolve_device, resolve_precision
from cmae.engine.schedule import param_groups
from cmae.methods import Method, build_method

PRESETS = Path(__file__).resolve().parents[1] / "src" / "cmae" / "configs" / "demo"


def fake_batch(config, batch: int, device) -> dict[str, torch.Tensor]:
    """Inputs shaped like the method's views: clips for video methods, single frames for pair methods."""
    size, frames = config.data.image_size, config.data.num_frames
    clip = lambda t: torch.randn(batch, 3, t, size, size, device=device)  # noqa: E731
    if config.data.views == "temporal_shift":
        return {"video": clip(frames), "target": clip(frames)}
    if config.data.views == "frame_pair":
        return {"view1": clip(1), "view2": clip(1)}
    return {"video": clip(frames)}


def timed_steps(method: Method, batch: dict, device: torch.device, dtype: torch.dtype, steps: int,
                warmup: int = 2, train: TrainConfig | None = None) -> tuple[list[float], torch.Tensor]:
    """`warmup` + `steps` AdamW steps on one batch (EMA hook included): the seconds of each timed
    step and the last loss. The loop's AdamW for `train` (its strategy picks the update kernel)."""
    optimizer = make_optimizer(param_groups(method, 0.05), 1e-4, train or TrainConfig())
    timings, loss = [], torch.tensor(float("nan"))
    for step in range(warmup + steps):
        if device.type == "cuda":
            torch.cuda.synchronize()
        started = time.perf_counter()
        with autocast(device, dtype):
            loss = method(batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        method.after_step(step + 1, warmup + steps)  # a no-op unless the method keeps an EMA target
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step >= warmup:
            timings.append(time.perf_counter() - started)
    return timings, loss.detach()


def measure(preset: Path, batch: int, steps: int, overrides: list[str]) -> dict[str, float]:
    config = load_config(preset, overrides)
    device = resolve_device(config.train.device)
    dtype = resolve_precision(config.train.precision, device)
    torch.manual_seed(0)
    method = build_method(config).to(device).train()
    timings, _ = timed_steps(method, fake_batch(config, batch, device), device, dtype, steps)
    ms = 1000 * sorted(timings)[len(timings) // 2]
    return {"ms_per_step": ms, "clips_per_s": batch / ms * 1000}


def measure_tree(tree: Path, name: str, args) -> float:
    """ms per step of `name`, measured by `tree`'s own copy of this script on `tree`'s code, in a
    fresh process (a long-lived process slows down here as it runs, which would favour the first)."""
    with tempfile.TemporaryDirectory() as folder:
        out = Path(folder) / "speed.json"
        subprocess.run([sys.executable, str(tree / "benchmarks" / "pretrain_speed.py"), "--methods", name,
                        "--batch", str(args.batch), "--steps", str(args.steps), "--save", str(out), *args.overrides],
                       check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(tree / "src")})
        return json.loads(out.read_text())[name]["ms_per_step"]


def compare_trees(args) -> None:
    """This tree against `--baseline-tree`, taking turns per method and round; the median ratio."""
    here, baseline = Path(__file__).resolve().parents[1], Path(args.baseline_tree).resolve()
    print(f"{'method':<10} {'baseline ms':>12} {'this ms':>9} {'speed-up':>9}   (median of {args.rounds} rounds)")
    for name in args.methods.split(","):
        pairs = [(measure_tree(baseline, name, args), measure_tree(here, name, args)) for _ in range(args.rounds)]
        old, new = (statistics.median(p[i] for p in pairs) for i in (0, 1))
        ratio = statistics.median(a / b for a, b in pairs)
        print(f"{name:<10} {old:>12.1f} {new:>9.1f} {ratio:>8.2f}x   rounds: "
              + ", ".join(f"{a / b:.2f}" for a, b in pairs), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", default="videomae,cmae_v,vic_mae,mae")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--save", help="write the results to this JSON file")
    parser.add_argument("--compare", help="a JSON file from --save to compare against")
    parser.add_argument("--baseline-tree", help="a checkout of other code (git worktree): measure both, in turns")
    parser.add_argument("--rounds", type=int, default=3, help="turns per method with --baseline-tree")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args()
    if args.baseline_tree:
        compare_trees(args)
        return
    reference = json.loads(Path(args.compare).read_text()) if args.compare else {}
    results = {}
    print(f"{'method':<10} {'ms/step':>9} {'clips/s':>9}" + (f" {'vs ref':>8}" if reference else ""))
    for name in args.methods.split(","):
        results[name] = measure(PRESETS / f"{name}.yaml", args.batch, args.steps, args.overrides)
        line = f"{name:<10} {results[name]['ms_per_step']:>9.1f} {results[name]['clips_per_s']:>9.1f}"
        if name in reference:
            line += f" {reference[name]['ms_per_step'] / results[name]['ms_per_step']:>7.2f}x"
        print(line, flush=True)
    if args.save:
        Path(args.save).write_text(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
