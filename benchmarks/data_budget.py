"""Does a synthetic data set teach `videomae`? Its motion probes at several pre-training budgets, against the
random floor, on a selection split of the training clips (the validation clips are never read).

    python benchmarks/data_budget.py --style natural --epochs 6 24 --output /tmp/budget
    python benchmarks/data_budget.py --style shapes --epochs 6 --overrides method.norm_pix=patch
    python benchmarks/data_budget.py --style camera --light 1.2 --leaf-shade 0 0 --motion-scale 2.5 \
        --epochs 6 12 24 --seeds 0 1 2 --protocols linprobe knn attnprobe --finetune 0.1

The data is the demo's spec (1,600 training clips; `--style`, `--object-size`, `--light`, `--leaf-shade`,
`--motion-scale`, `--leaf-outline`, `--background-light` and `--spec FIELD=VALUE` for any other `SynthSpec` field
change it), drawn once for every seed. `videomae` is
pre-trained on all training clips with the demo preset (`demo/videomae`, `--overrides` on top, `train.seed` per seed);
its probes are fit on the first 1,280 and scored on the last 320 (class-balanced: labels cycle through the 8 classes),
with the demo's probe settings (the attentive probe chooses its lr on a fifth of the 1,280, as in the demo).
`--finetune F` also fine-tunes every encoder end to end on a class-balanced fraction F of the 1,280 (the
random floor: training from scratch) and scores it on the 320. Each row gives the normalised-pixel loss at
its start and end (the least of the last ten logged steps). With several seeds a summary follows: each
encoder's mean, and its paired difference from the same seed's random floor with its SE (seed spread /
sqrt(n), combined with the binomial error of the 320 clips). Finished runs are reused. About 9 s per
epoch, 40 s per linear probe or kNN, 90 s per attentive probe and 75 s per fine-tuning at F = 0.1 on 2 CPU
cores.
"""

from __future__ import annotations

import argparse
import ast
import dataclasses
import hashlib
import json
import math
import re
import statistics
from pathlib import Path

from cmae.config import load_config
from cmae.data.synth import STYLES, SynthSpec, write_synthetic_dataset
from cmae.demo import ATTENTIVE, DEMO_SPEC, PRESETS, PROBE, TASKS, _has_dataset, difference_se, save_random_init
from cmae.engine.runtime import read_metrics

SELECTION = 0.2  # the last fifth of the training clips: the probe's selection split (320 of 1,600)
FLOOR = "random floor"
# Fine-tuning on few clips (--finetune): 50 epochs (200 steps at 10 % of the 1,280), one view at test; ViC-MAE's
# low-label recipe (Table 9: no RandAugment, mixup or cutmix); no flips, which swap left and right, clockwise and
# anticlockwise (the SSv2 presets' data.hflip=false)
FINETUNE = ["finetune.epochs=50", "finetune.warmup_epochs=5", "eval.clips=1", "eval.crops=1", "finetune.randaug_n=0",
            "finetune.mixup=0", "finetune.cutmix=0", "data.hflip=false"]


def selection_lists(data: Path) -> tuple[Path, Path]:
    """`data/sel_train.txt` (the first 80 % of the training clips) and `data/sel_val.txt` (the rest)."""
    lines = (data / "train.txt").read_text().splitlines(keepends=True)
    cut = len(lines) - round(SELECTION * len(lines))
    train, select = data / "sel_train.txt", data / "sel_val.txt"
    train.write_text("".join(lines[:cut]))
    select.write_text("".join(lines[cut:]))
    return train, select


def spec_fields(items: list[str]) -> dict:
    """`--spec` items, `FIELD=VALUE` with a Python literal (`distractors=0`, `background_light_angle=240,300`)."""
    names = {field.name for field in dataclasses.fields(SynthSpec)}
    fields = {}
    for item in items:
        name, _, value = item.partition("=")
        if name not in names or not value:
            raise SystemExit(f"--spec {item!r}: need FIELD=VALUE, FIELD one of SynthSpec's ({', '.join(sorted(names))})")
        fields[name] = ast.literal_eval(value)
    return fields


