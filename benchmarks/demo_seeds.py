"""The demo over several seeds: the README's demo table (mean +- std) and its claims.

    python benchmarks/demo_seeds.py                 # seeds 0 1 2, the demo's defaults (~30 min on 2 cores)
    python benchmarks/demo_seeds.py --seeds 0 --output /tmp/d
    python benchmarks/demo_seeds.py --attentive     # with the attentive probe's motion column (+ ~5 min a seed)

Each seed is a whole `cmae demo` (`train.seed=S`: the pre-training runs, their masks and
augmentations, and the random-init floors all change with it; the data set stays the same).
A claim's standard error combines the seed-to-seed spread of the difference (std / sqrt(n))
with the binomial error of the shared validation set, which more seeds do not shrink.
Finished seeds are reused; `--attentive` on a seed finished without it evaluates only the attentive
probe, on that seed's saved encoders: motion, for the video encoders its claims compare (on the colour of
single frames it reads 92-94 % for every encoder, random ones included: docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
from pathlib import Path

from cmae.demo import (
    CLAIMS,
    DEMO_EPOCHS,
    DEMO_SPEC,
    METHODS,
    PROTOCOLS,
    RANDOM_FLOORS,
    VIDEO_FLOOR,
    budget_text,
    claim_lines,
    difference_se,
    evaluate_encoder,
    run_demo,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/demo_seeds")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--attentive", action="store_true", help="add the attentive probe's motion column for the video "
                        "encoders (cmae attnprobe, lr chosen on a selection split; about 1.5 min per encoder on 2 cores, "
                        "too long for cmae demo itself)")
    args = parser.parse_args(argv)
    output = Path(args.output)
    runs: dict[int, list[dict]] = {}
    for seed in args.seeds:
        folder = output / f"seed{seed}"
        done = folder / "results.json"
        if not done.exists():
            run_demo(folder, overrides=[f"train.seed={seed}"], protocols=PROTOCOLS)
        runs[seed] = json.loads(done.read_text())
        if args.attentive and ATTENTIVE_COLUMN not in runs[seed][0]:
            runs[seed] = add_attentive(folder, runs[seed])
            done.write_text(json.dumps(runs[seed], indent=2))
    text = seed_table(runs)
    (output / "results.md").write_text(text)
    print(text)


ATTENTIVE_COLUMN = "motion attnprobe"
ATTENTIVE_ENCODERS = ("videomae", "cmae_v", VIDEO_FLOOR)  # the encoders of the attentive claims


def add_attentive(folder: Path, rows: list[dict]) -> list[dict]:
    """A finished seed's rows with the attentive probe's motion column for the video encoders, from the encoders
    `run_demo` saved there."""
    saved = {name: (name, folder / name / "checkpoint-last.pt") for name in METHODS}
    saved |= {label: (f"random-{preset}", folder / f"random-{preset}" / "checkpoint-init.pt")
              for label, preset in RANDOM_FLOORS.items()}
    return [row | evaluate_encoder(row["encoder"], *saved[row["encoder"]], folder / "data", folder, ("attnprobe",),
                                   ("motion",)) if row["encoder"] in ATTENTIVE_ENCODERS else row for row in rows]


def seed_table(runs: dict[int, list[dict]]) -> str:
    seeds = sorted(runs)
    encoders = [row["encoder"] for row in runs[seeds[0]]]
    columns = [key for key in runs[seeds[0]][0] if key != "encoder"]
    value = {(row["encoder"], column): [] for row in runs[seeds[0]] for column in columns}
    for seed in seeds:
        for row in runs[seed]:
            for column in columns:
                if column in row:  # the attentive column: the video encoders only
                    value[row["encoder"], column].append(row[column])
    n = len(seeds)

    def mean_std(values: list[float]) -> str:
        if not values:
            return "-"
        return f"{statistics.fmean(values):.1f} +- {statistics.stdev(values) if n > 1 else 0.0:.1f}"

    lines = [f"Top-1 accuracy (%), mean +- std over seeds {', '.join(map(str, seeds))} of `cmae demo` "
             f"({budget_text(DEMO_EPOCHS, DEMO_SPEC.num_train)}, {DEMO_SPEC.num_val} validation clips).", "",
             "| encoder | " + " | ".join(columns) + " |", "| --- | " + " | ".join("---:" for _ in columns) + " |"]
    lines += [f"| {e} | " + " | ".join(mean_std(value[e, c]) for c in columns) + " |" for e in encoders]
    means = [{"encoder": e, **{c: statistics.fmean(value[e, c]) for c in columns if value[e, c]}} for e in encoders]

    def se_of(claim, a: float, b: float) -> float:
        pairs = zip(value[claim.encoder, claim.column], value[claim.baseline, claim.against], strict=True)
        differences = [x - y for x, y in pairs]
        spread = statistics.stdev(differences) ** 2 / n if n > 1 else 0.0
        return math.sqrt(spread + difference_se(a, b, DEMO_SPEC.num_val) ** 2)

    lines += ["", f"Claims on the means (SE: seed spread of the difference / sqrt({n}), combined with the "
              "validation set's binomial error):", ""]
    lines += claim_lines(CLAIMS, means, se_of)
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
