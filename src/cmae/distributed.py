"""torchrun/DDP helpers that are no-ops in a single process."""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1


def first_host(nodelist: str) -> str:
    """The first host of a SLURM host list: `gpu[003-004,9],cpu1` -> `gpu003` (padding kept)."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\])?", nodelist.strip())
    if match is None or not match.group(1):
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: not a SLURM host list")
    prefix, ranges = match.groups()
    if ranges is None:
        return prefix
    first = ranges.split(",")[0].split("-")[0]
    if not first.isdigit():
        raise ValueError(f"SLURM_JOB_NODELIST={nodelist!r}: cannot read the range {ranges!r}")
    return prefix + first


def _slurm_int(name: str) -> int:
    value = os.environ[name]
    try:
        return int(value)
    except ValueError:
        raise ValueError(f"{name}={value!r} is not an integer") from None


def environment_from_slurm() -> None:
    """Under `srun` without torchrun, set torchrun's variables from SLURM's: RANK = SLURM_PROCID,
    WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK = SLURM_LOCALID, MASTER_ADDR = the first host of
    SLURM_JOB_NODELIST, MASTER_PORT = $MASTER_PORT or 20000 + SLURM_JOB_ID mod 20000 (so that
    two jobs sharing a node use different ports). torchrun's own variables win when present."""
    slurm = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST")
    if "WORLD_SIZE" in os.environ or not all(name in os.environ for name in slurm):
        return
    os.environ.update(RANK=str(_slurm_int("SLURM_PROCID")), WORLD_SIZE=str(_slurm_int("SLURM_NTASKS")),
                      LOCAL_RANK=str(_slurm_int("SLURM_LOCALID")))
    os.environ.setdefault("MASTER_ADDR", first_host(os.environ["SLURM_JOB_NODELIST"]))
    if "MASTER_PORT" not in os.environ:
        job = _slurm_int("SLURM_JOB_ID") if "SLURM_JOB_ID" in os.environ else 0
        os.environ["MASTER_PORT"] = str(20000 + job % 20000)


def init_distributed(device: torch.device) -> DistInfo:
    """Join the process group torchrun (or, without it, SLURM's `srun`) describes in the environment.

    On CUDA the group has two backends: NCCL for CUDA tensors (gradients, gathered
    embeddings) and gloo for the small CPU tensors the loop reduces (loss logs, decode
    failure counts, RNG states), so neither has to be copied to the GPU first.
    """
    environment_from_slurm()
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return DistInfo()
    if not dist.is_initialized():
        dist.init_process_group(backend="cpu:gloo,cuda:nccl" if device.type == "cuda" else "gloo")
    return DistInfo(dist.get_rank(), dist.get_world_size(), int(os.environ.get("LOCAL_RANK", "0")))


def is_dist() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: torch.Tensor) -> torch.Tensor:
    """Sum over ranks (a copy; the input is left alone)."""
    values = values.clone()
    if is_dist():
        dist.all_reduce(values)
    return values


def all_true(flag: bool) -> bool:
    """True on every rank only if `flag` is true on every rank (so all ranks stop together)."""
    if not is_dist():
        return flag
    value = torch.tensor([0.0 if flag else 1.0])
    dist.all_reduce(value)
    return value.item() == 0


def gather_objects(obj):
    """Every rank's picklable `obj`, in rank order (a one-element list without a group)."""
    if not is_dist():
        return [obj]
    objects = [None] * dist.get_world_size()
    dist.all_gather_object(objects, obj)
    return objects


def barrier() -> None:
    if is_dist():
        dist.barrier()


def cleanup() -> None:
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def rank_and_world() -> tuple[int, int]:
    return (dist.get_rank(), dist.get_world_size()) if is_dist() else (0, 1)


@torch.no_grad()
def gather_no_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `[B, ...]` from every rank in rank order -> `[W*B, ...]`; no gradient."""
    if not is_dist():
        return x
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts)


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Like `gather_no_grad`, but gradients flow back to the rank that owns each slice."""
    if not is_dist():
        return x
    from torch.distributed.nn.functional import all_gather

    return torch.cat(all_gather(x.contiguous()))
