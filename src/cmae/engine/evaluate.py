"""Frozen-encoder evaluation: feature extraction (cached), linear probe, kNN, label fractions.

Features are the mean of the encoder's patch tokens (`eval.feature=cls` takes the class
token; `eval.feature=temporal` keeps time order: one spatial mean per token time step,
concatenated) of deterministic test views (`eval.clips` x `eval.crops`, averaged), computed once
per checkpoint and data set with the encoder in eval mode and no gradient, and cached
under the checkpoint's folder, so probes train on tensors in seconds.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import random
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader

from cmae.config import Config, ConfigError, InputError, reject_choice, save_config
from cmae.data.dataset import VideoDataset, decoded_items
from cmae.data.decoding import resolve_backend
from cmae.data.lists import Sample, check_same_classes, read_samples
from cmae.data.views import ClipView, MultiViewClips
from cmae.engine.checkpoint import save_checkpoint
from cmae.engine.knn import knn_classify
from cmae.engine.probes import (
    grid_settings,
    linear_probe,
    make_heads,
    probe_scores,
    topk_accuracy,
    train_probes,
)
from cmae.engine.runtime import autocast, resolve_device, resolve_precision, undecodable
from cmae.models.pooling import pool_tokens

__all__ = ["balanced_fraction", "cached_features", "extract_features", "frozen_evaluation", "knn_classify",
           "linear_probe", "topk_accuracy"]
PROTOCOLS = ("linprobe", "attnprobe", "knn")


def balanced_fraction(labels: Sequence[int], fraction: float, seed: int = 0) -> list[int]:
    """Indices of a seeded, class-balanced `fraction` of the samples (at least one per class)."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"eval.label_fraction must lie in (0, 1], got {fraction}")
    if fraction == 1.0:
        return list(range(len(labels)))
    by_class: dict[int, list[int]] = defaultdict(list)
    for index, label in enumerate(labels):
        by_class[label].append(index)
    rng = random.Random(seed)
    chosen: list[int] = []
    for label in sorted(by_class):
        members = by_class[label]
        chosen += rng.sample(members, max(1, round(fraction * len(members))))
    return sorted(chosen)


def check_evaluation_data(config: Config, protocol: str) -> None:
    """Raise ConfigError unless data.train and data.val are set and, as ImageFolder trees,
    name the same classes."""
    if not config.data.train or not config.data.val:
        raise ConfigError(f"{protocol} needs data.train and data.val (list files or ImageFolder trees)")
    check_same_classes(config.data.train, config.data.val)


def _decoder_in_use(backend: str) -> str:
    """The backend "auto" stands for here: decoders may round frames (colour conversion)
    differently, so installing torchcodec must not serve features PyAV decoded."""
    try:
        return resolve_backend(backend)
    except (RuntimeError, ValueError):  # no video backend (images only) or a bad name the decode reports
        return backend


def _cache_key(checkpoint: str | Path, samples: Sequence[Sample], config: Config, readout: str | None = None) -> str:
    """Changes with the checkpoint file, every sample (path, label, size, modification time:
    a file replaced, added or relabelled in a list or an ImageFolder tree) and every
    setting that shapes a feature."""
    digest = hashlib.sha1()
    parts: list[Any] = [readout or config.eval.feature, config.eval.clips, config.eval.crops, config.data.num_frames,
                        config.data.sampling_rate, config.data.temporal_sampling, config.data.image_size,
                        config.data.test_crop_ratio, config.data.mean, config.data.std,
                        _decoder_in_use(config.data.decoder)]
    parts.append(str(Path(checkpoint).resolve()))
    for path in [Path(checkpoint), *(sample.path for sample in samples)]:
        try:
            stat = os.stat(path)  # one system call per file: fine for hundreds of thousands
            parts += [str(path), stat.st_mtime_ns, stat.st_size]
        except OSError:  # a missing file is part of the data set's state too
            parts += [str(path), None]
    parts += [sample.label for sample in samples]
    digest.update(json.dumps(parts, default=str).encode())
    return digest.hexdigest()[:16]


