"""Sweeps of the contrastive methods' settings on the demo data, chosen on a selection split.

    python benchmarks/contrastive_sweep.py --method cmae_v --output runs/sweep \
        --point w1:method.con_weight=1 --point w0:method.con_weight=0
    python benchmarks/contrastive_sweep.py --method vic_mae --epochs 18 --output runs/sweep ...

The demo's data set (`cmae.demo.DEMO_SPEC`) is written once under OUTPUT/data. Its 1,600
*training* clips are split, seeded, into a fit part (80 %) and a selection part (20 %): the
probes train on the fit part and are scored on the selection part, so no setting is chosen on
the validation set (`--report-val` adds the validation columns, for the chosen settings only).
Pre-training uses all 1,600 training clips, as the demo does (their labels are never read).

Each point is one `cmae pretrain` of the method's demo preset with the point's overrides (the point
named `random`: the preset's random-init encoder, the floor), then:
- motion and colour linear probes (the demo's probe settings) on fit -> selection;
- own-view retrieval on the selection clips: features of frames 0, 2, ..., 14 cropped to the frame's
  top-left 7/8 against those of frames 1, 3, ..., 15 cropped to its bottom-right 7/8 (both resized
  back; one-frame encoders: frame 2 against frame 13); the
  percentage whose nearest neighbour (cosine) among all selection clips is their own clip
  (chance 1/320). High retrieval with a low label probe is a representation that identifies
  clips by traits the labels do not share;
- the run's first and last logged contrastive loss.
Finished points are reused; results go to OUTPUT/<method><tag>.md and .json.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

import torch
import torch.nn.functional as F

from cmae.config import load_config
from cmae.data.decoding import open_video
from cmae.data.lists import read_samples
from cmae.data.synth import write_synthetic_dataset
from cmae.demo import DEMO_EPOCHS, DEMO_SPEC, PRESETS, PROBE, TASKS, _has_dataset, save_random_init
from cmae.engine.evaluate import frozen_evaluation
from cmae.engine.loading import load_pretrained
from cmae.engine.pretrain import pretrain
from cmae.engine.runtime import read_metrics

SELECT_FRACTION = 0.2
RETRIEVAL_VIEWS = "two crops, one frame apart"  # points measured with another definition are measured again


def selection_split(data: Path, seed: int = 0) -> dict[str, tuple[Path, Path]]:
    """Per task, (fit list, selection list) written under data/select/ from the training lists:
    the same clips in both tasks' selection parts."""
    folder = data / "select"
    folder.mkdir(exist_ok=True)
    split = {}
    for task, (train, _, _) in TASKS.items():
        lines = (data / train).read_text().splitlines()
        order = list(range(len(lines)))
        random.Random(seed).shuffle(order)
        chosen = set(order[: round(SELECT_FRACTION * len(lines))])
        fit, select = folder / f"{task}_fit.txt", folder / f"{task}_select.txt"
        # paths in the lists are relative to the list's folder: point them back at data/
        fit.write_text("".join(f"../{line}\n" for i, line in enumerate(lines) if i not in chosen))
        select.write_text("".join(f"../{line}\n" for i, line in enumerate(lines) if i in chosen))
        split[task] = (fit, select)
    return split


@torch.no_grad()
def own_view_retrieval(checkpoint: Path, samples_list: Path) -> float:
    """Top-1 (%) of retrieving each clip's other temporal view among all clips' (see module docstring)."""
    config, method = load_pretrained(checkpoint, None, [])
    encoder = method.encoder.eval()
    one_frame = config.data.num_frames == 1
    mean = torch.tensor(config.data.mean).view(3, 1, 1, 1)
    std = torch.tensor(config.data.std).view(3, 1, 1, 1)
    samples = read_samples(str(samples_list), config.data, labelled=True)
    views = ([2], [13]) if one_frame else (list(range(0, 16, 2)), list(range(1, 16, 2)))
    size, crop = config.data.image_size, config.data.image_size * 7 // 8
    corners = (0, size - crop)  # view A: the top-left 7/8 of the frame, view B: the bottom-right
    features: list[list[torch.Tensor]] = [[], []]
    for sample in samples:
        with open_video(sample.path) as reader:
            for k, indices in enumerate(views):
                frames = reader.get_frames(indices).float() / 255  # [T, C, H, W]
                c = corners[k]
                frames = F.interpolate(frames[..., c:c + crop, c:c + crop], size=(size, size), mode="bilinear",
                                       antialias=True, align_corners=False)
                clip = (frames.permute(1, 0, 2, 3) - mean) / std
                tokens = encoder(clip[None])[:, encoder.num_prefix_tokens:]
                features[k].append(tokens.mean(1))
    a, b = (F.normalize(torch.cat(f), dim=1) for f in features)
    hits = (a @ b.T).argmax(dim=1) == torch.arange(len(a))
    return 100.0 * hits.float().mean().item()


