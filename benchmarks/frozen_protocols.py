"""Frozen protocols side by side on trained and random encoders: kNN (each `eval.knn_normalize`),
the mean-pooled linear probe and the attentive probe, from one feature pass per encoder.

    python benchmarks/frozen_protocols.py --data /tmp/sweep/data \
        --encoder cmae_v=/tmp/d27/cmae_v/checkpoint-last.pt --encoder random=random:demo/cmae_v \
        --task motion=train.txt,val.txt --task colour=train_color.txt,val_color.txt,1

Each encoder's token grids (the attentive probe's input, fp16, views averaged) are extracted once per
list; the mean feature is their mean over tokens (what `eval.feature=mean` pools, up to fp16 rounding).
`--subset N` keeps the first N training clips (the probes' cost on 2 cores). Prints a markdown table.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from cmae.data.lists import read_samples
from cmae.engine.evaluate import extract_features
from cmae.engine.knn import knn_classify
from cmae.engine.loading import load_pretrained
from cmae.engine.probes import grid_settings, linear_probe, make_heads, probe_scores, topk_accuracy, train_probes


def encoder_features(spec: str, data: Path, lists: list[str], overrides: list[str]):
    """{list name: (token grids [N, L, D] fp16, labels [N])} of one encoder ("PATH" or "random:PRESET")."""
    checkpoint, _, preset = spec.partition(":")
    config, method = load_pretrained(checkpoint, preset or None, overrides)
    out = {}
    for name in lists:
        out[name] = extract_features(method.encoder, read_samples(str(data / name), config.data), config,
                                     readout="tokens")
    return config, out


def protocols(config, train, val, subset: int) -> dict[str, float]:
    """top1 of kNN (none / batchnorm / whiten), linear probe (mean) and attentive probe, and the seconds each took."""
    (tx, ty), (vx, vy) = train, val
    if subset:
        tx, ty = tx[:subset], ty[:subset]
    classes = int(max(ty.max(), vy.max())) + 1
    mean_t, mean_v = tx.float().mean(1), vx.float().mean(1)
    row = {}
    for kind in ("none", "batchnorm", "whiten"):
        row[f"knn {kind}"] = knn_classify(mean_t, ty, mean_v, vy, classes, config.eval.knn_k,
                                          config.eval.knn_temperature, kind)["top1"]
    started = time.time()
    row["linear"] = linear_probe(mean_t, ty, mean_v, vy, classes, config.eval, config.train.seed)["top1"]
    row["linear s"] = time.time() - started
    started = time.time()
    heads = make_heads("attentive", 1, tx.shape[-1], classes, config.eval, config.train.seed)
    train_probes(heads, grid_settings("attentive", config.eval), tx, ty, "attentive", config.eval)
    row["attentive"] = topk_accuracy(probe_scores(heads[0], vx), vy)["top1"]
    row["attentive s"] = time.time() - started
    return row


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--encoder", action="append", required=True, help="NAME=PATH or NAME=random:PRESET")
    parser.add_argument("--task", action="append", required=True, help="NAME=TRAIN,VAL[,NUM_FRAMES]")
    parser.add_argument("--subset", type=int, default=0, help="first N training clips only (0: all)")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    print("| encoder | task | kNN none | kNN batchnorm | kNN whiten | linear (mean) | attentive | probe s (lin / attn) |")
    print("| --- | --- | --- | --- | --- | --- | --- | --- |")
    for encoder in args.encoder:
        name, spec = encoder.split("=", 1)
        for task in args.task:
            task_name, files = task.split("=", 1)
            train, val, *frames = files.split(",")
            extra = [f"data.num_frames={frames[0]}"] if frames else []
            config, feats = encoder_features(spec, args.data, [train, val], [*args.overrides, *extra])
            row = protocols(config, feats[train], feats[val], args.subset)
            print(f"| {name} | {task_name} | {row['knn none']:.1f} | {row['knn batchnorm']:.1f} | "
                  f"{row['knn whiten']:.1f} | {row['linear']:.1f} | {row['attentive']:.1f} | "
                  f"{row['linear s']:.0f} / {row['attentive s']:.0f} |", flush=True)


if __name__ == "__main__":
    main()
