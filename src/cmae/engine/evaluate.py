"""Frozen-encoder evaluation: feature extraction (cached), linear probe, kNN, label fractions.

Features are the mean of the encoder's patch tokens (`eval.feature=cls` takes the class
token; `eval.feature=temporal` keeps time order: one spatial mean per token time step,
concatenated) of deterministic test views (`eval.clips` x `eval.crops`, averaged), computed once
per checkpoint and data set with the encoder in eval mode and no gradient, and cached
under the checkpoint's folder, so probes train on tensors in seconds.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import random
import warnings
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader

from cmae.config import Config, ConfigError, EvalConfig, InputError, reject_choice, save_config
from cmae.data.dataset import VideoDataset, decoded_items
from cmae.data.decoding import resolve_backend
from cmae.data.lists import Sample, check_same_classes, read_samples
from cmae.data.views import MultiViewClips
from cmae.engine.checkpoint import save_checkpoint
from cmae.engine.runtime import autocast, resolve_device, resolve_precision
from cmae.engine.schedule import cosine_with_warmup
from cmae.models.pooling import pool_tokens


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


def _cache_key(checkpoint: str | Path, samples: Sequence[Sample], config: Config) -> str:
    """Changes with the checkpoint file, every sample (path, label, size, modification time:
    a file replaced, added or relabelled in a list or an ImageFolder tree) and every
    setting that shapes a feature."""
    digest = hashlib.sha1()
    parts: list[Any] = [config.eval.feature, config.eval.clips, config.eval.crops, config.data.num_frames,
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
def feature_batches(encoder: nn.Module, samples: Sequence[Sample], config: Config, device: torch.device):
    """Yield (features `[b, D]`, labels `[b]`, indices into `samples` `[b]`) batch by batch, views
    averaged, undecodable files left out; the encoder in eval mode, under the run's autocast."""
    dtype = resolve_precision(config.train.precision, device)
    view = MultiViewClips(config.data, config.eval.clips, config.eval.crops)
    loader = DataLoader(VideoDataset(samples, view, backend=config.data.decoder),
                        batch_size=config.eval.batch_size, num_workers=config.data.num_workers)
    for batch in loader:
        clips = batch["video"].to(device)  # [B, V, C, T, H, W]
        b, v = clips.shape[:2]
        inputs = clips.flatten(0, 1)  # token order is time-major: [T', H', W']
        with autocast(device, dtype):
            tokens = encoder(inputs)
        time_steps = encoder.token_grid(inputs.shape)[0]
        pooled = pool_tokens(encoder, tokens, config.eval.feature, time_steps).float().reshape(b, v, -1).mean(1).cpu()
        decoded = decoded_items(batch)
        yield pooled[decoded], batch["label"][decoded], batch["index"][decoded]


