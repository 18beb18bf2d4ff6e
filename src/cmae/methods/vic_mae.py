"""ViC-MAE (Hernandez et al.): MAE on single frames plus InfoNCE between two frames of a video.

Two frames of one video (distant sampling) or two augmentations of one image -> shared
ViT, each view with its own random mask -> pixel reconstruction, and pooling Omega
(mean / max / GeM) of each view's encoder tokens -> projector -> L2-normalised ->
symmetrised InfoNCE over the global batch (eq. 3). L = L_rec + lambda * L_con with
lambda = 0 until `method.con_start_epoch`, then `method.con_weight` (0.025; or a rule:
`cmae.methods.weighting`).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from cmae.config import Config
from cmae.losses import cross_view_info_nce, symmetric_info_nce
from cmae.methods.two_view import TwoViewMAE
from cmae.models.heads import MLPHead
from cmae.models.pooling import Pooling

# eq. 3 (default): NT-Xent, mean over the 2N anchors, negatives from both views;
# algorithm1: ctr(p, z) + ctr(z, p), negatives from the other view only, summed.
CONTRASTIVE_LOSSES = {"eq3": symmetric_info_nce, "algorithm1": cross_view_info_nce}


def vic_mae_projector(width: int, kind: str, global_bn: bool = True) -> MLPHead:
    """paper (appendix A, after Bardes et al.): Linear D -> 2D, then two size-preserving
    Linear layers, with BatchNorm + ReLU between: D -> 2D -> 2D -> 2D.
    released: the authors' code (jeffhernandez1995/ViC-MAE), D -> 4096 -> 4096 -> 128, with
    BatchNorm + ReLU after each hidden layer."""
    if kind == "paper":
        return MLPHead(width, [2 * width, 2 * width], 2 * width, global_bn)
    return MLPHead(width, [4096, 4096], 128, global_bn)  # released


class ViCMAE(TwoViewMAE):
    name = "vic_mae"

    def __init__(self, config: Config):
        super().__init__(config)
        self.pool = Pooling(config.method.pooling)
        m = config.method
        self.projector = vic_mae_projector(self.encoder.embed_dim, m.projector, m.global_bn)
        self.temperature = config.method.temperature
        self.contrastive_loss = CONTRASTIVE_LOSSES[m.contrast]

    def token_feature(self, tokens: torch.Tensor) -> torch.Tensor:
        """Omega over the visible patch tokens: `[B, K, D]` -> `[B, D]`."""
        return self.pool(tokens[:, self.encoder.num_prefix_tokens :])

    def head(self, feature: torch.Tensor) -> torch.Tensor:
        """Projected and L2-normalised."""
        return F.normalize(self.projector(feature), dim=-1)

    def pair_loss(self, f1, f2, ids=None):
        return self.contrastive_loss(f1, f2, self.temperature, ids), {}
