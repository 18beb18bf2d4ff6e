"""Run a function on a batch split over two real gloo processes and compare with one process.

`fn(*inputs) -> scalar loss` must be a module-level function (spawn pickles it by name)
whose loss is a mean over the batch, as DDP assumes.
"""

from __future__ import annotations

import math
import os
import socket

import torch
import torch.distributed as dist
import torch.multiprocessing as mp


def _sharded_worker(rank: int, world: int, port: int, fn, inputs: list, out: dict) -> None:
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    part = inputs[0].shape[0] // world
    local = [x[rank * part : (rank + 1) * part].clone().requires_grad_(True) for x in inputs]
    loss = fn(*local)
    loss.backward()
    # DDP averages the ranks' gradients; do the same by hand for the loss and the gradients
    total = loss.detach().clone()
    dist.all_reduce(total)
    out[rank] = (total.item() / world, [None if x.grad is None else x.grad / world for x in local])
    dist.destroy_process_group()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def run_sharded(fn, inputs: list) -> tuple[float, list]:
    """The loss (averaged over ranks) and the input gradients (concatenated in rank order)."""
    with mp.Manager() as manager:
        out = manager.dict()
        mp.spawn(_sharded_worker, args=(2, free_port(), fn, inputs, out), nprocs=2, join=True)
        results = dict(out)
    grads = [None if results[0][1][k] is None else torch.cat([results[0][1][k], results[1][1][k]])
             for k in range(len(inputs))]
    return results[0][0], grads


def assert_sharded_matches_whole(fn, inputs: list) -> None:
    """Two processes holding half the batch each give the loss and gradients of one holding all of it."""
    whole = [x.clone().requires_grad_(True) for x in inputs]
    loss = fn(*whole)
    loss.backward()
    sharded_loss, sharded_grads = run_sharded(fn, inputs)
    assert math.isclose(sharded_loss, loss.item(), rel_tol=1e-5)
    for x, grad in zip(whole, sharded_grads, strict=False):
        if x.grad is None:
            assert grad is None
            continue
        assert torch.allclose(grad, x.grad, atol=1e-6)
        assert x.grad.abs().sum() > 0