def loss_curve(run: Path) -> tuple[float, float]:
    rows = [row for row in read_metrics(run / "metrics.jsonl") if "loss" in row]
    return rows[0]["loss"], min(row["loss"] for row in rows[-10:])


def data_set(output: Path, spec: SynthSpec) -> Path:
    """The spec's clips, in `output/data-STYLE[-OPTION VALUE...]` (the options that differ from the demo's)."""
    changed = [(field.name, getattr(spec, field.name)) for field in dataclasses.fields(spec)
               if field.name not in ("style", "num_train", "num_val")
               and getattr(spec, field.name) != getattr(DEMO_SPEC, field.name)]
    parts = [name + ("_".join(map(str, value)) if isinstance(value, tuple) else str(value)) for name, value in changed]
    data = output / re.sub(r"[^\w.-]", "", "-".join(["data", spec.style, *parts]))
    if not _has_dataset(data, spec):
        write_synthetic_dataset(data, spec)
    return data


def seed_rows(data: Path, lists: tuple[Path, Path], output: Path, args: argparse.Namespace, seed: int) -> list[dict]:
    """One seed: the random floor and videomae at each budget, each with its probes: table rows."""
    from cmae.engine.evaluate import frozen_evaluation
    from cmae.engine.pretrain import pretrain

    probe_train, probe_select = lists
    overrides = [f"train.seed={seed}", *args.overrides]
    probe = [f"data.train={probe_train}", f"data.val={probe_select}", *TASKS["motion"][2], *PROBE, *overrides]
    folder = output / data.name / f"seed{seed}"
    candidates = [(FLOOR, "-", save_random_init(PRESETS / "videomae.yaml", overrides, folder / "random"))]
    for epochs in args.epochs:
        config = load_config(PRESETS / "videomae.yaml", [f"data.train={data / 'train.txt'}",
                                                         f"train.epochs={epochs}", *overrides])
        run = folder / f"videomae-e{epochs}"
        pretrain(config, run, resume="auto")
        first, last = loss_curve(run)
        candidates.append((f"videomae, {epochs} epochs", f"{first:.3f} -> {last:.3f}", run / "checkpoint-last.pt"))
    rows = []
    for name, loss, checkpoint in candidates:
        row = {"encoder": name, "seed": seed, "loss": loss}
        evaluation = folder / "eval" / name.replace(" ", "-").replace(",", "")
        for protocol in args.protocols:
            extra = ATTENTIVE if protocol == "attnprobe" else []
            row[protocol] = frozen_evaluation(protocol, checkpoint, f"{evaluation}-{protocol}", None,
                                              [*probe, *extra])["top1"]
        if args.finetune:  # from the random floor's weights: fine-tuning from scratch
            settings = [*args.finetune_overrides, *(args.scratch_overrides if name == FLOOR else [])]
            row[finetune_column(args)] = finetuned_top1(checkpoint, f"{evaluation}-finetune", probe, args, settings)
        print(f"| {name} | {seed} | {loss} | " + " | ".join(f"{row[p]:.1f}" for p in columns(args)) + " |",
              flush=True)
        rows.append(row)
    return rows


def finetune_column(args: argparse.Namespace) -> str:
    return f"finetune {100 * args.finetune:g} %"


def columns(args: argparse.Namespace) -> list[str]:
    return [*args.protocols, *([finetune_column(args)] if args.finetune else [])]


def finetuned_top1(checkpoint: Path, folder: str, probe: list[str], args: argparse.Namespace,
                   settings: list[str]) -> float:
    """`cmae finetune` of the encoder on `args.finetune` of the probe's training clips, scored on its 320."""
    from cmae.engine.finetune import finetune

    overrides = [*probe, f"eval.label_fraction={args.finetune}", *FINETUNE, *settings]
    # a finished fine-tuning of the same overrides is reused
    output = Path(f"{folder}-{hashlib.sha1(' '.join(overrides).encode()).hexdigest()[:8]}")
    if not (output / "summary.json").is_file():
        finetune(checkpoint, output, None, overrides, overwrite=True)
    return json.loads((output / "summary.json").read_text())["top1"]


