"""kNN on frozen features, normalised by the training set's statistics."""

import pytest
import torch

from cmae.engine.knn import knn_classify, normalize_features


def nuisance_set(seed=0):
    """Class in 4 small dimensions, plus a large shared offset and large random directions (as MAE
    features have) that make the raw cosine near-blind."""
    generator = torch.Generator().manual_seed(seed)
    y = torch.arange(240) % 4
    x = torch.randn(240, 12, generator=generator) * 0.3
    x[:, :4] += torch.eye(4)[y]
    x[:, 4:8] = 50 + 20 * torch.randn(240, 4, generator=generator)
    return x[:160], y[:160], x[160:], y[160:]


@pytest.mark.parametrize("kind", ["batchnorm", "whiten"])
def test_normalised_features_use_training_statistics(kind):
    train_x, _, val_x, _ = nuisance_set()
    train_n, val_n = normalize_features(train_x, val_x, kind)
    torch.testing.assert_close(train_n.mean(0), torch.zeros(12), atol=1e-4, rtol=0)
    if kind == "batchnorm":
        torch.testing.assert_close(train_n.var(0, unbiased=False), torch.ones(12), atol=1e-3, rtol=0)
    else:
        covariance = train_n.T @ train_n / len(train_n)
        torch.testing.assert_close(covariance, torch.eye(12), atol=1e-2, rtol=0)
    # val is transformed with the training set's numbers, not its own
    assert abs(val_n.mean().item()) > 1e-3 and not torch.equal(val_n, normalize_features(val_x, val_x, kind)[1])


def test_normalising_lets_the_knn_see_the_class():
    train_x, train_y, val_x, val_y = nuisance_set()
    raw = knn_classify(train_x, train_y, val_x, val_y, 4, k=10)["top1"]
    assert raw < 50
    for kind in ("batchnorm", "whiten"):
        assert knn_classify(train_x, train_y, val_x, val_y, 4, k=10, normalize=kind)["top1"] > 75, kind
