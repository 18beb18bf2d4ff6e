"""kNN on frozen features (DINO's weighted vote), with the features normalised by training-set
statistics first (`eval.knn_normalize`).

MAE-type features have a few directions of large variance (and a large common mean) that
dominate the cosine: every sample looks like every other, and the kNN sits near chance for
trained and random encoders alike. Centring and scaling each dimension (the linear probe's
BatchNorm) or whitening them lets the cosine see the rest.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmae.engine.probes import topk_accuracy


def normalize_features(train_x: torch.Tensor, val_x: torch.Tensor, kind: str,
                       eps: float = 1e-6) -> tuple[torch.Tensor, torch.Tensor]:
    """`[N, D]`, `[M, D]` -> the same, normalised with the training set's statistics.

    none: as they are; batchnorm: minus the mean, over the standard deviation, per dimension;
    whiten: minus the mean, then rotated onto the principal axes and each scaled to unit variance
    (eps, per dimension in batchnorm and relative to the largest variance in whiten, keeps near-empty
    directions from blowing up: with fewer samples than dimensions most are empty).
    """
    if kind == "none":
        return train_x, val_x
    train_x, val_x = train_x.double(), val_x.double()
    mean = train_x.mean(dim=0)
    if kind == "batchnorm":
        std = (train_x.var(dim=0, unbiased=False) + eps).sqrt()
        return ((train_x - mean) / std).float(), ((val_x - mean) / std).float()
    centred = train_x - mean
    covariance = centred.T @ centred / len(train_x)
    values, vectors = torch.linalg.eigh(covariance)
    transform = vectors / (values.clamp(min=0) + eps * values.max().clamp(min=eps)).sqrt()
    return (centred @ transform).float(), ((val_x - mean) @ transform).float()


def knn_classify(
    train_x: torch.Tensor, train_y: torch.Tensor, val_x: torch.Tensor, val_y: torch.Tensor,
    num_classes: int, k: int = 20, temperature: float = 0.07, normalize: str = "none",
) -> dict[str, float]:
    """DINO's weighted kNN: cosine similarity, the k nearest training samples vote for their
    class with weight exp(similarity / temperature); features first normalised (`normalize_features`)."""
    train_x, val_x = normalize_features(train_x.float(), val_x.float(), normalize)
    train_x, val_x = F.normalize(train_x, dim=1), F.normalize(val_x, dim=1)
    k = min(k, len(train_x))
    scores = torch.zeros(len(val_x), num_classes)
    for start in range(0, len(val_x), 1024):
        similarity, index = (val_x[start : start + 1024] @ train_x.T).topk(k, dim=1)
        votes = F.one_hot(train_y[index], num_classes).float() * (similarity / temperature).exp()[..., None]
        scores[start : start + 1024] = votes.sum(dim=1)
    return topk_accuracy(scores, val_y)