def summary_lines(rows: list[dict], protocols: list[str], num_val: int) -> list[str]:
    """Mean over seeds of each encoder and protocol, and its paired difference from the seed's random floor +- SE."""
    floors = {row["seed"]: row for row in rows if row["encoder"] == FLOOR}
    lines = ["| encoder | " + " | ".join(f"{p} mean | {p} - floor (SE)" for p in protocols) + " |",
             "| --- |" + " ---: | ---: |" * len(protocols)]
    for encoder in dict.fromkeys(row["encoder"] for row in rows):
        mine = [row for row in rows if row["encoder"] == encoder]
        cells = []
        for p in protocols:
            values = [row[p] for row in mine]
            differences = [row[p] - floors[row["seed"]][p] for row in mine]
            mean, floor = statistics.fmean(values), statistics.fmean(floors[row["seed"]][p] for row in mine)
            spread = statistics.stdev(differences) ** 2 / len(mine) if len(mine) > 1 else 0.0
            se = math.sqrt(spread + difference_se(mean, floor, num_val) ** 2)
            difference = "-" if encoder == FLOOR else f"{statistics.fmean(differences):+.1f} ({se:.1f})"
            cells.append(f"{mean:.1f} | {difference}")
        lines.append(f"| {encoder} | " + " | ".join(cells) + " |")
    return lines


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/data_budget")
    parser.add_argument("--style", choices=STYLES, default="natural")
    parser.add_argument("--object-size", nargs=2, type=float, default=list(DEMO_SPEC.object_size))
    parser.add_argument("--light", type=float, default=DEMO_SPEC.light)
    parser.add_argument("--leaf-shade", nargs=2, type=float, default=list(DEMO_SPEC.leaf_shade))
    parser.add_argument("--motion-scale", type=float, default=DEMO_SPEC.motion_scale)
    parser.add_argument("--leaf-outline", type=float, default=DEMO_SPEC.leaf_outline)
    parser.add_argument("--background-light", type=float, default=DEMO_SPEC.background_light)
    parser.add_argument("--spec", nargs="*", default=[], metavar="FIELD=VALUE", help="any other SynthSpec field")
    parser.add_argument("--epochs", nargs="*", type=int, default=[6, 12, 24])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="training seeds (the data stays the same)")
    parser.add_argument("--protocols", nargs="*", choices=("linprobe", "knn", "attnprobe"), default=["linprobe"])
    parser.add_argument("--finetune", type=float, default=0.0, help="also fine-tune every encoder on this fraction "
                        "of the probe's training clips (the random floor: from scratch); 0: no fine-tuning")
    parser.add_argument("--finetune-overrides", nargs="*", default=[], help="on top of FINETUNE")
    parser.add_argument("--scratch-overrides", nargs="*", default=[], help="on top of those, for the random floor only")
    parser.add_argument("--overrides", nargs="*", default=[], help="config overrides for pre-training and probes")
    parser.add_argument("--train-clips", type=int, default=DEMO_SPEC.num_train)
    args = parser.parse_args(argv)
    output = Path(args.output)
    spec = dataclasses.replace(DEMO_SPEC, style=args.style, object_size=tuple(args.object_size), light=args.light,
                               leaf_shade=tuple(args.leaf_shade), motion_scale=args.motion_scale,
                               leaf_outline=args.leaf_outline, background_light=args.background_light,
                               num_train=args.train_clips, num_val=8, **spec_fields(args.spec))
    data = data_set(output, spec)
    print(f"| encoder ({data.name}) | seed | loss first -> last | " + " | ".join(f"motion {c}" for c in columns(args))
          + " |")
    print("| --- | ---: | --- |" + " ---: |" * len(columns(args)))
    lists = selection_lists(data)  # written once: every seed probes the same clips
    rows = [row for seed in args.seeds for row in seed_rows(data, lists, output, args, seed)]
    if len(args.seeds) > 1:
        num_val = len((data / "sel_val.txt").read_text().splitlines())
        print("\n" + "\n".join(summary_lines(rows, columns(args), num_val)))


if __name__ == "__main__":
    main()
