"""What every pre-training method returns."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch


@dataclass
class MethodOutput:
    """`loss` is what the optimiser minimises; `terms` are detached scalars to log by name
    (`loss_rec`, `loss_con`, ...). The engine logs `loss` itself as `loss`."""

    loss: torch.Tensor
    terms: dict[str, torch.Tensor] = field(default_factory=dict)


def require_views(batch: dict[str, torch.Tensor], names: tuple[str, ...], method: str) -> None:
    """Fail clearly when the data pipeline produced other views than the method needs."""
    missing = [name for name in names if name not in batch]
    if missing:
        raise KeyError(
            f"method {method!r} needs the batch keys {list(names)} but got {sorted(batch)}; "
            f"set data.views to the view sampler this method expects"
        )
