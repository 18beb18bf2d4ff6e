"""Losses against hand-computed values, and InfoNCE across two real gloo processes."""

import math

import torch

from cmae.losses import (
    cross_view_info_nce,
    global_info_nce,
    info_nce,
    reconstruction_loss,
    simsiam_loss,
    symmetric_info_nce,
    vicreg_terms,
)
from tests.sharded import assert_sharded_matches_whole


def test_reconstruction_loss_by_hand():
    pred = torch.tensor([[[1.0, 2.0], [0.0, 0.0], [3.0, 3.0]]])  # [1, 3, 2]
    target = torch.tensor([[[0.0, 0.0], [5.0, 5.0], [1.0, 2.0]]])
    masked = torch.tensor([[True, False, True]])
    # token 0: (1 + 4) / 2 = 2.5; token 2: (4 + 1) / 2 = 2.5; token 1 is visible and ignored
    assert torch.isclose(reconstruction_loss(pred, target, masked), torch.tensor(2.5))


def test_no_gradient_from_visible_predictions():
    pred = torch.randn(2, 6, 4, requires_grad=True)
    target = torch.randn(2, 6, 4)
    masked = torch.tensor([[True, False, True, False, True, False], [False] * 5 + [True]])
    reconstruction_loss(pred, target, masked).backward()
    assert (pred.grad[~masked] == 0).all()
    assert (pred.grad[masked].abs().sum(dim=-1) > 0).all()


def test_info_nce_by_hand():
    query = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    keys = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    # cosines: q0.k0 = 1, q0.k1 = 1/sqrt2; q1.k0 = 0, q1.k1 = 1/sqrt2
    s = 1 / math.sqrt(2)
    loss0 = -math.log(math.exp(1 / tau) / (math.exp(1 / tau) + math.exp(s / tau)))
    loss1 = -math.log(math.exp(s / tau) / (math.exp(0) + math.exp(s / tau)))
    assert math.isclose(info_nce(query, keys, tau).item(), (loss0 + loss1) / 2, rel_tol=1e-6)
    assert math.isclose(global_info_nce(query, keys, tau).item(), (loss0 + loss1) / 2, rel_tol=1e-6)


# Losses of a batch split over two real gloo processes (module level, so spawn can find them).
def sharded_global_info_nce(query, keys):
    return global_info_nce(query, keys, 0.1)


def sharded_symmetric_info_nce(z1, z2):
    return symmetric_info_nce(z1, z2, 0.2)


def sharded_cross_view_info_nce(z1, z2):
    return cross_view_info_nce(z1, z2, 0.3)


def sharded_vicreg(p, z):
    return sum(vicreg_terms(p, z).values())


def test_global_info_nce_two_processes_match_one():
    torch.manual_seed(0)
    assert_sharded_matches_whole(sharded_global_info_nce, [torch.randn(8, 16), torch.randn(8, 16)])


def test_symmetric_info_nce_by_hand():
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    z2 = torch.tensor([[1.0, 1.0], [-1.0, 1.0]])
    tau = 0.5
    s = 1 / math.sqrt(2)
    # anchors [a0, a1, b0, b1] with a = z1, b = normalised z2; candidates exclude the anchor itself
    sim = {("a0", "a1"): 0.0, ("a0", "b0"): s, ("a0", "b1"): -s, ("a1", "b0"): s, ("a1", "b1"): s,
           ("b0", "b1"): 0.0}
    sim.update({(k[1], k[0]): v for k, v in list(sim.items())})
    names = ["a0", "a1", "b0", "b1"]
    positive = {"a0": "b0", "a1": "b1", "b0": "a0", "b1": "a1"}
    total = 0.0
    for anchor in names:
        denominator = sum(math.exp(sim[(anchor, other)] / tau) for other in names if other != anchor)
        total += -math.log(math.exp(sim[(anchor, positive[anchor])] / tau) / denominator)
    assert math.isclose(symmetric_info_nce(z1, z2, tau).item(), total / 4, rel_tol=1e-6)


def test_vicreg_statistics_over_two_processes_match_one():
    torch.manual_seed(0)
    assert_sharded_matches_whole(sharded_vicreg, [torch.randn(8, 4) * 0.3, torch.randn(8, 4) * 0.3])


def test_symmetric_info_nce_two_processes_match_one():
    """Gathering with gradient: same loss and same gradients as one process with the whole batch."""
    torch.manual_seed(0)
    assert_sharded_matches_whole(sharded_symmetric_info_nce, [torch.randn(6, 8), torch.randn(6, 8)])


