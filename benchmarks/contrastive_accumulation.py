"""What `train.contrastive_accumulation=exact` costs against `micro`: time per optimiser step and peak
memory, for accum_steps micro-batches of random clips (no data loading), one fresh process per cell.

    python benchmarks/contrastive_accumulation.py                    # demo size and ViT-S, CPU
    python benchmarks/contrastive_accumulation.py --accum 4 --micro 8 --steps 3

Both modes run the loop's own accumulation (`cmae.engine.loop.accumulate_gradients`): `micro` one
forward and backward per micro-batch; `exact` (gradient caching) one more forward per micro-batch
without a graph, and the heads twice over the whole batch. Peak memory is the process's peak
resident set growth during the steps on CPU (the CUDA allocator's peak on a GPU).
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

from cmae.config import load_config
from cmae.distributed import DistInfo
from cmae.engine.loop import DecodeFailures, Job, Run, accumulate_gradients, make_optimizer
from cmae.engine.runtime import resolve_device, resolve_precision
from cmae.engine.schedule import param_groups
from cmae.methods import build_method

ROOT = Path(__file__).resolve().parents[1]
DEMO = ROOT / "src" / "cmae" / "configs" / "demo"
# name -> (preset, overrides): the demo presets as they are, and ViT-S/16 (CMAE's small encoder width)
SIZES = {
    "demo": [],
    "ViT-S": ["model.name=vit_small", "model.patch_size=16", "data.image_size=112", "model.decoder_dim=192",
              "model.decoder_depth=2", "model.decoder_heads=3"],
}
PRESETS = {"cmae_v": ["data.num_frames=8"], "vic_mae": []}


def fake_batch(config, batch: int, device) -> dict[str, torch.Tensor]:
    size, frames = config.data.image_size, config.data.num_frames
    clip = lambda t: torch.randn(batch, 3, t, size, size, device=device)  # noqa: E731
    index = torch.arange(batch, device=device)
    extra = {"index": index, "num_failed": torch.zeros(batch, dtype=torch.long)}  # what the loader adds
    if config.data.views == "temporal_shift":
        return {"video": clip(frames), "target": clip(frames), **extra}
    return {"view1": clip(1), "view2": clip(1), **extra}


def measure(method_name: str, size: str, mode: str, accum: int, micro: int, steps: int) -> dict[str, float]:
    """One cell, in this process: seconds per optimiser step (median) and peak memory growth in MiB."""
    overrides = [*PRESETS[method_name], *SIZES[size], f"train.accum_steps={accum}",
                 f"train.batch_size={accum * micro}", f"train.contrastive_accumulation={mode}"]
    config = load_config(DEMO / f"{method_name}.yaml", overrides)
    device = resolve_device("auto")
    dtype = resolve_precision("auto", device)
    method = build_method(config).to(device)
    groups = param_groups(method, 0.05)
    optimizer = make_optimizer(groups, 1e-4, config.train)
    job = Job(method, None, groups, config.train)
    run = Run(config, Path(tempfile.gettempdir()), job, device, dtype, DistInfo(), None, optimizer,
              torch.amp.GradScaler(device.type, enabled=False), method, None,
              DecodeFailures(config.data.max_failed_fraction), 1, 0, 1e-4)
    batches = [fake_batch(config, micro, device) for _ in range(accum)]
    method.train()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    times = []
    for step in range(steps + 1):  # the first step warms up
        started = time.perf_counter()
        accumulate_gradients(run, iter(batches), 0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if device.type == "cuda":
            torch.cuda.synchronize()
        if step:
            times.append(time.perf_counter() - started)
    peak = (torch.cuda.max_memory_allocated(device) / 2**20 if device.type == "cuda"
            else (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024)
    return {"seconds": statistics.median(times), "peak_mib": peak}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--accum", type=int, default=4)
    parser.add_argument("--micro", type=int, default=8, help="samples per micro-batch")
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--sizes", nargs="+", default=list(SIZES))
    parser.add_argument("--methods", nargs="+", default=list(PRESETS))
    parser.add_argument("--cell", nargs=3, help=argparse.SUPPRESS)  # method size mode: one cell, JSON out
    args = parser.parse_args()
    if args.cell:
        print(json.dumps(measure(*args.cell, args.accum, args.micro, args.steps)))
        return
    print(f"accum_steps={args.accum} x {args.micro} samples, median of {args.steps} steps after one warm-up\n")
    print("| method | size | micro s/step | exact s/step | time x | micro peak MiB | exact peak MiB |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for size in args.sizes:
        for name in args.methods:
            cells = {}
            for mode in ("micro", "exact"):  # a fresh process each: peak memory is per process
                out = subprocess.run([sys.executable, __file__, "--cell", name, size, mode, "--accum", str(args.accum),
                                      "--micro", str(args.micro), "--steps", str(args.steps)],
                                     capture_output=True, text=True, check=True)
                cells[mode] = json.loads(out.stdout.strip().splitlines()[-1])
            m, e = cells["micro"], cells["exact"]
            print(f"| {name} | {size} | {m['seconds']:.3f} | {e['seconds']:.3f} | {e['seconds'] / m['seconds']:.2f} "
                  f"| {m['peak_mib']:.0f} | {e['peak_mib']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
