"""`cmae demo`: every method on the synthetic action data, equal wall-time budgets, one results table.

synth -> pre-train videomae, cmae_v, vic_mae and mae (single frames) with the same encoder
size and batch, for about the same wall time each -> linear probe and kNN of each, and of
random-init encoders (the floor), on the motion label (8-frame clips) and the main object's
colour (single frames) -> `results.md` and a printed table, `losses.png` (loss curves),
`reconstruction.png` (and `reconstruction-neighbours.png`).
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from cmae.config import load_config
from cmae.data.synth import COLOR_CLASSES, MOTION_CLASSES, SynthSpec, write_synthetic_dataset

PRESETS = Path(__file__).resolve().parent / "configs" / "demo"
METHODS = ("videomae", "cmae_v", "vic_mae", "mae")
# The floors: random-init encoders of both shapes (tubelet 2 video encoder, tubelet 1 image encoder).
RANDOM_FLOORS = {"random-init (video encoder)": "videomae", "random-init (image encoder)": "mae"}
VIDEO_FLOOR, IMAGE_FLOOR = RANDOM_FLOORS
# Evaluation inputs: motion needs clips; the colour label (appearance) is judged on single frames.
TASKS = {
    "motion": ("train.txt", "val.txt", ["data.num_frames=8", "data.sampling_rate=2"]),
    "color": ("train_color.txt", "val_color.txt", ["data.num_frames=1"]),
}
CHANCE = {"motion": 100 / len(MOTION_CLASSES), "color": 100 / len(COLOR_CLASSES)}
# Video budgets equal in wall time (docs/results.md, "The demo"): on 2 CPU cores 6 epochs of videomae
# (300 steps of 32 clips) take about as long as 3 of cmae_v. The frame-level pair, vic_mae against mae,
# gets equal steps (900), a rule fixed before its sweep, so that their difference is the method's and
# not its budget's.
# The whole demo stays under 10 minutes.
DEMO_EPOCHS = {"videomae": 6, "cmae_v": 3, "vic_mae": 18, "mae": 18}
# Distractors share the main object's shape and colours, so a frame's appearance labels are unambiguous.
DEMO_SPEC = SynthSpec(num_train=1600, num_val=640, same_shape_distractors=True, same_color_distractors=True)
PROBE = ["eval.probe_epochs=100", "eval.probe_batch_size=256", "eval.probe_warmup_epochs=10"]
# The frozen protocols of the table. The attentive probe (`attnprobe`) reads more, but its token grids and
# training cost about 1.5 min per encoder and task on 2 cores, which the 10-minute demo cannot hold:
# benchmarks/demo_seeds.py --attentive adds its motion column.
PROTOCOLS = ("linprobe", "knn")
# The attentive probe at V-JEPA's lr (1e-3) undertrains on the demo's 1,280 clips (400 steps): on a selection
# split of the training clips every encoder reads more at 3e-3 or 1e-2 (docs/results.md), so the columns choose
# the lr per encoder there, as `eval.probe_grid` is built to.
ATTENTIVE = ["eval.probe_grid=[[1e-3,3e-3,1e-2],[0.01]]", "eval.select_fraction=0.2"]
# train.monitor during pre-training: the linear probe on 96 training and 64 validation samples of the task the
# method is built for (clips for the video methods, frames for the frame-level ones), twice per run
MONITOR = {"videomae": "motion", "cmae_v": "motion", "vic_mae": "color", "mae": "color"}
MONITOR_SIZES = (96, 64)


@dataclass(frozen=True)
class Claim:
    """`encoder` beats `baseline` on `column` by at least `margin` points and by more than
    `min_se` standard errors: what each method is built to learn."""

    text: str
    column: str
    encoder: str
    baseline: str
    margin: float = 0.0
    min_se: float = 0.0
    baseline_column: str = ""  # the baseline's column when it is another protocol's (default: `column`)

    @property
    def against(self) -> str:
        return self.baseline_column or self.column

    def check(self, difference: float, se: float) -> bool:
        return difference >= self.margin and difference > self.min_se * se


CLAIMS = (
    Claim("videomae learns motion", "motion linprobe", "videomae", VIDEO_FLOOR, margin=8),
    Claim("cmae_v learns motion", "motion linprobe", "cmae_v", VIDEO_FLOOR, margin=8, min_se=2),
    # CMAE-V's claim: its contrastive term adds to VideoMAE (the goal is a difference of at least 0)
    Claim("cmae_v's term adds motion to videomae", "motion linprobe", "cmae_v", "videomae"),
    Claim("cmae_v's term adds colour to videomae", "color linprobe", "cmae_v", "videomae"),
    Claim("mae learns appearance", "color linprobe", "mae", IMAGE_FLOOR, margin=8),
    Claim("vic_mae learns appearance", "color linprobe", "vic_mae", IMAGE_FLOOR, margin=8),
    Claim("vic_mae's positives teach appearance beyond mae", "color linprobe", "vic_mae", "mae", min_se=2),
    # with the attentive columns (benchmarks/demo_seeds.py --attentive)
    Claim("videomae learns motion (attentive probe)", "motion attnprobe", "videomae", VIDEO_FLOOR),
    Claim("cmae_v learns motion (attentive probe)", "motion attnprobe", "cmae_v", VIDEO_FLOOR),
    Claim("the attentive probe reads more than the linear one", "motion attnprobe", "videomae", "videomae",
          baseline_column="motion linprobe"),
)


def difference_se(a: float, b: float, num_val: int) -> float:
    """Standard error (points) of the difference of two top-1 accuracies (%) on `num_val`
    samples each, taken as independent binomials (conservative: both use the same samples)."""
    pa, pb = a / 100, b / 100
    return 100 * math.sqrt((pa * (1 - pa) + pb * (1 - pb)) / num_val)


def claim_lines(claims: Sequence[Claim], rows: list[dict], se_of: Callable[[Claim, float, float], float]) -> list[str]:
    """A markdown table of the claims whose encoders are in `rows`: difference, standard error, verdict."""
    by_name = {row["encoder"]: row for row in rows}
    lines = ["| claim | difference (points) | SE | margin in SE | holds |", "| --- | ---: | ---: | ---: | --- |"]
    for claim in claims:
        if claim.encoder not in by_name or claim.baseline not in by_name or claim.column not in by_name[claim.encoder] \
                or claim.against not in by_name[claim.baseline]:
            continue
        a, b = by_name[claim.encoder][claim.column], by_name[claim.baseline][claim.against]
        difference, se = a - b, se_of(claim, a, b)
        need = " and ".join(x for x in (f">= {claim.margin:g} points" if claim.margin else "",
                                        f"> {claim.min_se:g} SE" if claim.min_se else "") if x) or ">= 0 points"
        against = f" - {claim.baseline}, {claim.column}" if claim.against == claim.column else \
            f" {claim.column} - {claim.baseline} {claim.against}"
        lines.append(f"| {claim.text}: {claim.encoder}{against} (needs {need}) | "
                     f"{difference:+.1f} | {se:.1f} | {difference / se:+.1f} | "
                     f"{'yes' if claim.check(difference, se) else 'no'} |")
    return lines


def log(message: str) -> None:
    print(f"[demo] {message}", flush=True)


def method_epochs(epochs: int | Mapping[str, int] | None, name: str) -> int:
    """One number for every method, a per-method mapping, or None: the demo's wall-time budgets."""
    if epochs is None:
        return DEMO_EPOCHS[name]
    return epochs if isinstance(epochs, int) else epochs[name]


