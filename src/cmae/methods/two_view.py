"""The siamese MAE that ViC-MAE and the MAE+SimSiam / MAE+VICReg baselines share.

Two single-frame views `[B, C, 1, H, W]` of one video (or two augmentations of one
image) go through one encoder with shared weights, each with its own random mask; the
pixel decoder reconstructs both (averaged) or only the first (Algorithm 1). A subclass
says how the encoder tokens become a global feature and which loss ties the two
views; the weight lambda of that loss follows a step schedule in epochs (and may follow
the gradients: `cmae.methods.weighting`).
"""

from __future__ import annotations

import torch

from cmae.config import Config
from cmae.methods.base import Embedding
from cmae.methods.contrastive import ContrastiveMethod
from cmae.methods.mae import MAE


class TwoViewMAE(ContrastiveMethod, MAE):
    default_masking = "random"
    views = ("view1", "view2")
    view_sampler = "frame_pair"
    name = "two_view"

    def __init__(self, config: Config):
        super().__init__(config)
        self.rec_views = config.method.rec_views
        self.init_con_weight(config.method)

    def encode_views(self, view1: torch.Tensor, view2: torch.Tensor):
        """-> (reconstruction loss, encoder tokens of view 1, of view 2), each view masked on its own."""
        b = view1.shape[0]
        if self.rec_views == "both":  # one pass over both views: 2B independent random masks
            rec = self.reconstruct(torch.cat([view1, view2]), decoder_masking=self.training)
            return rec.loss, rec.latent[:b], rec.latent[b:]
        rec = self.reconstruct(view1, decoder_masking=self.training)
        return rec.loss, rec.latent, self.encoder(view2, self.make_mask(view2).visible)

    def token_feature(self, tokens: torch.Tensor) -> torch.Tensor:
        """`[B, (1+)K, D]` encoder tokens -> `[B, D]` the heads' input: the class token (a subclass may pool)."""
        return tokens[:, 0]

    def head(self, feature: torch.Tensor) -> torch.Tensor:
        """`[B, D]` -> `[B, D']` the embedding the pair loss compares."""
        return self.projector(feature)

    def pair_loss(self, f1: torch.Tensor, f2: torch.Tensor, ids: torch.Tensor | None = None
                  ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """Loss of the two views' features `[B, D']`; ids `[B]`: each sample's video (repeats share one)."""
        raise NotImplementedError

    def embed(self, batch: dict[str, torch.Tensor]) -> Embedding:
        loss_rec, tokens1, tokens2 = self.encode_views(batch["view1"], batch["view2"])
        return Embedding(loss_rec, (self.token_feature(tokens1), self.token_feature(tokens2)), ids=batch.get("index"))

    def contrast(self, features, targets, ids):
        return self.pair_loss(self.head(features[0]), self.head(features[1]), ids)
