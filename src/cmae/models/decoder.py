"""MAE-style pixel decoder: visible tokens + mask tokens -> a pixel vector per token."""

from __future__ import annotations

from functools import partial

import torch
from torch import nn

from cmae.models.vit import Block, gather_tokens, init_weights, pos_embed_for, run_blocks


class PixelDecoder(nn.Module):
    """Lightweight transformer that predicts every token's pixels.

    forward(visible_tokens `[B, K, D_enc]`, visible `[B, K]`, grid (T', H', W'), decode=None)
      -> (pixels `[B, N, patch_dim]`, hidden `[B, N, D_dec]`)  (N' tokens with `decode`)

    The visible tokens are scattered back to their places in the full sequence of
    N = T'*H'*W' tokens, every other place holds the shared mask token, a fixed sin-cos
    position code is added and the blocks see the whole sequence. `hidden` is the last
    block's normed output, which CMAE-V pools for its contrastive feature.
    """

    def __init__(
        self,
        encoder_dim: int,
        patch_dim: int,
        embed_dim: int = 512,
        depth: int = 8,
        num_heads: int = 16,
        mlp_ratio: float = 4.0,
        pos_embed: str = "separable",
        init: str = "xavier",
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.pos_embed = pos_embed
        self.grad_checkpointing = False  # set by `train.grad_checkpointing` (see `run_blocks`)
        self.decoder_embed = nn.Linear(encoder_dim, embed_dim)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, embed_dim))
        self.decoder_blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio) for _ in range(depth))
        self.decoder_norm = nn.LayerNorm(embed_dim, eps=1e-6)
        # patch_dim 0: no pixel head, the outputs are the states (CMAE's feature decoder)
        self.decoder_pred = nn.Linear(embed_dim, patch_dim) if patch_dim else nn.Identity()
        self.apply(partial(init_weights, scheme=init))
        if init == "xavier":  # MAE's; Hugging Face's VideoMAE starts the mask token at zero
            nn.init.normal_(self.mask_token, std=0.02)

    def forward(
        self, visible_tokens: torch.Tensor, visible: torch.Tensor, grid: tuple[int, int, int],
        decode: torch.Tensor | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """`decode` `[B, N']`: sorted indices of the tokens the decoder runs on (the visible ones
        and a subset of the masked ones: VideoMAE V2's decoder masking); all N when None.
        The outputs then hold those N' tokens, in that order."""
        b = visible_tokens.shape[0]
        num_tokens = grid[0] * grid[1] * grid[2]
        x = self.decoder_embed(visible_tokens)
        full = self.mask_token.to(x.dtype).expand(b, num_tokens, -1).clone()
        full.scatter_(1, visible[..., None].expand(-1, -1, self.embed_dim), x)
        full = full + pos_embed_for(self.embed_dim, grid, full, self.pos_embed)
        if decode is not None:
            full = gather_tokens(full, decode)
        full = run_blocks(self.decoder_blocks, full, checkpointing=self.grad_checkpointing)
        hidden = self.decoder_norm(full)
        return self.decoder_pred(hidden), hidden
