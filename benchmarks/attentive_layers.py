"""Where the attentive probe reads its answer: the probe on every layer's tokens of each encoder, scored on a
selection split of the training list (the validation list is never read).

    python benchmarks/attentive_layers.py --train DEMO/train.txt \
        --encoder videomae=DEMO/videomae/checkpoint-last.pt --encoder random=random:demo/videomae \
        data.num_frames=8 data.sampling_rate=2 [--jepa PATH_TO_facebookresearch_jepa_CHECKOUT]

Layer 0 is the patch embedding plus position code (a linear map of each tubelet's pixels), layer i the output
of block i, and "final" the normed output every protocol reads. Probes: `eval.attn_*` with each lr of `--lrs`
(weight decay `eval.attn_weight_decay`), trained on the training list minus a class-balanced `--select`
fraction (with `--fraction`, on that share of them only: fewer labels) and scored on the selection
fraction; one test view per clip. `--final-only` probes the final tokens alone. With `--jepa`, V-JEPA's own
`AttentiveClassifier` (imported from that checkout, not part of cmae) is trained the same way on the final
tokens: a peer check of cmae's probe.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F

from cmae.data.lists import read_samples
from cmae.engine.evaluate import balanced_fraction, extract_features
from cmae.engine.loading import load_pretrained
from cmae.engine.probes import ProbeSetting, make_heads, probe_scores, topk_accuracy, train_probes
from cmae.engine.schedule import cosine_with_warmup


def layer_tokens(spec: str, train: str, overrides: list[str]):
    """(config, [token grids `[N, L, D]` fp16 per layer: embedding, blocks..., final], labels `[N]`)."""
    checkpoint, _, preset = spec.partition(":")
    config, method = load_pretrained(checkpoint, preset or None, [*overrides, "eval.clips=1", "eval.crops=1"])
    encoder, captured = method.encoder, []
    hooks = [encoder.blocks[0].register_forward_pre_hook(lambda _, args: captured.append((0, args[0])))]
    hooks += [block.register_forward_hook(lambda _, __, out, i=i: captured.append((i, out)))
              for i, block in enumerate(encoder.blocks, 1)]
    try:
        final, labels = extract_features(encoder, read_samples(train, config.data), config, readout="tokens")
    finally:
        for hook in hooks:
            hook.remove()
    prefix = encoder.num_prefix_tokens
    layers = [torch.cat([out[:, prefix:].half() for i, out in captured if i == layer])
              for layer in range(len(encoder.blocks) + 1)]
    if any(len(layer) != len(final) for layer in layers):
        raise RuntimeError("some clips could not be decoded: the layers' rows no longer match")
    return config, [*layers, final], labels


def split(labels: torch.Tensor, select_fraction: float, fit_fraction: float, seed: int) -> tuple[list[int], list[int]]:
    """(fit, select) indices: the selection split `eval.probe_grid` carves (seed `eval.fraction_seed` + 1), and
    `fit_fraction` of the rest, class-balanced as `eval.label_fraction` draws it (seed `eval.fraction_seed`)."""
    select = balanced_fraction(labels.tolist(), select_fraction, seed + 1)
    rest = sorted(set(range(len(labels))) - set(select))
    return [rest[i] for i in balanced_fraction(labels[rest].tolist(), fit_fraction, seed)], select


def cmae_probe(config, x, y, fit, select, lrs) -> list[float]:
    settings = [ProbeSetting(lr, config.eval.attn_weight_decay) for lr in lrs]
    heads = make_heads("attentive", len(settings), x.shape[-1], int(y.max()) + 1, config.eval, config.train.seed)
    train_probes(heads, settings, x[fit], y[fit], "attentive", config.eval)
    return [topk_accuracy(probe_scores(head, x[select]), y[select])["top1"] for head in heads]


def jepa_probe(config, x, y, fit, select, lr: float) -> float:
    """V-JEPA's AttentiveClassifier (1 query, depth 1) with cmae's optimiser: AdamW, cosine to 0, no warm-up
    (V-JEPA's frozen-eval configs), `eval.attn_epochs` and `eval.attn_batch_size`."""
    from src.models.attentive_pooler import AttentiveClassifier

    cfg = config.eval
    torch.manual_seed(config.train.seed)
    head = AttentiveClassifier(embed_dim=x.shape[-1], num_heads=cfg.attn_heads, depth=1, num_classes=int(y.max()) + 1)
    optimizer = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=cfg.attn_weight_decay)
    xf, yf = x[fit].float(), y[fit]
    total, step = cfg.attn_epochs * math.ceil(len(fit) / cfg.attn_batch_size), 0
    for _ in range(cfg.attn_epochs):
        order = torch.randperm(len(fit))
        for start in range(0, len(fit), cfg.attn_batch_size):
            batch = order[start : start + cfg.attn_batch_size]
            for group in optimizer.param_groups:
                group["lr"] = cosine_with_warmup(step, total, 0, lr)
            loss = F.cross_entropy(head(xf[batch]), yf[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    with torch.no_grad():
        return topk_accuracy(head.eval()(x[select].float()), y[select])["top1"]


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--train", required=True, help="the labelled training list")
    parser.add_argument("--encoder", action="append", required=True, help="NAME=PATH or NAME=random:PRESET")
    parser.add_argument("--lrs", type=lambda text: [float(lr) for lr in text.split(",")], default=[1e-3, 3e-3, 1e-2],
                        help="comma-separated (default 1e-3,3e-3,1e-2)")
    parser.add_argument("--select", type=float, default=0.2, help="selection fraction of the training list")
    parser.add_argument("--fraction", type=float, default=1.0, help="train the probes on this class-balanced "
                        "fraction of the clips outside the selection split (fewer labels)")
    parser.add_argument("--final-only", action="store_true", help="probe the final tokens only")
    parser.add_argument("--jepa", type=Path, help="a facebookresearch/jepa checkout: adds V-JEPA's own probe")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    if args.jepa:
        sys.path.insert(0, str(args.jepa))
    lr_text = " | ".join(f"lr {lr:g}" for lr in args.lrs)
    print(f"Attentive probe, selection top-1 (%) on {args.select:.0%} of {args.train}, trained on {args.fraction:.0%} "
          "of the rest\n")
    print(f"| encoder | layer | {lr_text} |\n| --- | --- |" + " ---: |" * len(args.lrs))
    for encoder in args.encoder:
        name, spec = encoder.split("=", 1)
        config, layers, labels = layer_tokens(spec, args.train, args.overrides)
        fit, select = split(labels, args.select, args.fraction, config.eval.fraction_seed)
        for index, tokens in enumerate(layers):
            if args.final_only and index < len(layers) - 1:
                continue
            layer = "final" if index == len(layers) - 1 else "embedding" if index == 0 else f"block {index}"
            scores = cmae_probe(config, tokens, labels, fit, select, args.lrs)
            print(f"| {name} | {layer} | " + " | ".join(f"{s:.1f}" for s in scores) + " |", flush=True)
        if args.jepa:
            scores = [jepa_probe(config, layers[-1], labels, fit, select, lr) for lr in args.lrs]
            print(f"| {name} | final, V-JEPA's AttentiveClassifier | " + " | ".join(f"{s:.1f}" for s in scores) + " |",
                  flush=True)


if __name__ == "__main__":
    main()
