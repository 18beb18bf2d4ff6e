"""What `eval.probe_grid` costs: a 3 x 2 grid of lr x weight decay against one setting, for the linear and
the attentive probe, end to end (the encoder's feature pass + the probes) and the probes alone; and, with
`--augment N`, the same on N training clips with `eval.probe_augment` (the encoder runs every probe epoch).

    python benchmarks/probe_grid.py --checkpoint RUN/checkpoint-last.pt --train LIST --val LIST [key=value ...]

The grid trains its six probes together on the one feature pass (and chooses on a 20 % selection split of
the training list); one setting alone still needs that pass. The pass is timed on its own (features of
both lists, cache emptied first), the probes on the cached features. Copy the checkpoint first: the
features are cached next to it.
"""

from __future__ import annotations

import argparse
import shutil
import time
from pathlib import Path

from cmae.engine.evaluate import cached_features, frozen_evaluation
from cmae.engine.loading import load_pretrained

GRID = {"linprobe": "eval.probe_grid=[[0.3, 0.1, 0.03], [0, 0.0005]]",
        "attnprobe": "eval.probe_grid=[[0.003, 0.001, 0.0003], [0.01, 0.1]]"}


def timed(function, *args, **kwargs) -> float:
    started = time.time()
    function(*args, **kwargs)
    return time.time() - started


def feature_pass(checkpoint: Path, overrides: list[str], readout: str | None) -> float:
    """Seconds to extract (and cache) the features of data.train and data.val."""
    config, method = load_pretrained(checkpoint, None, overrides)
    shutil.rmtree(checkpoint.parent / "features", ignore_errors=True)
    started = time.time()
    for source in (config.data.train, config.data.val):
        cached_features(method.encoder, source, config, checkpoint, checkpoint.parent / "features", readout)
    return time.time() - started


def row(protocol: str, settings: int, extract: float, probes: float, single: float) -> str:
    return (f"| {protocol} | {settings} | {extract:.1f} | {probes:.1f} | {extract + probes:.1f} | "
            f"{(extract + probes) / (extract + single):.2f} | {probes / single:.2f} |")


def subset_list(source: str, count: int, output: Path) -> str:
    """The first `count` lines of a list, with absolute paths, written under `output`."""
    folder = Path(source).resolve().parent
    lines = []
    for line in Path(source).read_text().splitlines()[:count]:
        path, label = line.rsplit(" ", 1)
        lines.append(f"{(folder / path).resolve()} {label}")
    output.mkdir(parents=True, exist_ok=True)
    (output / "subset.txt").write_text("\n".join(lines) + "\n")
    return str(output / "subset.txt")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--train", required=True)
    parser.add_argument("--val", required=True)
    parser.add_argument("--output", type=Path, default=Path("runs/probe_grid"))
    parser.add_argument("--protocols", nargs="+", default=list(GRID), choices=list(GRID))
    parser.add_argument("--augment", type=int, default=0, help="also time eval.probe_augment on this many clips")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    base = [f"data.train={args.train}", f"data.val={args.val}", "eval.select_fraction=0.2", *args.overrides]
    print("| probe | settings | feature pass s | probes s | one pass total s | x one setting (total) | "
          "x one setting (probes) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for protocol in args.protocols:
        extract = feature_pass(args.checkpoint, base, "tokens" if protocol == "attnprobe" else None)
        single = timed(frozen_evaluation, protocol, args.checkpoint, args.output / f"{protocol}-one", overrides=base)
        many = timed(frozen_evaluation, protocol, args.checkpoint, args.output / f"{protocol}-grid",
                     overrides=[*base, GRID[protocol]])
        print(row(protocol, 1, extract, single, single), flush=True)
        print(row(protocol, 6, extract, many, single), flush=True)
    if args.augment:
        train = subset_list(args.train, args.augment, args.output / "augment")
        augmented = [*base, f"data.train={train}", "eval.probe_augment=true", "eval.cache=false"]
        for protocol in args.protocols:
            single = timed(frozen_evaluation, protocol, args.checkpoint, args.output / f"{protocol}-aug-one",
                           overrides=augmented)
            many = timed(frozen_evaluation, protocol, args.checkpoint, args.output / f"{protocol}-aug-grid",
                         overrides=[*augmented, GRID[protocol]])
            print(row(f"{protocol}, probe_augment, {args.augment} clips", 1, 0.0, single, single), flush=True)
            print(row(f"{protocol}, probe_augment, {args.augment} clips", 6, 0.0, many, single), flush=True)


if __name__ == "__main__":
    main()
