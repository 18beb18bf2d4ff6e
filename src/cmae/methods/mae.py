"""MAE (He et al. 2022): mask most tokens, encode the visible ones, reconstruct the pixels.

`MAE` is also the reconstruction branch that the contrastive methods build on: they call
`reconstruct` and add their own terms.
"""

from __future__ import annotations

from typing import NamedTuple

import torch

from cmae.config import Config
from cmae.losses import reconstruction_loss
from cmae.masking import Mask, decoder_tokens, make_mask, scored_tokens
from cmae.methods.base import Method, MethodOutput
from cmae.models import PixelDecoder, VisionTransformer, build_encoder
from cmae.models.patchify import gather_tokens, normalized_targets


class Reconstruction(NamedTuple):
    loss: torch.Tensor  # scalar, masked-token MSE (over the decoded masked tokens)
    pred: torch.Tensor  # [B, N', P] predicted (normalised) pixels of every decoded token
    hidden: torch.Tensor  # [B, N', D_dec] decoder's last hidden states
    latent: torch.Tensor  # [B, (1+)K, D] encoder output of the visible tokens
    mask: Mask
    decoded: torch.Tensor | None = None  # [B, N'] the decoded tokens' indices; None: all N, in order


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
        self.decoder_mask_ratio = config.method.decoder_mask_ratio
        self.encoder: VisionTransformer = build_encoder(config.model)
        patch_dim = self.encoder.tubelet_size * self.encoder.patch_size**2 * 3
        self.decoder = PixelDecoder(
            self.encoder.embed_dim,
            patch_dim,
            embed_dim=config.model.decoder_dim,
            depth=config.model.decoder_depth,
            num_heads=config.model.decoder_heads,
            # the pixel decoder's table stays fixed (MAE's decoder_pos_embed), even under a learned encoder table
            pos_embed="mae_2d" if config.model.pos_embed == "learned" else config.model.pos_embed,
            init=config.model.decoder_init,
        )

    def make_mask(self, clip: torch.Tensor) -> Mask:
        grid = self.encoder.token_grid(clip.shape)
        return make_mask(self.masking, clip.shape[0], grid, self.mask_ratio, clip.device)

    def targets(self, clip: torch.Tensor, tokens: torch.Tensor | None = None) -> torch.Tensor:
        """Normalised-pixel targets `[B, N, P]` of a clip, or `[B, M, P]` of the `tokens` `[B, M]` only
        (each token's statistics are its own, so picking first is the same and cheaper)."""
        return normalized_targets(clip.float(), self.encoder.patch_size, self.encoder.tubelet_size, self.norm_pix, tokens)

    def reconstruct(self, clip: torch.Tensor, mask: Mask | None = None, decoder_masking: bool = False) -> Reconstruction:
        """Encode the visible tokens, decode, and score the masked ones. With `decoder_masking`
        (training, `method.decoder_mask_ratio` > 0) the decoder runs on a subset of the tokens
        (`decoder_tokens`); otherwise on all of them."""
        mask = self.make_mask(clip) if mask is None else mask
        grid = self.encoder.token_grid(clip.shape)
        latent = self.encoder(clip, mask.visible)
        decoded = decoder_tokens(mask, self.decoder_mask_ratio) if decoder_masking and self.decoder_mask_ratio else None
        pred, hidden = self.decoder(latent[:, self.encoder.num_prefix_tokens :], mask.visible, grid, decoded)
        positions, tokens = scored_tokens(mask, decoded)
        loss = reconstruction_loss(gather_tokens(pred, positions).float(), self.targets(clip, tokens))
        return Reconstruction(loss, pred, hidden, latent, mask, decoded)

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        self.require_views(batch)
        rec = self.reconstruct(batch["video"], decoder_masking=self.training)
        return MethodOutput(rec.loss, {"loss_rec": rec.loss.detach()}, parts={"loss_rec": rec.loss})
