"""Where in the token grid does an encoder keep motion? Linear probes on four poolings of the same frozen
tokens: their mean (the linear probe's feature), their max, their spread (the standard deviation of each
dimension over the grid) and mean and spread together.

    python benchmarks/pooled_readout.py --checkpoints RUN/checkpoint-last.pt random --config demo/videomae \
        data.train=DATA/sel_train.txt data.val=DATA/sel_val.txt data.num_frames=8 data.sampling_rate=2

A feature that one class moves one way and another the other way survives the mean; one whose sign is set by
the content (a moving edge's temporal change flips with its two colours: random polarity) averages to zero over
the grid and survives only in the spread. Same probe as `cmae linprobe` (`eval.probe_*`, the overrides), one
setting, on the tokens `cmae attnprobe` reads (cached next to the checkpoint and shared with it). About 40 s a
checkpoint on 2 CPU cores once its tokens are cached.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

POOLINGS = {
    "mean": lambda t: t.mean(1),
    "max": lambda t: t.amax(1),
    "spread": lambda t: t.std(1),
    "mean + spread": lambda t: torch.cat([t.mean(1), t.std(1)], 1),
}


def pooled_accuracies(checkpoint: str, config_path: str | None, overrides: list[str]) -> dict[str, float]:
    """Top-1 (%) of a linear probe on each pooling of the checkpoint's data.train tokens, scored on data.val's."""
    from cmae.engine.evaluate import cached_features
    from cmae.engine.loading import load_pretrained
    from cmae.engine.probes import linear_probe

    config, method = load_pretrained(checkpoint, config_path, overrides)
    cache = Path(checkpoint).parent / "features"
    (train_x, train_y, _), (val_x, val_y, _) = (
        cached_features(method.encoder, source, config, checkpoint, cache, "tokens")
        for source in (config.data.train, config.data.val))
    classes = int(max(train_y.max(), val_y.max())) + 1
    return {name: linear_probe(pool(train_x.float()), train_y, pool(val_x.float()), val_y, classes, config.eval,
                               config.train.seed)["top1"] for name, pool in POOLINGS.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoints", nargs="+", required=True, help="checkpoint files, or random (with --config)")
    parser.add_argument("--config", default=None, help="a preset: the random encoder's, or laid over a checkpoint's")
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="data.train, data.val, eval.probe_*, ...")
    args = parser.parse_args(argv)
    print("| encoder | " + " | ".join(f"linear probe on the {name}" for name in POOLINGS) + " |")
    print("| --- |" + " ---: |" * len(POOLINGS))
    for checkpoint in args.checkpoints:
        scores = pooled_accuracies(checkpoint, args.config if checkpoint == "random" else None, args.overrides)
        print(f"| {checkpoint} | " + " | ".join(f"{scores[name]:.1f}" for name in POOLINGS) + " |", flush=True)


if __name__ == "__main__":
    main()