def run_point(method: str, name: str, overrides: list[str], data: Path, split, output: Path, epochs: int,
              report_val: bool) -> dict:
    folder = output / method / name
    done = folder / "point.json"
    if done.is_file():
        row = json.loads(done.read_text())
        if row.get("retrieval_views") != RETRIEVAL_VIEWS:  # measured with an earlier definition: again
            row["retrieval"] = own_view_retrieval(folder / row.get("checkpoint", "checkpoint-last.pt"), split["motion"][1])
            row["retrieval_views"] = RETRIEVAL_VIEWS
            done.write_text(json.dumps(row, indent=2))
        return row
    if name == "random":  # the floor: the preset's random-init encoder
        checkpoint = save_random_init(PRESETS / f"{method}.yaml", overrides, folder)
        row = {"point": name, "overrides": overrides, "checkpoint": checkpoint.name}
    else:
        config = load_config(PRESETS / f"{method}.yaml",
                             [f"data.train={data / 'train.txt'}", f"train.epochs={epochs}", *overrides])
        summary = pretrain(config, folder, overwrite=True)  # no point.json: unfinished, again
        checkpoint = folder / "checkpoint-last.pt"
        row = {"point": name, "overrides": overrides, "seconds": summary.get("seconds")}
    for task, (_, val, task_overrides) in TASKS.items():
        fit, select = split[task]
        pairs = [("select", select)] + ([("val", data / val)] if report_val else [])
        for part, target in pairs:
            result = frozen_evaluation("linprobe", checkpoint, folder / "eval" / f"{task}-{part}", None,
                                       [f"data.train={fit}", f"data.val={target}", *task_overrides, *PROBE])
            row[f"{task} {part}"] = result["top1"]
    row["retrieval"] = own_view_retrieval(checkpoint, split["motion"][1])
    row["retrieval_views"] = RETRIEVAL_VIEWS
    metrics = [m for m in read_metrics(folder / "metrics.jsonl") if "loss_con" in m] if name != "random" else []
    if metrics:
        row["loss_con first"], row["loss_con last"] = metrics[0]["loss_con"], metrics[-1]["loss_con"]
    done.write_text(json.dumps(row, indent=2))
    return row


def table(rows: list[dict]) -> str:
    hidden = ("point", "overrides", "seconds", "checkpoint", "retrieval_views")
    columns = []
    for row in rows:
        columns += [c for c in row if c not in columns and c not in hidden]
    lines = ["| point | overrides | " + " | ".join(columns) + " |",
             "| --- | --- | " + " | ".join("---:" for _ in columns) + " |"]
    for row in rows:
        values = [f"{row[c]:.1f}" if isinstance(row.get(c), float) and "loss" not in c
                  else (f"{row[c]:.3f}" if c in row else "") for c in columns]
        lines.append(f"| {row['point']} | `{' '.join(row['overrides'])}` | " + " | ".join(values) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--method", required=True, choices=sorted(DEMO_EPOCHS))
    parser.add_argument("--output", default="runs/sweep")
    parser.add_argument("--epochs", type=int, default=0, help="0: the demo's budget for the method")
    parser.add_argument("--point", action="append", default=[], help="NAME:key=value,key=value (repeatable)")
    parser.add_argument("--tag", default="", help="results go to OUTPUT/<method><tag>.md (default: none)")
    parser.add_argument("--report-val", action="store_true", help="also score on the validation set")
    args = parser.parse_args(argv)
    output = Path(args.output)
    data = output / "data"
    if not _has_dataset(data, DEMO_SPEC):
        write_synthetic_dataset(data, DEMO_SPEC)
    split = selection_split(data)
    epochs = args.epochs or DEMO_EPOCHS[args.method]
    rows = []
    for point in args.point:
        name, _, rest = point.partition(":")
        rows.append(run_point(args.method, name, [o for o in rest.split(",") if o], data, split, output, epochs,
                              args.report_val))
        print(table(rows), flush=True)
    (output / f"{args.method}{args.tag}.json").write_text(json.dumps(rows, indent=2))
    (output / f"{args.method}{args.tag}.md").write_text(table(rows))


if __name__ == "__main__":
    main()
