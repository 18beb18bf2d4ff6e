"""MAE + SimSiam, ViC-MAE's baseline (appendix B.1, Table 8).

The class token is the global feature. Following SimSiam (and B.1's description of the
two branches): projector on both views, predictor on the online one, negative cosine
2(1 - p.z) against the other view's projection under stop-gradient, symmetrised.
"""

from __future__ import annotations

from cmae.config import Config, ConfigError
from cmae.losses import simsiam_loss
from cmae.methods.two_view import TwoViewMAE
from cmae.models.heads import MLPHead


def require_cls_token(config: Config, method: str) -> None:
    if not config.model.cls_token:
        raise ConfigError(f"method {method!r} uses the class token as its global feature: set model.cls_token=true")


class MAESimSiam(TwoViewMAE):
    name = "mae_simsiam"

    def __init__(self, config: Config):
        require_cls_token(config, self.name)
        super().__init__(config)
        m, width = config.method, self.encoder.embed_dim
        self.projector = MLPHead(width, [m.proj_hidden], m.proj_dim, m.global_bn)
        self.predictor = MLPHead(m.proj_dim, [m.pred_hidden], m.proj_dim, m.global_bn)

    def pair_loss(self, z1, z2, ids=None):  # no negatives: repeats of a video change nothing here
        p1, p2 = self.predictor(z1), self.predictor(z2)
        return (simsiam_loss(p1, z2) + simsiam_loss(p2, z1)) / 2, {}
