"""Exact contrastive accumulation (`train.contrastive_accumulation=exact`) by gradient caching.

With `accum_steps` > 1 a contrastive term computed per micro-batch sees only that micro-batch's
negatives and BatchNorm statistics. Gradient caching (Gao et al. 2021, "Scaling Deep Contrastive
Learning Batch Size under Memory Limited Setup"; the GradCache library) makes the step that of
one pass over the whole batch, at the cost of a second forward pass per micro-batch:

1. embed every micro-batch without a graph (`part="embed"`: reconstruction, pooled features
   before the heads), keeping each one's RNG state;
2. run the heads and the loss over all the embeddings (every rank's, gathered as in one pass) and
   take the gradient of L_con with respect to each micro-batch's features;
3. re-run each micro-batch with a graph under its replayed RNG state (the same masks, drop path,
   decoder masking: as activation checkpointing replays them) and back-propagate
   L_rec / accum + lambda * <features, cached gradient>. The last micro-batch instead runs the
   heads and the loss once more, with graph, over the earlier embeddings and its own, so the heads
   get their gradient and BatchNorm its running statistics exactly once, from the whole batch, and
   DDP / FSDP reduce every parameter on that one backward, as without accumulation.

The cut is before the heads, not after them (GradCache caches the final embeddings): the heads'
BatchNorm then normalises the whole global batch with its gradient through the statistics, so
heads with BatchNorm are exact too. Step 2's head pass leaves the running statistics as it found
them (`kept_batch_statistics`). The embeddings held between the passes are `[B, D]` per feature,
the micro-batches' inputs are held as the loader gave them; what the second pass costs is in
docs/scaling.md.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn

from cmae.engine.parallel import gradient_sync, term_gradient_norms
from cmae.engine.run_state import Run
from cmae.engine.runtime import autocast
from cmae.methods.base import Embedding


class RandomState:
    """The random streams a micro-batch's forward draws from (CPU, and the CUDA device's), taken
    before its first pass; `replay()` runs the second pass on them and leaves the streams where the
    first pass left them (`torch.utils.checkpoint` does the same)."""

    def __init__(self, device: torch.device):
        self.devices = [device] if device.type == "cuda" else []
        self.cpu = torch.get_rng_state()
        self.cuda = [torch.cuda.get_rng_state(d) for d in self.devices]

    @contextlib.contextmanager
    def replay(self) -> Iterator[None]:
        with torch.random.fork_rng(devices=self.devices):
            torch.set_rng_state(self.cpu)
            for device, state in zip(self.devices, self.cuda, strict=True):
                torch.cuda.set_rng_state(state, device)
            yield


@contextlib.contextmanager
def kept_batch_statistics(method: nn.Module) -> Iterator[None]:
    """BatchNorm running statistics (and counts) restored on exit: a head pass that must not count."""
    norms = [m for m in method.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]
    saved = [{name: buffer.clone() for name, buffer in m.named_buffers(recurse=False)} for m in norms]
    try:
        yield
    finally:
        with torch.no_grad():
            for module, buffers in zip(norms, saved, strict=True):
                for name, value in buffers.items():
                    getattr(module, name).copy_(value)


def detached(embedding: Embedding, grad: bool = False) -> Embedding:
    """The embedding cut from any graph; with `grad`, its features are leaves that take a gradient."""
    return Embedding(embedding.rec.detach(), tuple(f.detach().requires_grad_(grad) for f in embedding.features),
                     tuple(t.detach() for t in embedding.targets), embedding.ids)


def feature_gradients(run: Run, embeddings: list[Embedding]) -> list[tuple[torch.Tensor, ...]]:
    """Step 2: d L_con / d features (L_con unweighted, over all micro-batches and ranks), per micro-batch,
    each `[b, D]` as its feature. A collective under torchrun (the loss gathers every rank's embeddings)."""
    leaves = [detached(e, grad=True) for e in embeddings]
    with kept_batch_statistics(run.job.method), gradient_sync(run.model, False):
        with autocast(run.device, run.dtype):
            loss_con = run.model(None, earlier=leaves, part="contrast")
        # inside: BatchNorm's backward checks that its running statistics are as its forward saw them
        flat = torch.autograd.grad(loss_con.float(), [f for e in leaves for f in e.features])
    width = len(leaves[0].features)
    return [flat[i * width : (i + 1) * width] for i in range(len(leaves))]


def cached_accumulation(run: Run, micro_batches: list[dict[str, torch.Tensor]], measure: bool = False
                        ) -> tuple[dict[str, torch.Tensor], dict[str, float]]:
    """One step's gradients over `micro_batches` (this rank's share of the global batch) as one pass over
    the whole batch would leave them; returns the logged terms (L_rec averaged over the micro-batches,
    L_con of the whole batch) and, with `measure`, the loss parts' gradient norms on the shared encoder
    from the first micro-batch (L_con's through that micro-batch's features, x accum, as if its own)."""
    method, accum = run.job.method, len(micro_batches)
    states, embeddings = [], []
    with torch.no_grad(), gradient_sync(run.model, False):  # step 1
        for data in micro_batches:
            states.append(RandomState(run.device))
            with autocast(run.device, run.dtype):
                embeddings.append(detached(run.model(data, part="embed")))
    grads = feature_gradients(run, embeddings)  # step 2
    weight = method.current_con_weight.detach()
    rec = torch.zeros((), device=run.device)
    term_grads: dict[str, float] = {}
    for micro, (data, state) in enumerate(zip(micro_batches, states, strict=True)):  # step 3
        last = micro == accum - 1
        with state.replay(), gradient_sync(run.model, last):
            with autocast(run.device, run.dtype):
                out = run.model(data, earlier=embeddings[:-1]) if last else run.model(data, part="embed")
            if last:
                own_rec, con = out.parts["loss_rec"], out.parts["loss_con"]
            else:  # a surrogate whose gradient is L_con's through these features
                own_rec = out.rec
                con = sum((f.float() * g).sum() for f, g in zip(out.features, grads[micro], strict=True))
            if measure and micro == 0:
                term_grads = term_gradient_norms({"loss_rec": own_rec, "loss_con": accum * con},
                                                 method.encoder, run.dist_info.world_size)
            run.scaler.scale(own_rec / accum + weight * con).backward()
        rec = rec + own_rec.detach().float() / accum
    loss = rec + weight * out.parts["loss_con"].detach().float()
    run.nonfinite += ~torch.isfinite(loss)
    return {**{k: v.float() for k, v in out.terms.items()}, "loss": loss, "loss_rec": rec}, term_grads
