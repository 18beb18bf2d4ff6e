"""Losses against hand-computed values, and InfoNCE across two real gloo processes."""

import math
import os

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from cmae.losses import global_info_nce, info_nce, reconstruction_loss


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


def _worker(rank: int, world: int, port: int, query: torch.Tensor, keys: torch.Tensor, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    half = query.shape[0] // world
    local_query = query[rank * half : (rank + 1) * half].clone().requires_grad_(True)
    loss = global_info_nce(local_query, keys[rank * half : (rank + 1) * half], 0.1)
    loss.backward()
    # DDP would average the ranks' gradients; do the same by hand for the loss and the grads
    mean_loss = loss.detach().clone()
    dist.all_reduce(mean_loss)
    out[rank] = (mean_loss.item() / world, local_query.grad / world)
    dist.destroy_process_group()


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_two_process_gather_matches_one_process():
    torch.manual_seed(0)
    query, keys = torch.randn(8, 16), torch.randn(8, 16)
    full_query = query.clone().requires_grad_(True)
    full = global_info_nce(full_query, keys, 0.1)
    full.backward()
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_worker, args=(2, free_port(), query, keys, out), nprocs=2, join=True)
        results = dict(out)
    assert math.isclose(results[0][0], full.item(), rel_tol=1e-5)
    grads = torch.cat([results[0][1], results[1][1]])
    assert torch.allclose(grads, full_query.grad, atol=1e-6)
    assert grads.abs().sum() > 0
