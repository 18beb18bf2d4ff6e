"""What `eval.probe_grid` costs: a 3 x 2 grid of lr x weight decay against one setting, for the linear and
the attentive probe, end to end (the encoder's feature pass + the probes) and the probes alone.

    python benchmarks/probe_grid.py --checkpoint RUN/checkpoint-last.pt --train LIST --val LIST [key=value ...]

The grid trains its six probes together on the one feature pass (and chooses on a 20 % selection split of
the training list); one setting alone still needs that pass. Each row's probe time comes from a run on the
features cached by the first (`eval.cache`), the pass's time from the first run minus its probes.
Copy the checkpoint first: the features are cached next to it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from cmae.engine.evaluate import frozen_evaluation

GRID = {"linprobe": "eval.probe_grid=[[0.3, 0.1, 0.03], [0, 0.0005]]",
        "attnprobe": "eval.probe_grid=[[0.003, 0.001, 0.0003], [0.01, 0.1]]"}


def timed(protocol: str, checkpoint: Path, output: Path, overrides: list[str]) -> float:
    started = time.time()
    frozen_evaluation(protocol, checkpoint, output, overrides=overrides)
    return time.time() - started


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--output", type=Path, default=Path("runs/probe_grid"))
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    base = [f"data.train={args.train}", f"data.val={args.val}", "eval.select_fraction=0.2", *args.overrides]
    print("| probe | settings | feature pass s | probes s | one pass total s | x one setting (total) | "
          "x one setting (probes) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for protocol, grid in GRID.items():
        shutil.rmtree(args.checkpoint.parent / "features", ignore_errors=True)
        cold = timed(protocol, args.checkpoint, args.output / f"{protocol}-cold", base)
        single = timed(protocol, args.checkpoint, args.output / f"{protocol}-one", base)
        many = timed(protocol, args.checkpoint, args.output / f"{protocol}-grid", [*base, grid])
        extract = cold - single
        print(f"| {protocol} | 1 | {extract:.1f} | {single:.1f} | {extract + single:.1f} | 1.00 | 1.00 |")
        print(f"| {protocol} | 6 | {extract:.1f} | {many:.1f} | {extract + many:.1f} | "
              f"{(extract + many) / (extract + single):.2f} | {many / single:.2f} |", flush=True)


if __name__ == "__main__":
    main()
