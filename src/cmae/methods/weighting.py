"""lambda in L = L_rec + lambda * L_con, shared by CMAE-V and the two-view methods.

`method.con_weight` is a number, or the rule `grad_ratio`: lambda is set so that the
contrastive term's gradient on the shared encoder is `method.con_grad_ratio` times the
reconstruction term's,

    lambda = con_grad_ratio * |grad_enc L_rec| / |grad_enc L_con|,

re-measured on logging steps (and on the first step) and smoothed by an EMA
(`method.con_balance_smoothing`). It is the adaptive weight of Esser et al. 2021 (VQGAN:
lambda = |grad L_rec| / |grad L_GAN| at the decoder's last layer) with a target ratio other
than 1, and the fixed-ratio special case of GradNorm (Chen et al. 2018), which balances
gradient norms across tasks. Why a ratio of gradient norms: AdamW normalises each
parameter's step, so the encoder follows whichever term's gradient dominates; a number that
balances the terms at one model size does not at another (docs: results, "gradient balance").
lambda is 0 before `method.con_start_epoch` in either case.
"""

from __future__ import annotations

import torch

from cmae.config import MethodConfig


class ContrastiveWeighting:
    """Mixin for a `Method` with `loss_rec` and `loss_con` parts: call `init_con_weight(config.method)`
    in `__init__`, weigh `loss_con` by `self.current_con_weight`. Both lambdas are buffers (saved,
    so a resumed run continues with the same weight)."""

    current_con_weight: torch.Tensor
    balanced_con_weight: torch.Tensor

    def init_con_weight(self, m: MethodConfig) -> None:
        self.con_weight, self.con_start_epoch = m.con_weight, m.con_start_epoch
        self.balancing = m.con_weight == "grad_ratio"
        self.con_grad_ratio, self.con_balance_smoothing = m.con_grad_ratio, m.con_balance_smoothing
        self.register_buffer("balanced_con_weight", torch.tensor(-1.0))  # the rule's lambda; -1: not measured yet
        self.register_buffer("current_con_weight", torch.tensor(self.weight_at(0.0)))
        # files saved before these buffers existed load with the values above
        self.register_load_state_dict_pre_hook(self._fill_missing_weights)

    def weight_at(self, epoch: float) -> float:
        """lambda: 0 before `con_start_epoch` (ViC-MAE Table 5), then the number or the rule's value
        (0 until the rule's first measurement)."""
        if epoch < self.con_start_epoch:
            return 0.0
        if not self.balancing:
            return float(self.con_weight)
        return max(float(self.balanced_con_weight), 0.0)

    def set_epoch(self, epoch: float) -> None:
        """Called by the engine before each step with the fractional epoch."""
        self.current_con_weight.fill_(self.weight_at(epoch))

    def wants_term_grads(self, logging: bool) -> bool:
        return self.balancing and (logging or float(self.balanced_con_weight) < 0)

    def observe_term_grads(self, norms: dict[str, float]) -> None:
        if not self.balancing:
            return
        target = self.con_grad_ratio * norms["loss_rec"] / max(norms["loss_con"], 1e-12)
        previous = float(self.balanced_con_weight)
        s = self.con_balance_smoothing
        self.balanced_con_weight.fill_(target if previous < 0 else s * previous + (1 - s) * target)

    def _fill_missing_weights(self, module, state_dict, prefix, *args) -> None:
        for name in ("balanced_con_weight", "current_con_weight"):
            state_dict.setdefault(prefix + name, getattr(self, name).clone())