def run_demo(output: str | Path, epochs: int | Mapping[str, int] | None = None, methods: Sequence[str] = METHODS,
             spec: SynthSpec = DEMO_SPEC, overrides: Sequence[str] = (),
             protocols: Sequence[str] = PROTOCOLS) -> list[dict]:
    """Run the whole comparison; returns the table rows (also written to results.md)."""
    from cmae.engine.pretrain import pretrain
    from cmae.visualize import plot_runs, visualize

    output, started = Path(output), time.time()
    data = output / "data"
    if not _has_dataset(data, spec):
        log(f"writing the synthetic action data set to {data}")
        write_synthetic_dataset(data, spec)
    runs, budgets = {}, {}
    for name in methods:
        budgets[name] = method_epochs(epochs, name)
        config = load_config(PRESETS / f"{name}.yaml", [f"data.train={data / 'train.txt'}", f"train.epochs={budgets[name]}",
                                                        *monitor_overrides(data, name, budgets[name]), *overrides])
        log(f"pre-training {name} ({config.model.name}, {budgets[name]} epochs)")
        t = time.time()
        summary = pretrain(config, output / name, overwrite=True)  # a demo run again: the old runs move aside
        runs[name] = output / name / "checkpoint-last.pt"
        log(f"{name}: loss {summary['first']['loss']:.4f} -> {summary['last']['loss']:.4f} in {time.time() - t:.0f}s")

    # A floor is built from its preset (so it takes the demo's overrides too) and saved once,
    # so that its features are extracted once per label and cached like a trained encoder's.
    candidates = [(name, name, runs[name]) for name in methods]
    candidates += [(label, f"random-{preset}", save_random_init(PRESETS / f"{preset}.yaml", overrides,
                                                                output / f"random-{preset}"))
                   for label, preset in RANDOM_FLOORS.items()]
    rows = [evaluate_encoder(label, folder, checkpoint, data, output, protocols)
            for label, folder, checkpoint in candidates]

    plot_runs([output / name for name in methods], output / "losses.png")
    first_clip = (data / "val.txt").read_text().split()[0]
    # VideoMAE's own visualisation de-normalises the predicted (normalised) patches with each
    # patch's true mean and spread; the second figure uses only visible neighbours' statistics.
    visualize(runs[methods[0]], data / first_clip, output / "reconstruction.png", true_stats=True)
    visualize(runs[methods[0]], data / first_clip, output / "reconstruction-neighbours.png")
    table = results_table(rows, budgets, spec, time.time() - started)
    (output / "results.md").write_text(table)
    (output / "results.json").write_text(json.dumps(rows, indent=2))
    print(table, flush=True)
    return rows


