"""How the loop holds a method across processes: replicated (DDP) or sharded (FSDP2), and
checkpoints that read the same either way.

    enable_grad_checkpointing   recompute every block's activations in backward
    compile_model    torch.compile in place, drawing eager's random numbers
    wrap_method      DDP, or FSDP2's `fully_shard` per transformer block and at the root
    gradient_sync    skip the gradient reduction on all but the last micro-batch
    gradient_norm, term_gradient_norms
                     the global gradient norm; each loss part's on the shared encoder
    full_state / load_full_state
                     the model's full state dict and the optimiser's in torch's own
                     index-keyed layout, gathered to rank 0 under FSDP, so a checkpoint from
                     an FSDP run resumes under DDP or in one process and the other way round,
                     and every command that reads checkpoints reads it.
"""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from cmae.distributed import DistInfo, all_reduce_sum
from cmae.models.convvit import ConvBlock
from cmae.models.vit import Block

# The units FSDP gathers one at a time: each holds a block's weights, so a block's
# all-gather overlaps the previous block's compute and peak memory holds about one block.
SHARDED_UNITS = (Block, ConvBlock)


def enable_grad_checkpointing(method: nn.Module) -> None:
    """Activation checkpointing in every encoder and decoder of the method (`train.grad_checkpointing`)."""
    for module in method.modules():
        if hasattr(module, "grad_checkpointing"):
            module.grad_checkpointing = True


def compile_model(model: nn.Module) -> None:
    """`torch.compile` the forward in place (after wrapping, as DDP and FSDP2 advise): unlike
    `torch.compile(module)` it adds no `_orig_mod.` prefix, and checkpoints hold the unwrapped
    method's state anyway. Masks and drop path draw the same numbers compiled as eager
    (inductor's own generator would not), so a seeded run, and a resume with compilation
    switched on or off, is the same run."""
    from torch._inductor import config as inductor

    inductor.fallback_random = True
    model.compile()


def wrap_method(method: nn.Module, groups: list[dict], strategy: str, device: torch.device, dtype: torch.dtype,
                dist_info: DistInfo) -> tuple[nn.Module, list[dict]]:
    """(the module the loop calls, the optimiser's parameter groups for it): the method itself
    in one process, else DDP or FSDP2. FSDP2 replaces every parameter by its shard, so the
    groups are rebuilt by name around the new parameters."""
    if not dist_info.enabled:
        return method, groups
    if strategy == "ddp":
        return DistributedDataParallel(method, device_ids=[device.index] if device.type == "cuda" else None), groups
    name_of = {id(p): name for name, p in method.named_parameters()}
    shard_method(method, dtype)
    sharded = dict(method.named_parameters())
    return method, [{**group, "params": [sharded[name_of[id(p)]] for p in group["params"]]} for group in groups]


