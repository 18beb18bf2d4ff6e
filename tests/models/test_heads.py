"""Projector/predictor heads: BatchNorm statistics over the global batch."""

import torch
from torch import nn

from cmae.models.heads import GlobalBatchNorm1d, MLPHead
from tests.sharded import assert_sharded_matches_whole, run_sharded


def head_loss(x, global_bn=True):
    torch.manual_seed(0)  # the same head on every rank
    return MLPHead(6, [12], 4, global_bn)(x).pow(2).mean()


def per_rank_head_loss(x):
    return head_loss(x, global_bn=False)


def test_global_batchnorm_over_two_processes_matches_one():
    """Statistics over the global batch: same loss and input gradients as one process."""
    torch.manual_seed(1)
    assert_sharded_matches_whole(head_loss, [torch.randn(8, 6) * 2 + 1])


def test_per_rank_batchnorm_differs_from_one_process():
    """The option it replaces really differs (so the test above can fail)."""
    torch.manual_seed(1)
    x = torch.randn(8, 6) * 2 + 1
    sharded, _ = run_sharded(per_rank_head_loss, [x])
    assert abs(sharded - per_rank_head_loss(x).item()) > 1e-4


def test_global_batchnorm_is_batchnorm_in_one_process():
    torch.manual_seed(0)
    x = torch.randn(5, 3)
    plain, synced = nn.BatchNorm1d(3), GlobalBatchNorm1d(3)
    assert torch.allclose(plain(x), synced(x))
    assert torch.allclose(plain.running_mean, synced.running_mean)
    assert set(plain.state_dict()) == set(synced.state_dict())