def extract_features(
    encoder: nn.Module, samples: Sequence[Sample], config: Config, device: torch.device | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """Frozen features `[N', D]` and labels `[N']` of `samples`, views averaged.

    A file that cannot be decoded is left out (N' < N) with a warning that counts them:
    training may replace it by a neighbour, but an evaluation must not score a duplicate.
    """
    device = device or resolve_device(config.train.device)
    was_training = encoder.training
    encoder.eval().to(device)
    features, labels = [], []
    for pooled, label, _ in feature_batches(encoder, samples, config, device):
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
        raise InputError(f"{failed} of {total} files could not be decoded ({why}); the warnings above name "
                         "them (cmae prepare check LIST lists them all)")
    if failed:
        warnings.warn(f"{failed} of {total} files could not be decoded "
                      "and are left out of the evaluation (the warnings above name them)", stacklevel=3)


def cached_features(
    encoder: nn.Module, source: str, config: Config, checkpoint: str | Path, cache_dir: Path
) -> tuple[torch.Tensor, torch.Tensor, int]:
    """`extract_features` of a list file / ImageFolder, reusing `cache_dir/<key>.pt` when present.
    Returns features, labels and the number of files left out as undecodable."""
    samples = read_samples(source, config.data, labelled=True)
    use_cache = config.eval.cache and str(checkpoint) != "random"
    path = cache_dir / f"{_cache_key(checkpoint, samples, config)}.pt" if use_cache else None
    if path is not None and path.is_file():
        state = torch.load(path, weights_only=True)
        features, labels = state["features"], state["labels"]
    else:
        features, labels = extract_features(encoder, samples, config)
        if path is not None:
            cache_dir.mkdir(parents=True, exist_ok=True)
            save_checkpoint(path, {"features": features, "labels": labels, "source": str(source)})
    return features, labels, len(samples) - len(features)


def topk_accuracy(scores: torch.Tensor, labels: torch.Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Percent of rows whose label is among the k best scores (k capped at the class count)."""
    result = {}
    for k in ks:
        top = scores.topk(min(k, scores.shape[1]), dim=1).indices
        result[f"top{k}"] = 100.0 * (top == labels[:, None]).any(dim=1).float().mean().item()
    return result


def linear_probe(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
    num_classes: int, cfg: EvalConfig, seed: int = 0,
) -> dict[str, float]:
    """BatchNorm (no affine) + linear layer on frozen features (MAE / ViC-MAE Table 7).

    SGD with momentum 0.9, lr = probe_base_lr x batch / 256, per-iteration cosine schedule
    with linear warmup, weight decay `probe_weight_decay` (0). The BatchNorm trains its
    statistics on the training features and is in eval mode for the test features.
    """
    torch.manual_seed(seed)
    probe = nn.Sequential(nn.BatchNorm1d(train_x.shape[1], affine=False), nn.Linear(train_x.shape[1], num_classes))
    nn.init.trunc_normal_(probe[1].weight, std=0.01)
    nn.init.zeros_(probe[1].bias)
    batch = min(cfg.probe_batch_size, len(train_x))
    peak = cfg.probe_base_lr * batch / 256
    optimizer = torch.optim.SGD(probe.parameters(), lr=peak, momentum=0.9, weight_decay=cfg.probe_weight_decay)
    steps_per_epoch = math.ceil(len(train_x) / batch)
    total, warmup = cfg.probe_epochs * steps_per_epoch, cfg.probe_warmup_epochs * steps_per_epoch
    step = 0
    probe.train()
    for _ in range(cfg.probe_epochs):
        order = torch.randperm(len(train_x))
        for start in range(0, len(train_x), batch):
            index = order[start : start + batch]
            if len(index) < 2:  # BatchNorm needs two samples
                continue
            for group in optimizer.param_groups:
                group["lr"] = cosine_with_warmup(step, total, warmup, peak)
            loss = F.cross_entropy(probe(train_x[index]), train_y[index])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            step += 1
    probe.eval()
    with torch.no_grad():
        return topk_accuracy(probe(val_x), val_y)


def knn_classify(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
    num_classes: int, k: int = 20, temperature: float = 0.07,
) -> dict[str, float]:
    """DINO's weighted kNN: cosine similarity, the k nearest training samples vote for their
    class with weight exp(similarity / temperature)."""
    train_x, val_x = F.normalize(train_x.float(), dim=1), F.normalize(val_x.float(), dim=1)
    k = min(k, len(train_x))
    scores = torch.zeros(len(val_x), num_classes)
    for start in range(0, len(val_x), 1024):
        similarity, index = (val_x[start : start + 1024] @ train_x.T).topk(k, dim=1)
        votes = F.one_hot(train_y[index], num_classes).float() * (similarity / temperature).exp()[..., None]
        scores[start : start + 1024] = votes.sum(dim=1)
    return topk_accuracy(scores, val_y)


def frozen_evaluation(protocol: str, checkpoint: str | Path, output: str | Path,
                      config_path: str | Path | None = None, overrides: Sequence[str] = ()) -> dict[str, Any]:
    """`cmae linprobe` / `cmae knn`: features of data.train and data.val -> summary.json (top1, top5)."""
    from cmae.engine.loading import load_pretrained

    if protocol not in ("linprobe", "knn"):
        reject_choice("protocol", protocol, ("linprobe", "knn"))
    config, method = load_pretrained(checkpoint, config_path, overrides)
    check_evaluation_data(config, protocol)
    encoder = method.encoder
    cache_dir = Path(checkpoint).parent / "features"
    train_x, train_y, train_skipped = cached_features(encoder, config.data.train, config, checkpoint, cache_dir)
    val_x, val_y, val_skipped = cached_features(encoder, config.data.val, config, checkpoint, cache_dir)
    keep = balanced_fraction(train_y.tolist(), config.eval.label_fraction, config.eval.fraction_seed)
    train_x, train_y = train_x[keep], train_y[keep]
    num_classes = int(max(train_y.max(), val_y.max())) + 1
    if protocol == "linprobe":
        result = linear_probe(train_x, train_y, val_x, val_y, num_classes, config.eval, config.train.seed)
    else:
        result = knn_classify(train_x, train_y, val_x, val_y, num_classes, config.eval.knn_k,
                              config.eval.knn_temperature)
    summary = {**result, "protocol": protocol, "checkpoint": str(checkpoint), "train": config.data.train,
               "val": config.data.val, "num_train": len(train_x), "num_val": len(val_x),
               "skipped_train": train_skipped, "skipped_val": val_skipped,
               "num_classes": num_classes, "feature_dim": train_x.shape[1],
               "label_fraction": config.eval.label_fraction, "views": config.eval.clips * config.eval.crops}
    write_summary(output, config, summary)
    return summary


def write_summary(output: str | Path, config: Config, summary: dict[str, Any]) -> None:
    """An evaluation's folder: the config it ran with and its results."""
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    save_config(config, output / "config.yaml")
    (output / "summary.json").write_text(json.dumps(summary, indent=2))