@torch.no_grad()
def feature_batches(encoder: nn.Module, samples: Sequence[Sample], config: Config, device: torch.device,
                    readout: str | None = None, view: Any = None):
    """Yield (features `[b, D]`, labels `[b]`, indices into `samples` `[b]`) batch by batch, views
    averaged, undecodable files left out; the encoder in eval mode, under the run's autocast.
    `readout`: `eval.feature` by default; "tokens" yields the patch-token grids `[b, N, D]` in fp16
    (the attentive probe's input; fp16 halves a cache that is N times the pooled one). `view`: the test
    views by default; a one-clip view (`ClipView`) gives one feature per sample."""
    dtype = resolve_precision(config.train.precision, device)
    view = view or MultiViewClips(config.data, config.eval.clips, config.eval.crops)
    loader = DataLoader(VideoDataset(samples, view, backend=config.data.decoder),
                        batch_size=config.eval.batch_size, num_workers=config.data.num_workers)
    for batch in loader:
        clips = batch["video"].to(device)
        clips = clips[:, None] if clips.dim() == 5 else clips  # [B, V, C, T, H, W]
        b, v = clips.shape[:2]
        inputs = clips.flatten(0, 1)  # token order is time-major: [T', H', W']
        with autocast(device, dtype):
            tokens = encoder(inputs)
        if readout == "tokens":
            patches = tokens[:, encoder.num_prefix_tokens:].float()
            pooled = patches.reshape(b, v, *patches.shape[1:]).mean(1).half().cpu()
        else:
            time_steps = encoder.token_grid(inputs.shape)[0]
            pooled = pool_tokens(encoder, tokens, config.eval.feature, time_steps).float().reshape(b, v, -1).mean(1).cpu()
        decoded = decoded_items(batch)
        yield pooled[decoded], batch["label"][decoded], batch["index"][decoded]


