"""MAE (He et al. 2022): mask most tokens, encode the visible ones, reconstruct the pixels.

`MAE` is also the reconstruction branch that the contrastive methods build on: they call
`reconstruct` and add their own terms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cmae.config import Config
from cmae.losses import reconstruction_loss
from cmae.masking import Mask, make_mask
from cmae.methods.base import Method, MethodOutput
from cmae.models import PixelDecoder, VisionTransformer, build_encoder
from cmae.models.patchify import normalized_pixel_targets, patchify


class Reconstruction(NamedTuple):
    loss: torch.Tensor  # scalar, masked-token MSE
    pred: torch.Tensor  # [B, N, P] predicted (normalised) pixels of every token
    hidden: torch.Tensor  # [B, N, D_dec] decoder's last hidden states
    latent: torch.Tensor  # [B, (1+)K, D] encoder output of the visible tokens
    mask: Mask


class MAE(Method):
    """Masked autoencoder on clips `[B, C, T, H, W]` (images: T = 1, tubelet 1).

    Per-token random masking by default (`method.masking=auto`); VideoMAE subclasses
    this with tube masking.
    """

    name = "mae"
    default_masking = "random"

    def __init__(self, config: Config):
        super().__init__()
        self.mask_ratio = config.method.mask_ratio
        self.masking = self.default_masking if config.method.masking == "auto" else config.method.masking
        self.norm_pix = config.method.norm_pix
        self.encoder: VisionTransformer = build_encoder(config.model)
        patch_dim = self.encoder.tubelet_size * self.encoder.patch_size**2 * 3
        self.decoder = PixelDecoder(
            self.encoder.embed_dim,
            patch_dim,
            embed_dim=config.model.decoder_dim,
            depth=config.model.decoder_depth,
            num_heads=config.model.decoder_heads,
            pos_embed=config.model.pos_embed,
            init=config.model.decoder_init,
        )

    def make_mask(self, clip: torch.Tensor) -> Mask:
        grid = self.encoder.token_grid(clip.shape)
        return make_mask(self.masking, clip.shape[0], grid, self.mask_ratio, clip.device)

    def targets(self, clip: torch.Tensor) -> torch.Tensor:
        """Normalised-pixel targets `[B, N, P]` of a clip."""
        patches = patchify(clip.float(), self.encoder.patch_size, self.encoder.tubelet_size)
        return normalized_pixel_targets(patches, self.norm_pix)

    def reconstruct(self, clip: torch.Tensor, mask: Mask | None = None) -> Reconstruction:
        mask = self.make_mask(clip) if mask is None else mask
        grid = self.encoder.token_grid(clip.shape)
        latent = self.encoder(clip, mask.visible)
        pred, hidden = self.decoder(latent[:, self.encoder.num_prefix_tokens :], mask.visible, grid)
        loss = reconstruction_loss(pred.float(), self.targets(clip), mask.masked)
        return Reconstruction(loss, pred, hidden, latent, mask)

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        self.require_views(batch)
        rec = self.reconstruct(batch["video"])
        return MethodOutput(rec.loss, {"loss_rec": rec.loss.detach()})