def save_random_init(preset: Path, overrides: Sequence[str], folder: Path) -> Path:
    """The random-init method of `preset` (seeded by train.seed, as `--checkpoint random`) as a
    checkpoint file: `folder/checkpoint-init.pt`."""
    from cmae.engine.checkpoint import save_checkpoint
    from cmae.engine.loading import load_pretrained

    config, method = load_pretrained("random", preset, list(overrides))
    path = folder / "checkpoint-init.pt"
    folder.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": method.state_dict(), "config": config.to_dict()})
    return path


def monitor_overrides(data: Path, name: str, epochs: int) -> list[str]:
    """`train.monitor` on small lists of the method's task (written once next to the data): at mid-run and
    at the end."""
    train, val, _ = TASKS[MONITOR[name]]
    lists = []
    for source, size in zip((train, val), MONITOR_SIZES, strict=True):
        subset = data / f"monitor-{source}"
        if not subset.is_file():
            subset.write_text("".join((data / source).read_text().splitlines(keepends=True)[:size]))
        lists.append(subset)
    return [f"train.monitor.every_epochs={max(1, epochs // 2)}", f"train.monitor.train={lists[0]}",
            f"train.monitor.val={lists[1]}", "train.monitor.protocol=linprobe"]


def evaluate_encoder(label: str, folder: str, checkpoint: Path, data: Path, output: Path,
                     protocols: Sequence[str] = PROTOCOLS, tasks: Sequence[str] = tuple(TASKS)) -> dict:
    """The frozen protocols of one encoder on each task: a table row."""
    from cmae.engine.evaluate import frozen_evaluation

    row = {"encoder": label}
    for task in tasks:
        train, val, task_overrides = TASKS[task]
        for protocol in protocols:
            summary = frozen_evaluation(
                protocol, checkpoint, output / "eval" / f"{folder}-{task}-{protocol}", None,
                [f"data.train={data / train}", f"data.val={data / val}", *task_overrides, *PROBE,
                 *(ATTENTIVE if protocol == "attnprobe" else [])],
            )
            row[f"{task} {protocol}"] = summary["top1"]
    log(f"evaluated {label}")
    return row


def _has_dataset(data: Path, spec: SynthSpec) -> bool:
    """True when `data` already holds the synthetic set of exactly this spec (reused, not rewritten)."""
    try:
        # through JSON on both sides: tuples come back as lists
        return json.loads((data / "meta.json").read_text())["spec"] == json.loads(json.dumps(asdict(spec)))
    except (OSError, ValueError, KeyError):
        return False


def budget_text(budgets: Mapping[str, int], num_train: int) -> str:
    """"videomae 6, cmae_v 3 ... epochs on N clips"."""
    return ", ".join(f"{name} {n}" for name, n in budgets.items()) + f" pre-training epochs on {num_train} clips"


def results_table(rows: list[dict], budgets: Mapping[str, int], spec: SynthSpec, seconds: float) -> str:
    columns = [key for key in rows[0] if key != "encoder"]
    chance = ", ".join(f"{CHANCE[task]:.1f} % {task}" for task in TASKS)
    lines = [
        f"Top-1 accuracy (%) on the synthetic validation set ({spec.num_val} clips; chance {chance}), "
        f"after {budget_text(budgets, spec.num_train)}; {seconds / 60:.1f} min.",
        "",
        "| encoder | " + " | ".join(columns) + " |",
        "| --- | " + " | ".join("---:" for _ in columns) + " |",
    ]
    lines += ["| " + row["encoder"] + " | " + " | ".join(f"{row[c]:.1f}" for c in columns) + " |" for row in rows]
    lines += ["", "What each method is built to learn (SE: binomial standard error of the difference on "
              f"{spec.num_val} clips):", ""]
    lines += claim_lines(CLAIMS, rows, lambda claim, a, b: difference_se(a, b, spec.num_val))
    return "\n".join(lines) + "\n"