def extract_features(
    encoder: nn.Module, samples: Sequence[Sample], config: Config, device: torch.device | None = None,
    readout: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features `[N', D]` (token grids `[N', L, D]` for readout "tokens") and labels `[N']`
    of `samples`, views averaged.

    A file that cannot be decoded is left out (N' < N) with a warning that counts them:
    training may replace it by a neighbour, but an evaluation must not score a duplicate.
    """
    device = device or resolve_device(config.train.device)
    was_training = encoder.training
    encoder.eval().to(device)
    features, labels = [], []
    for pooled, label, _ in feature_batches(encoder, samples, config, device, readout):
        features.append(pooled)
        labels.append(label)
    encoder.train(was_training)
    features, labels = torch.cat(features), torch.cat(labels)
    check_decode_failures(len(samples) - len(features), len(samples), config.data.max_failed_fraction)
    return features, labels


def check_decode_failures(failed: int, total: int, limit: float) -> None:
    """Stop an evaluation when more than `limit` (data.max_failed_fraction, pre-training's threshold)
    of its `total` files could not be decoded, and warn below it: a score over the files left is
    not the data set's score."""
    if failed and (failed > limit * total or failed == total):  # none left: nothing to score, whatever the limit
        why = f"{failed / total:.1%} > data.max_failed_fraction={limit:.1%}" if failed > limit * total else "none left"
        raise undecodable(failed, total, why)
    if failed:
        warnings.warn(f"{failed} of {total} files could not be decoded "
                      "and are left out of the evaluation (the warnings above name them)", stacklevel=3)


def cached_features(
    encoder: nn.Module, source: str, config: Config, checkpoint: str | Path, cache_dir: Path,
    readout: str | None = None,
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`extract_features` of a list file / ImageFolder, reusing `cache_dir/<key>.pt` when present.
    Returns features, labels and the number of files left out as undecodable."""
    samples = read_samples(source, config.data, labelled=True)
    use_cache = config.eval.cache and str(checkpoint) != "random"
    path = cache_dir / f"{_cache_key(checkpoint, samples, config, readout)}.pt" if use_cache else None
    if path is not None and path.is_file():
        state = torch.load(path, weights_only=True)
        features, labels = state["features"], state["labels"]
    else:
        features, labels = extract_features(encoder, samples, config, readout=readout)
        if path is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, {"features": features, "labels": labels, "source": str(source)})
    return features, labels, len(samples) - len(features)


def frozen_evaluation(protocol: str, checkpoint: str | Path, output: str | Path,
                      config_path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """`cmae linprobe` / `attnprobe` / `knn`: features of data.train -> the probe (a grid's winner chosen on the
    selection split) or the kNN -> scored on data.val's features -> summary.json (top1, top5)."""
    from cmae.engine.loading import load_pretrained

    if protocol not in PROTOCOLS:
        reject_choice("protocol", protocol, PROTOCOLS)
    config, method = load_pretrained(checkpoint, config_path, overrides)
    check_evaluation_data(config, protocol)
    cache_dir = Path(checkpoint).parent / "features"
    readout = "tokens" if protocol == "attnprobe" else None

    def features(source: str) -> tuple[torch.Tensor, torch.Tensor, int]:
        return cached_features(method.encoder, source, config, checkpoint, cache_dir, readout)

    train_x, train_y, train_skipped = features(config.data.train)
    keep = balanced_fraction(train_y.tolist(), config.eval.label_fraction, config.eval.fraction_seed)
    train_x, train_y = train_x[keep], train_y[keep]
    stream = None
    if config.eval.probe_augment and protocol != "knn":
        if train_skipped:
            raise InputError(f"eval.probe_augment needs every file of data.train decodable ({train_skipped} are not)")
        samples = read_samples(config.data.train, config.data, labelled=True)
        stream = augmented_stream(method.encoder, [samples[i] for i in keep], config, readout)
    val_labels = [sample.label for sample in read_samples(config.data.val, config.data, labelled=True)]
    num_classes = max(int(train_y.max()), *val_labels) + 1
    if protocol == "knn":
        val_x, val_y, val_skipped = features(config.data.val)
        result = knn_classify(train_x, train_y, val_x, val_y, num_classes, config.eval.knn_k,
                              config.eval.knn_temperature, config.eval.knn_normalize)
        result["knn_normalize"] = config.eval.knn_normalize
    else:
        heads, result = probe_grid(protocol, train_x, train_y, num_classes, config, stream)
        # data.val is read only now, and scored only for the chosen setting
        val_x, val_y, val_skipped = features(config.data.val)
        result.update(topk_accuracy(probe_scores(heads[result["chosen"]["index"]], val_x), val_y))
    summary = {**result, "protocol": protocol, "checkpoint": str(checkpoint), "train": config.data.train,
               "val": config.data.val, "num_train": len(train_x), "num_val": len(val_x),
               "skipped_train": train_skipped, "skipped_val": val_skipped,
               "num_classes": num_classes, "feature_dim": train_x.shape[-1],
               "label_fraction": config.eval.label_fraction, "views": config.eval.clips * config.eval.crops}
    write_summary(output, config, summary)
    return summary


def augmented_stream(encoder: nn.Module, samples: Sequence[Sample], config: Config, readout: str | None):
    """`eval.probe_augment`: `(fit, epoch, batch) ->` batches of features of augmented clips of `samples[fit]`
    (the pre-training crop and flip, one clip each), in a seeded fresh order each epoch."""
    device = resolve_device(config.train.device)
    view = ClipView(config.data, train=True)

    def stream(fit: Sequence[int], epoch: int, batch: int):
        encoder.eval().to(device)
        order = torch.randperm(len(fit), generator=torch.Generator().manual_seed(config.train.seed + epoch))
        batched = dataclasses.replace(config, eval=dataclasses.replace(config.eval, batch_size=batch))
        for features, labels, _ in feature_batches(encoder, [samples[fit[i]] for i in order], batched, device,
                                                   readout, view):
            yield features, labels

    return stream


def probe_grid(protocol: str, x: torch.Tensor, y: torch.Tensor, num_classes: int, config: Config,
               stream=None) -> tuple[list[nn.Module], dict[str, Any]]:
    """Train every `eval.probe_grid` setting (or the one of `eval.*`) on the training features minus the
    selection split (`eval.select_fraction`), all together (on `stream`'s augmented clips when given);
    score each on that split and choose the best (the first of equals). -> the trained heads and
    {"grid": [...], "chosen": {...}} (no data.val in sight)."""
    kind = "linear" if protocol == "linprobe" else "attentive"
    cfg = config.eval
    select = balanced_fraction(y.tolist(), cfg.select_fraction, cfg.fraction_seed + 1) if cfg.select_fraction else []
    fit = sorted(set(range(len(y))) - set(select))
    settings = grid_settings(kind, cfg)
    heads = make_heads(kind, len(settings), x.shape[-1], num_classes, cfg, config.train.seed)
    train_probes(heads, settings, x[fit], y[fit], kind, cfg,
                 None if stream is None else functools.partial(stream, fit))
    grid = []
    for index, (head, setting) in enumerate(zip(heads, settings, strict=True)):
        score = topk_accuracy(probe_scores(head, x[select]), y[select])["top1"] if select else None
        grid.append({"index": index, "lr": setting.lr, "weight_decay": setting.weight_decay, "select_top1": score})
    best = max(grid, key=lambda row: (row["select_top1"] or 0.0, -row["index"]))
    return heads, {"grid": grid, "chosen": best, "select_fraction": cfg.select_fraction,
                   "num_select": len(select), "probe": kind}


def write_summary(output: str | Path, config: Config, summary: dict[str, Any]) -> None:
    """An evaluation's folder: the config it ran with and its results."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.yaml")
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
