"""The shape every contrastive method's forward shares, split where gradient caching cuts it.

L = L_rec + lambda * L_con, where L_con couples the samples of the batch (negatives, BatchNorm
statistics, VICReg's variance). A method says two things:

    embed(batch) -> Embedding      per sample: masks, encoder, decoder, reconstruction, pooling;
                                   everything that draws random numbers
    contrast(features, targets, ids) -> (L_con, extra terms)
                                   the heads and the loss over however many samples it is given;
                                   draws none

and `forward` runs them in a row, so a step over one batch and `train.contrastive_accumulation=exact`
(`cmae.engine.grad_cache`: the loss over every micro-batch's embeddings) run the same code. The modes
are keyword arguments, so they pass through DDP's and FSDP's forward (whose hooks must see every call):

    forward(batch)                             -> MethodOutput
    forward(batch, earlier=[Embedding, ...])   -> MethodOutput whose L_con covers the earlier
                                                  micro-batches' (given, detached) embeddings and this one
    forward(batch, part="embed")               -> Embedding
    forward(None, earlier=[...], part="contrast") -> L_con of the earlier embeddings alone
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from cmae.methods.base import Embedding, MethodOutput
from cmae.methods.weighting import ContrastiveWeighting


def join(embeddings: Sequence[Embedding]) -> tuple[tuple[torch.Tensor, ...], tuple[torch.Tensor, ...],
                                                   torch.Tensor | None]:
    """(features, targets, ids) of micro-batches in order: each `[sum b, D]`, ids `[sum b]` (None if any lacks them)."""
    features = tuple(torch.cat(parts) for parts in zip(*(e.features for e in embeddings), strict=True))
    targets = tuple(torch.cat(parts) for parts in zip(*(e.targets for e in embeddings), strict=True))
    ids = [e.ids for e in embeddings]
    return features, targets, None if any(i is None for i in ids) else torch.cat(ids)


class ContrastiveMethod(ContrastiveWeighting):
    """Mixin, listed before the MAE base it extends (it replaces that base's forward). Logs
    `loss_rec`, `loss_con`, `con_weight` and what `contrast` adds; `parts` are the two losses."""

    def embed(self, batch: dict[str, torch.Tensor]) -> Embedding:
        raise NotImplementedError

    def contrast(self, features: tuple[torch.Tensor, ...], targets: tuple[torch.Tensor, ...],
                 ids: torch.Tensor | None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        raise NotImplementedError

    def forward(self, batch: dict[str, torch.Tensor] | None, earlier: Sequence[Embedding] = (),
                part: str = "step") -> MethodOutput | Embedding | torch.Tensor:
        if part == "contrast":
            return self.contrast(*join(earlier))[0]
        self.require_views(batch)
        own = self.embed(batch)
        if part == "embed":
            return own
        loss_con, extra = self.contrast(*join([*earlier, own]))
        # Multiplying by lambda = 0 (rather than skipping) keeps every head in the graph, as DDP needs.
        loss = own.rec + self.current_con_weight * loss_con
        terms = {"loss_rec": own.rec.detach(), "loss_con": loss_con.detach(),
                 "con_weight": self.current_con_weight.clone(), **{k: v.detach() for k, v in extra.items()}}
        return MethodOutput(loss, terms, parts={"loss_rec": own.rec, "loss_con": loss_con})
