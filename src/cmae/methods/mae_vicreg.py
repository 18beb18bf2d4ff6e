"""MAE + VICReg, ViC-MAE's baseline (appendix B.1, eqs. 5-7, Table 8).

The class token through a shared expander (projector) gives each view's embedding;
loss = w_inv * invariance + w_var * variance + w_cov * covariance with VICReg's weights
(25, 25, 1) by default (`method.vicreg_weights`). As in VICReg the embeddings are not
L2-normalised: the variance hinge targets a standard deviation of 1 per dimension.
"""

from __future__ import annotations

from cmae.config import Config
from cmae.losses import vicreg_terms
from cmae.methods.mae_simsiam import require_cls_token
from cmae.methods.two_view import TwoViewMAE
from cmae.methods.vic_mae import vic_mae_projector


class MAEVICReg(TwoViewMAE):
    name = "mae_vicreg"

    def __init__(self, config: Config):
        require_cls_token(config, self.name)
        super().__init__(config)
        # Bardes et al.'s expander
        self.projector = vic_mae_projector(self.encoder.embed_dim, "paper", config.method.global_bn)
        self.weights = config.method.vicreg_weights

    def pair_loss(self, z1, z2, ids=None):  # no negatives: repeats of a video change nothing here
        terms = vicreg_terms(z1, z2)
        w_inv, w_var, w_cov = self.weights
        loss = w_inv * terms["invariance"] + w_var * terms["variance"] + w_cov * terms["covariance"]
        return loss, {f"vicreg_{k}": v for k, v in terms.items()}
