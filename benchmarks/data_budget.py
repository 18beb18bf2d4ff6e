"""Does a synthetic data set teach `videomae`? Its motion linear probe at several pre-training budgets, against
the random floor, on a selection split of the training clips (the validation clips are never read).

    python benchmarks/data_budget.py --style natural --epochs 6 24 --output /tmp/budget
    python benchmarks/data_budget.py --style shapes --epochs 6 --overrides method.norm_pix=patch

The data is the demo's spec (1,600 training clips; `--style`, `--object-size` change it). `videomae` is
pre-trained on all training clips with the demo preset (`demo/videomae`, `--overrides` on top); its linear
probe is fit on the first 1,280 and scored on the last 320 (class-balanced: labels cycle through the 8
classes), with the demo's probe settings. Each row gives the normalised-pixel loss at its start and end
(the least of the last ten logged steps). About 9 s per epoch and 40 s per probe on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from cmae.config import load_config
from cmae.data.synth import STYLES, write_synthetic_dataset
from cmae.demo import DEMO_SPEC, PRESETS, PROBE, TASKS, save_random_init
from cmae.engine.runtime import read_metrics

SELECTION = 0.2  # the last fifth of the training clips: the probe's selection split (320 of 1,600)


def selection_lists(data: Path) -> tuple[Path, Path]:
    """`data/sel_train.txt` (the first 80 % of the training clips) and `data/sel_val.txt` (the rest)."""
    lines = (data / "train.txt").read_text().splitlines(keepends=True)
    cut = len(lines) - round(SELECTION * len(lines))
    train, select = data / "sel_train.txt", data / "sel_val.txt"
    train.write_text("".join(lines[:cut]))
    select.write_text("".join(lines[cut:]))
    return train, select


def loss_curve(run: Path) -> tuple[float, float]:
    rows = [row for row in read_metrics(run / "metrics.jsonl") if "loss" in row]
    return rows[0]["loss"], min(row["loss"] for row in rows[-10:])


def main(argv: list[str] | None = None) -> None:
    from cmae.engine.evaluate import frozen_evaluation
    from cmae.engine.pretrain import pretrain

    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/data_budget")
    parser.add_argument("--style", choices=STYLES, default="natural")
    parser.add_argument("--object-size", nargs=2, type=float, default=list(DEMO_SPEC.object_size))
    parser.add_argument("--epochs", nargs="*", type=int, default=[6, 12, 24])
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides for pre-training and probes")
    parser.add_argument("--train-clips", type=int, default=DEMO_SPEC.num_train)
    args = parser.parse_args(argv)
    output = Path(args.output)
    spec = dataclasses.replace(DEMO_SPEC, style=args.style, object_size=tuple(args.object_size),
                               num_train=args.train_clips, num_val=8)
    data = output / f"data-{args.style}"
    if not (data / "train.txt").is_file():
        write_synthetic_dataset(data, spec)
    probe_train, probe_select = selection_lists(data)
    probe = [f"data.train={probe_train}", f"data.val={probe_select}", *TASKS["motion"][2], *PROBE,
             f"train.seed={args.seed}", *args.overrides]
    overrides = [f"train.seed={args.seed}", *args.overrides]
    candidates = [("random floor", "-", save_random_init(PRESETS / "videomae.yaml", overrides, output / "random"))]
    for epochs in args.epochs:
        config = load_config(PRESETS / "videomae.yaml", [f"data.train={data / 'train.txt'}",
                                                         f"train.epochs={epochs}", *overrides])
        run = output / f"videomae-e{epochs}"
        pretrain(config, run, overwrite=True)
        first, last = loss_curve(run)
        candidates.append((f"videomae, {epochs} epochs", f"{first:.3f} -> {last:.3f}", run / "checkpoint-last.pt"))
    print(f"| encoder ({args.style}, seed {args.seed}) | loss first -> last | motion linprobe, selection split |")
    print("| --- | --- | ---: |")
    for name, loss, checkpoint in candidates:
        summary = frozen_evaluation("linprobe", checkpoint, output / "eval" / name.replace(" ", "-").replace(",", ""),
                                    None, probe)
        print(f"| {name} | {loss} | {summary['top1']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
