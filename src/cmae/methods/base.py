"""What every pre-training method is (`Method`) and returns (`MethodOutput`)."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn


@dataclass
class MethodOutput:
    """`loss` is what the optimiser minimises; `terms` are detached scalars to log by name
    (`loss_rec`, `loss_con`, ...). The engine logs `loss` itself as `loss`. `parts` holds the
    loss terms still in the graph (unweighted, as logged), for per-term gradient norms
    (`train.log_term_grads`, `method.con_weight=grad_ratio`)."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)
    parts: dict[str, torch.Tensor] = field(default_factory=dict)


@dataclass
class Embedding:
    """One micro-batch's share of a contrastive step, cut before the heads: what a method with a
    loss over the whole batch (`ContrastiveMethod`) hands to the loss of the accumulated batch
    (`train.contrastive_accumulation=exact`). `rec` is the scalar reconstruction loss; `features`
    the heads' inputs that gradients reach, each `[b, D]`; `targets` those no gradient reaches
    (CMAE-V's EMA teacher), each `[b, D]`; `ids` `[b]` each sample's video (`data.repeat`), or None."""

    rec: torch.Tensor
    features: tuple[torch.Tensor, ...]
    targets: tuple[torch.Tensor, ...] = ()
    ids: torch.Tensor | None = None


class Method(nn.Module):
    """The contract between a pre-training method and the training loop.

    `views` names the batch keys `forward` reads and `view_sampler` the `data.views` value
    that produces them (`data.views: auto` becomes it in `resolve_method`, before a run reads
    data; another explicit value is a config error). `forward(batch) -> MethodOutput`. The loop calls
    `set_epoch(fractional epoch)` before each step (loss-weight schedules) and
    `after_step(step, total_steps)` after each optimiser step (EMA targets); both do
    nothing unless a method needs them. A method whose loss weights follow its gradients
    says so with `wants_term_grads(logging)`; the loop then measures the gradient norm of
    each of `MethodOutput.parts` on the shared encoder and hands them to
    `observe_term_grads({name: norm})` (averaged over ranks).
    """

    name: str = ""
    views: tuple[str, ...] = ("video",)
    view_sampler: str = "clip"

    def set_epoch(self, epoch: float) -> None:
        pass

    def after_step(self, step: int, total_steps: int) -> None:
        pass

    def wants_term_grads(self, logging: bool) -> bool:
        return False

    def observe_term_grads(self, norms: dict[str, float]) -> None:
        pass

    def require_views(self, batch: dict[str, torch.Tensor]) -> None:
        """Fail clearly when the data pipeline produced other views than this method needs."""
        missing = [name for name in self.views if name not in batch]
        if missing:
            raise KeyError(
                f"method {self.name!r} needs the batch keys {list(self.views)} but got {sorted(batch)}; "
                f"set data.views to {self.view_sampler} (or auto)"
            )

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        raise NotImplementedError
