"""torchrun/SLURM/DDP helpers that are no-ops in a single process."""

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


# One host-list entry: name parts and bracketed ranges, up to the first top-level comma.
_HOST_ENTRY = re.compile(r"(?:[^,\[\]]+|\[[^\[\]]*\])+")
_RANGES = re.compile(r"[0-9]+(?:-[0-9]+)?(?:,[0-9]+(?:-[0-9]+)?)*")
SLURM_VARIABLES = ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID", "SLURM_JOB_NODELIST")


def first_host(nodelist: str, variable: str = "SLURM_JOB_NODELIST") -> str:
    """The first host of a SLURM host list: `gpu-a[01-03],gpu-b5` -> `gpu-a01` (padding kept).

    Parsed here rather than with `scontrol show hostnames`, which containers often lack.
    """
    text = nodelist.strip()
    entry = _HOST_ENTRY.match(text)
    if entry is None or text.startswith("[") or text[entry.end() : entry.end() + 1] not in ("", ","):
        raise ValueError(f"{variable}={nodelist!r}: not a SLURM host list")

    def first_of(ranges: re.Match) -> str:
        if not _RANGES.fullmatch(ranges.group(1)):
            raise ValueError(f"{variable}={nodelist!r}: cannot read the range [{ranges.group(1)}]")
        return re.split("[,-]", ranges.group(1))[0]

    return re.sub(r"\[([^\]]*)\]", first_of, entry.group())


def _slurm_int(name: str) -> int:
    """A SLURM count or id; strict (`int()` would also take "1_0" or " 1")."""
    value = os.environ[name]
    if not re.fullmatch(r"[0-9]+", value):
        raise ValueError(f"{name}={value!r} is not an integer")
    return int(value)


def environment_from_slurm() -> None:
    """Under `srun` without torchrun, set torchrun's variables from SLURM's, so that env:// works.

    RANK = SLURM_PROCID, WORLD_SIZE = SLURM_NTASKS, LOCAL_RANK = SLURM_LOCALID; with several tasks
    also MASTER_ADDR = $MASTER_ADDR or the first host of the step's nodes (SLURM_STEP_NODELIST,
    else SLURM_JOB_NODELIST) and MASTER_PORT = $MASTER_PORT or 20000 + SLURM_JOB_ID mod 20000
    (one port per job, so two jobs sharing a node do not collide, and a requeued job keeps its
    port). torchrun's variables (WORLD_SIZE, RANK) win when present.
    """
    if "WORLD_SIZE" in os.environ or "RANK" in os.environ or not all(name in os.environ for name in SLURM_VARIABLES):
        return
    rank, world_size, local_rank = (_slurm_int(name) for name in ("SLURM_PROCID", "SLURM_NTASKS", "SLURM_LOCALID"))
    if not 0 <= rank < world_size or local_rank < 0:
        raise ValueError(f"SLURM_PROCID={rank}, SLURM_LOCALID={local_rank} do not fit SLURM_NTASKS={world_size}")
    if world_size > 1:
        nodes = "SLURM_STEP_NODELIST" if "SLURM_STEP_NODELIST" in os.environ else "SLURM_JOB_NODELIST"
        master_addr = os.environ.get("MASTER_ADDR") or first_host(os.environ[nodes], nodes)
        job = _slurm_int("SLURM_JOB_ID") if "SLURM_JOB_ID" in os.environ else 0
        os.environ.update(MASTER_ADDR=master_addr, MASTER_PORT=os.environ.get("MASTER_PORT") or str(20000 + job % 20000))
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world_size), LOCAL_RANK=str(local_rank))


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