def shard_method(method: nn.Module, dtype: torch.dtype) -> None:
    """FSDP2 in place: every rank starts from rank 0's weights (ranks built their methods from
    different seeds; DDP broadcasts the same way), then each transformer block, and the rest
    at the root, is sharded over the default process group."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    for tensor in method.state_dict().values():
        torch.distributed.broadcast(tensor, src=0)
    # The blocks (nearly all the weights) are gathered in bf16 under bf16 training; gradients
    # are reduced in fp32 (torchtitan's default: a bf16 sum over many ranks loses low bits).
    blocks = MixedPrecisionPolicy(param_dtype=dtype if dtype != torch.float32 else None, reduce_dtype=torch.float32)
    for module in method.modules():
        if isinstance(module, SHARDED_UNITS):
            fully_shard(module, mp_policy=blocks)
    # The root keeps fp32 weights and inputs, as DDP under autocast: BatchNorm heads need their
    # weights in their fp32 statistics' dtype, and targets come from the fp32 pixels.
    fully_shard(method, mp_policy=MixedPrecisionPolicy(reduce_dtype=torch.float32, cast_forward_inputs=False))


def is_sharded(model: nn.Module) -> bool:
    from torch.distributed.fsdp import FSDPModule

    return isinstance(model, FSDPModule)


def gradient_sync(model: nn.Module, sync: bool):
    """Context for one micro-batch's forward and backward: gradients are reduced over ranks
    only when `sync` (the last micro-batch of an accumulation step)."""
    if isinstance(model, DistributedDataParallel):
        return contextlib.nullcontext() if sync else model.no_sync()
    if is_sharded(model):
        model.set_requires_gradient_sync(sync)
    return contextlib.nullcontext()


def gradient_norm(parameters, clip: float = 0.0) -> torch.Tensor:
    """The global L2 norm of the gradients (over every rank's shards under FSDP), before clipping
    them to `clip` when `clip` > 0."""
    parameters = list(parameters)
    if clip > 0:
        norm = torch.nn.utils.clip_grad_norm_(parameters, clip)
    else:
        norm = torch.nn.utils.get_total_norm([p.grad for p in parameters if p.grad is not None])
    return norm.full_tensor() if hasattr(norm, "full_tensor") else norm  # a DTensor under FSDP


def term_gradient_norms(parts: dict[str, torch.Tensor], encoder: nn.Module, world_size: int) -> dict[str, float]:
    """{name: L2 norm of d part / d encoder parameters}, averaged over ranks (a collective: every rank
    measures at the same steps). One extra backward per part, through the graph kept for the real one."""
    if not parts:
        return {}
    params = [p for p in encoder.parameters() if p.requires_grad]
    norms = []
    for part in parts.values():
        grads = [g for g in torch.autograd.grad(part.float(), params, retain_graph=True, allow_unused=True)
                 if g is not None]
        norms.append(torch.linalg.vector_norm(torch.stack([g.float().norm() for g in grads])) if grads
                     else torch.zeros((), device=part.device))
    averaged = all_reduce_sum(torch.stack(norms).cpu().double()) / world_size
    return dict(zip(parts, averaged.tolist(), strict=True))


def _optimizer_names(method: nn.Module, optimizer: torch.optim.Optimizer) -> list[str]:
    """Parameter names in the optimiser's order: the index of a name is its key in torch's layout."""
    name_of = {id(p): name for name, p in method.named_parameters()}
    return [name_of[id(p)] for group in optimizer.param_groups for p in group["params"]]


def full_state(model: nn.Module, method: nn.Module, optimizer: torch.optim.Optimizer) -> tuple[dict, dict]:
    """(model state dict, optimiser state dict) as one process would have them. Under FSDP every
    rank must call this (it gathers); only rank 0's dicts are filled."""
    if not is_sharded(model):
        return method.state_dict(), optimizer.state_dict()
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        get_model_state_dict,
        get_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights = get_model_state_dict(method, options=options)
    named = get_optimizer_state_dict(method, optimizer, options=options)
    names = _optimizer_names(method, optimizer)
    index = {name: i for i, name in enumerate(names)}
    indexed = {
        "state": {index[name]: value for name, value in named.get("state", {}).items()},
        "param_groups": [{**group, "params": [index[name] for name in group["params"]]}
                         for group in named.get("param_groups", [])],
    }
    return weights, indexed


def load_full_state(model: nn.Module, method: nn.Module, optimizer: torch.optim.Optimizer,
                    weights: dict[str, Any], optimizer_state: dict[str, Any]) -> None:
    """Inverse of `full_state`: every rank loads the full dicts (each its own shard under FSDP).
    The optimiser keeps the update kernel this run chose (a saved state would bring its own)."""
    kernels = [{key: group[key] for key in ("fused", "foreach")} for group in optimizer.param_groups]
    _load_full_state(model, method, optimizer, weights, optimizer_state)
    for group, kernel in zip(optimizer.param_groups, kernels, strict=True):
        group.update(kernel)


def _load_full_state(model: nn.Module, method: nn.Module, optimizer: torch.optim.Optimizer,
                     weights: dict[str, Any], optimizer_state: dict[str, Any]) -> None:
    if not is_sharded(model):
        method.load_state_dict(weights)
        optimizer.load_state_dict(optimizer_state)
        return
    from torch.distributed.checkpoint.state_dict import (
        StateDictOptions,
        set_model_state_dict,
        set_optimizer_state_dict,
    )

    options = StateDictOptions(full_state_dict=True)
    set_model_state_dict(method, weights, options=options)
    names = _optimizer_names(method, optimizer)
    named = {
        "state": {names[i]: value for i, value in optimizer_state["state"].items()},
        "param_groups": [{**group, "params": [names[i] for i in group["params"]]}
                         for group in optimizer_state["param_groups"]],
    }
    set_optimizer_state_dict(method, optimizer, named, options=options)