def test_simsiam_stops_the_target_gradient():
    p = torch.randn(4, 8, requires_grad=True)
    z = torch.randn(4, 8, requires_grad=True)
    loss = simsiam_loss(p, z)
    loss.backward()
    assert z.grad is None and p.grad.abs().sum() > 0
    assert math.isclose(simsiam_loss(z, z).item(), 0.0, abs_tol=1e-6)


def test_vicreg_terms_by_hand():
    p = torch.tensor([[0.0, 2.0], [2.0, 0.0]])
    z = torch.tensor([[0.0, 0.0], [2.0, 2.0]])
    terms = vicreg_terms(p, z, eps=0.0)
    assert math.isclose(terms["invariance"].item(), (0 + 4 + 0 + 4) / 4)
    # p: per-dim var (unbiased) = 2 -> std sqrt2 > 1, no hinge; z: var 2 likewise
    assert math.isclose(terms["variance"].item(), 0.0, abs_tol=1e-6)
    # cov(p) off-diagonal = -2, cov(z) off-diagonal = +2: (2 * 4) / 2 per matrix
    assert math.isclose(terms["covariance"].item(), 8.0, rel_tol=1e-6)


def test_cross_view_info_nce_by_hand():
    """Algorithm 1: ctr(p, z) + ctr(z, p), candidates from the other view only."""
    z1 = torch.tensor([[1.0, 0.0], [0.0, 2.0]])
    z2 = torch.tensor([[3.0, 0.0], [1.0, 1.0]])
    tau = 0.5
    s = 1 / math.sqrt(2)
    sim = [[1.0, s], [0.0, s]]  # sim[i][j] = cos(z1_i, z2_j)

    def ce(row, target):
        return -math.log(math.exp(row[target] / tau) / sum(math.exp(v / tau) for v in row))

    forward = (ce(sim[0], 0) + ce(sim[1], 1)) / 2
    backward = (ce([sim[0][0], sim[1][0]], 0) + ce([sim[0][1], sim[1][1]], 1)) / 2
    assert math.isclose(cross_view_info_nce(z1, z2, tau).item(), forward + backward, rel_tol=1e-6)


def test_cross_view_info_nce_two_processes_match_one():
    torch.manual_seed(0)
    assert_sharded_matches_whole(sharded_cross_view_info_nce, [torch.randn(6, 8), torch.randn(6, 8)])


def without_same_video(loss_of_row, ids: list[int]) -> float:
    """Mean over queries i of `loss_of_row(i, kept)`, kept = candidates j from other videos, plus i itself."""
    rows = [loss_of_row(i, [j for j in range(len(ids)) if ids[j] != ids[i] or j == i]) for i in range(len(ids))]
    return sum(rows) / len(rows)


def test_repeats_of_one_video_are_not_negatives_of_each_other():
    torch.manual_seed(0)
    ids = [0, 0, 1, 2, 2, 2]  # data.repeat: samples of one video side by side
    query, keys = torch.randn(6, 8), torch.randn(6, 8)

    def row(i, kept):
        return info_nce(query[i : i + 1], keys[kept], 0.2, torch.tensor([kept.index(i)])).item()

    expected = without_same_video(row, ids)
    assert math.isclose(global_info_nce(query, keys, 0.2, torch.tensor(ids)).item(), expected, rel_tol=1e-6)
    assert global_info_nce(query, keys, 0.2).item() > expected  # more negatives without the ids

    def cross_row(i, kept):  # both directions, each over the other view's candidates
        return row(i, kept) + info_nce(keys[i : i + 1], query[kept], 0.2, torch.tensor([kept.index(i)])).item()

    cross = cross_view_info_nce(query, keys, 0.2, torch.tensor(ids)).item()
    assert math.isclose(cross, without_same_video(cross_row, ids), rel_tol=1e-6)


def sharded_symmetric_info_nce_with_ids(z1, z2, ids):
    return symmetric_info_nce(z1, z2, 0.2, ids.detach())


def test_symmetric_info_nce_with_repeats_two_processes_match_one():
    torch.manual_seed(0)
    ids = torch.tensor([0.0, 0.0, 1.0, 1.0, 2.0, 3.0])  # one repeated video on each rank's half
    z1, z2 = torch.randn(6, 8), torch.randn(6, 8)
    assert_sharded_matches_whole(sharded_symmetric_info_nce_with_ids, [z1, z2, ids])
    assert symmetric_info_nce(z1, z2, 0.2, ids).item() < symmetric_info_nce(z1, z2, 0.2).item()
