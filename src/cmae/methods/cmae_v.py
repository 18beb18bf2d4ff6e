"""CMAE-V (Lu et al. 2022): CMAE for video, with temporal shift instead of pixel shift.

Online branch: tube-masked clip -> ViT encoder (visible tokens) -> pixel decoder ->
`loss_rec`; the mean of the decoder's last hidden states over all N tokens (visible and
mask tokens alike, as CMAE's feature decoder, eq. 2; with `method.decoder_mask_ratio` > 0,
over the tokens the decoder sees) -> projector -> predictor.
Target branch: an EMA copy of the encoder and projector, no gradient, on the full,
temporally shifted, colour-augmented clip; mean over its patch tokens (eq. 3) ->
target projector. `loss_con` is InfoNCE (eq. 5) against the global batch, and
L = L_rec + lambda_c * L_con (eq. 8).

The pixel decoder is narrower than the encoder, so with `method.feature=decoder` a
linear layer maps the pooled decoder state to the encoder width; that keeps the
projector's input the encoder's feature space, which is what lets the target projector
be an EMA copy of the online one. `method.feature=encoder` pools the encoder's visible
tokens instead (no extra layer). `method.feature=feature_decoder` is CMAE's released code:
a separate small decoder (`method.feature_decoder_depth` blocks, its own mask token and
position table, no pixel head) whose states, pooled over all N tokens, feed the projector,
so InfoNCE does not train the pixel decoder. `method.target_norm=false` skips the target
encoder's final norm (CMAE's `final_norm=False`). lambda_c is `cmae.methods.weighting`'s.
"""

from __future__ import annotations

import dataclasses
import math

import torch
from torch import nn

from cmae.config import Config
from cmae.losses import global_info_nce
from cmae.methods.base import Embedding
from cmae.methods.contrastive import ContrastiveMethod
from cmae.methods.mae import Reconstruction
from cmae.methods.videomae import VideoMAE
from cmae.models import PixelDecoder, build_encoder
from cmae.models.heads import MLPHead
from cmae.models.pooling import mean_pool


def momentum_at(step: int, total_steps: int, base: float, schedule: str) -> float:
    """EMA rate after `step` optimiser steps: constant, or BYOL's cosine from `base` to 1."""
    if schedule == "constant":
        return base
    return 1.0 - (1.0 - base) * (math.cos(math.pi * min(step, total_steps) / max(total_steps, 1)) + 1) / 2


class CMAEV(ContrastiveMethod, VideoMAE):
    name = "cmae_v"
    views = ("video", "target")
    view_sampler = "temporal_shift"

    def __init__(self, config: Config):
        super().__init__(config)
        m = config.method
        self.feature = m.feature
        self.temperature = m.temperature
        self.init_con_weight(m)
        self.con_scale = 2 * m.temperature if m.con_scale_2tau else 1.0
        self.momentum, self.momentum_schedule = m.momentum, m.momentum_schedule
        self.target_norm = m.target_norm
        width = self.encoder.embed_dim
        feature_width = {"decoder": config.model.decoder_dim, "encoder": width,
                         "feature_decoder": m.feature_decoder_dim or width}[m.feature]
        if m.feature == "feature_decoder":
            self.feature_decoder = PixelDecoder(
                width, 0, embed_dim=feature_width, depth=m.feature_decoder_depth,
                num_heads=feature_width // 64 if feature_width % 64 == 0 else 1,  # ViT's 64-wide heads
                pos_embed=self.decoder.pos_embed, init=config.model.decoder_init)
        self.feature_proj = nn.Linear(feature_width, width) if feature_width != width else nn.Identity()
        self.projector = MLPHead(width, [m.proj_hidden], m.proj_dim, m.global_bn)
        self.predictor = MLPHead(m.proj_dim, [m.pred_hidden], m.proj_dim, m.global_bn) if m.predictor else nn.Identity()
        # The target encoder has no stochastic depth: it is a teacher, not trained by gradient.
        self.target_encoder = build_encoder(dataclasses.replace(config.model, drop_path=0.0))
        self.target_projector = MLPHead(width, [m.proj_hidden], m.proj_dim, m.global_bn)
        for online, target in self.ema_pairs():
            target.load_state_dict(online.state_dict())
            target.requires_grad_(False)
        self.register_buffer("current_momentum", torch.tensor(float(m.momentum)))

    def ema_pairs(self) -> list[tuple[nn.Module, nn.Module]]:
        return [(self.encoder, self.target_encoder), (self.projector, self.target_projector)]

    def online_feature(self, rec: Reconstruction, clip: torch.Tensor) -> torch.Tensor:
        """`[B, D_enc]` pooled online feature (see module docstring)."""
        if self.feature == "decoder":
            return self.feature_proj(mean_pool(rec.hidden))
        patches = rec.latent[:, self.encoder.num_prefix_tokens :]
        if self.feature == "encoder":
            return mean_pool(patches)
        _, hidden = self.feature_decoder(patches, rec.mask.visible, self.encoder.token_grid(clip.shape))
        return self.feature_proj(mean_pool(hidden))

    @torch.no_grad()
    def target_feature(self, clip: torch.Tensor) -> torch.Tensor:
        """Full (unmasked) target clip -> `[B, D]`, the mean of its patch tokens (eq. 3)."""
        tokens = self.target_encoder(clip, final_norm=self.target_norm)
        return mean_pool(tokens[:, self.target_encoder.num_prefix_tokens :])

    @torch.no_grad()
    def target_embedding(self, clip: torch.Tensor) -> torch.Tensor:
        """Full (unmasked) target clip -> `[B, proj_dim]`."""
        return self.target_projector(self.target_feature(clip))

    def embed(self, batch: dict[str, torch.Tensor]) -> Embedding:
        """Reconstruction, the online feature `[b, D]` and the target's `[b, D]` (before the heads)."""
        rec = self.reconstruct(batch["video"], decoder_masking=self.training)
        return Embedding(rec.loss, (self.online_feature(rec, batch["video"]),),
                         (self.target_feature(batch["target"]),), batch.get("index"))

    def contrast(self, features, targets, ids):
        """Online heads on the features, the target projector on the targets, InfoNCE (eq. 5)."""
        query = self.predictor(self.projector(features[0]))
        with torch.no_grad():
            key = self.target_projector(targets[0])
        loss_con = self.con_scale * global_info_nce(query, key, self.temperature, ids)
        return loss_con, {"momentum": self.current_momentum.clone()}

    @torch.no_grad()
    def after_step(self, step: int, total_steps: int) -> None:
        """EMA update after each optimiser step: target = m * target + (1 - m) * online."""
        m = momentum_at(step, total_steps, self.momentum, self.momentum_schedule)
        for online, target in self.ema_pairs():
            for p_online, p_target in zip(online.parameters(), target.parameters(), strict=True):
                p_target.lerp_(p_online.detach(), 1.0 - m)
            for b_online, b_target in zip(online.buffers(), target.buffers(), strict=True):
                b_target.copy_(b_online)  # BatchNorm statistics follow the online head
        self.current_momentum.fill_(m)
