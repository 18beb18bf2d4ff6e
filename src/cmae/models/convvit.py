"""ConvViT: ConvMAE's hybrid convolution + transformer encoder (Gao et al. 2022) for clips and images.

Three stages on a clip `[B, C, T, H, W]` (an image is a clip with T = 1 and tubelet 1):

    stage 1, stride 4:  patch_embed1 (tubelet x 4 x 4 conv)  -> blocks1 (ConvBlocks), width C1
    stage 2, stride 8:  patch_embed2 (2 x 2 conv)            -> blocks2 (ConvBlocks), width C2
    stage 3, stride 16: patch_embed3 (2 x 2 conv), patch_embed4 (linear), sin-cos position code
                        -> blocks (transformer `Block`s on the visible tokens only), width D

The stride-16 grid (T/tubelet, H/16, W/16) is the token grid of a ViT with patch 16 and the same
tubelet, so masks, pixel targets and the decoder are unchanged. Only the first embedding looks
along time; later convs have time kernel 1, so they run as 2D convs on the frames folded into the
batch (`[B*T', C, H, W]`), which is exactly a Conv3d with time kernel 1, and far faster on CPU.

Masked convolution (ConvMAE): the mask lives on the stride-16 grid; it is upsampled to the
stride-4 and stride-8 grids and multiplied into every ConvBlock right before its depth-wise 5x5
conv, the only operation that mixes positions. Every other operation sees one position
(LayerNorm over channels, 1x1 convs) or one stride-16 patch (patch embeddings and fusion convs
have kernel == stride and tile it; time is only mixed within a tubelet), so a visible token
depends on visible pixels only. LayerNorm, as ConvMAE uses, not BatchNorm: batch statistics
would carry masked pixels (and other samples) into visible tokens.

Multi-scale fusion (ConvMAE): the stage-1 and stage-2 outputs are brought to stride 16 and added
to the transformer's output tokens (at the visible positions) before the final norm. ConvMAE uses
dense 4x4 / 2x2 strided convs (4.3 M parameters for ConvViT-B, and drops them for fine-tuning);
here the fusion is part of the encoder in every phase, so it is factorised into a depth-wise
strided conv and a linear map (0.5 M), which keeps ConvViT-B at ConvMAE's 84 M.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn

from cmae.models.patchify import fill_tubelet, token_grid
from cmae.models.vit import Block, DropPath, gather_tokens, init_linear_map, init_weights, pos_embed_for, run_blocks

STRIDE = 16  # the stride of the token grid: stage 1 (4) x stage 2 (2) x stage 3 (2)


class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of `[N, C, H, W]`, per position (nothing mixes across space or batch)."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class ConvPatchEmbed(nn.Module):
    """Strided conv with kernel == stride, then LayerNorm and GELU (ConvMAE's PatchEmbed).

    tubelet 0: `[N, C_in, H, W]` -> `[N, C_out, H/p, W/p]`.
    tubelet t: a clip `[B, C_in, T, H, W]` -> `[B*T/t, C_out, H/p, W/p]` (frames folded into the batch).
    """

    def __init__(self, in_chans: int, embed_dim: int, patch: int, tubelet: int = 0):
        super().__init__()
        self.tubelet = tubelet
        if tubelet:
            self.proj = nn.Conv3d(in_chans, embed_dim, (tubelet, patch, patch), stride=(tubelet, patch, patch))
        else:
            self.proj = nn.Conv2d(in_chans, embed_dim, patch, stride=patch)
        self.norm = LayerNorm2d(embed_dim, eps=1e-6)
        self.act = nn.GELU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.proj(x)
        if self.tubelet:
            x = x.transpose(1, 2).flatten(0, 1)  # [B, C, T', H, W] -> [B*T', C, H, W]
        return self.act(self.norm(x))


class ConvBlock(nn.Module):
    """ConvMAE's CBlock on `[N, C, H, W]`: x + conv2(dwconv5x5(keep * conv1(norm1(x)))), then x + mlp(norm2(x)).

    `keep` `[N, 1, H, W]` (1 visible, 0 masked) zeroes masked positions right before the depth-wise
    conv, so their content never reaches a visible neighbour.
    """

    def __init__(self, dim: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = LayerNorm2d(dim, eps=1e-6)
        self.conv1 = nn.Conv2d(dim, dim, 1)
        self.attn = nn.Conv2d(dim, dim, 5, padding=2, groups=dim)  # ConvMAE's name for the token mixer
        self.conv2 = nn.Conv2d(dim, dim, 1)
        self.norm2 = LayerNorm2d(dim, eps=1e-6)
        hidden = int(dim * mlp_ratio)
        self.mlp = nn.Sequential(nn.Conv2d(dim, hidden, 1), nn.GELU(), nn.Conv2d(hidden, dim, 1))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor, keep: torch.Tensor | None = None) -> torch.Tensor:
        y = self.conv1(self.norm1(x))
        if keep is not None:
            y = y * keep
        x = x + self.drop_path(self.conv2(self.attn(y)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class ScaleFusion(nn.Module):
    """Stage features `[N, C, H, W]` at stride 16/f -> stride-16 tokens `[N, H/f * W/f, D]`.

    A depth-wise conv with kernel == stride == f (stays inside each stride-16 patch), then a
    linear map to D: a factorised form of ConvMAE's dense strided fusion conv.
    """

    def __init__(self, in_dim: int, out_dim: int, factor: int):
        super().__init__()
        self.down = nn.Conv2d(in_dim, in_dim, factor, stride=factor, groups=in_dim)
        self.proj = nn.Linear(in_dim, out_dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(self.down(x).flatten(2).transpose(1, 2))


class ConvViT(nn.Module):
    """ConvMAE's ConvViT encoder. `forward(x, visible=None)` -> normed tokens `[B, K, D]`.

    x: clip `[B, C, T, H, W]` with H, W divisible by 16; visible: `[B, K]` sorted indices into the
    time-major stride-16 grid (all N tokens when None). No class token (`num_prefix_tokens` 0).
    """

    num_prefix_tokens = 0

    def __init__(
        self,
        widths: tuple[int, int, int] = (256, 384, 768),
        depths: tuple[int, int, int] = (2, 2, 11),
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        tubelet_size: int = 2,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        pos_embed: str = "separable",
        init: str = "normal",
    ):
        super().__init__()
        c1, c2, dim = widths
        self.pos_embed = pos_embed
        self.grad_checkpointing = False  # set by `train.grad_checkpointing` (see `run_blocks`)
        self.embed_dim, self.depth = dim, depths[2]
        self.patch_size, self.tubelet_size = STRIDE, tubelet_size  # of the stride-16 token grid
        self.patch_embed1 = ConvPatchEmbed(in_chans, c1, 4, tubelet=tubelet_size)
        self.blocks1 = nn.ModuleList(ConvBlock(c1, mlp_ratio) for _ in range(depths[0]))
        self.patch_embed2 = ConvPatchEmbed(c1, c2, 2)
        self.blocks2 = nn.ModuleList(ConvBlock(c2, mlp_ratio) for _ in range(depths[1]))
        self.patch_embed3 = ConvPatchEmbed(c2, dim, 2)
        self.patch_embed4 = nn.Linear(dim, dim)  # ConvMAE's: maps the GELU output to token space
        # Stochastic depth only in the transformer, as VisionTransformer does: a per-sample drop in
        # the conv stages would drop single frames (the batch there is B*T').
        rates = torch.linspace(0, drop_path_rate, self.depth, device="cpu").tolist()
        self.blocks = nn.ModuleList(Block(dim, num_heads, mlp_ratio, rate) for rate in rates)
        self.fuse1 = ScaleFusion(c1, dim, 4)
        self.fuse2 = ScaleFusion(c2, dim, 2)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.apply(partial(init_weights, scheme=init))
        for embed in (self.patch_embed1, self.patch_embed2, self.patch_embed3):
            # a patch embedding is a linear map of each patch: initialise it like one (as MAE does)
            init_linear_map(embed.proj, init)

    def token_grid(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """Stride-16 token grid (T', H', W') of an input shape `[B, C, T, H, W]` (after tubelet filling)."""
        return token_grid(shape, self.patch_size, self.tubelet_size)

    def layer_id(self, name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 for the conv stages and patch embeddings
        (as ConvMAE), i + 1 for `blocks.i.*`, depth + 1 for the fusion and the final norm (they feed
        the output directly)."""
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        if name.startswith(("fuse", "norm")):
            return self.depth + 1
        return 0

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None, final_norm: bool = True) -> torch.Tensor:
        """`final_norm=False` skips the last LayerNorm (as `VisionTransformer.forward`)."""
        grid = self.token_grid(x.shape)
        b, n = x.shape[0], grid[0] * grid[1] * grid[2]
        keep4 = keep8 = None
        if visible is not None:
            # 1 at visible stride-16 places, one map per frame `[B*T', 1, H', W']`, then upsampled
            keep = x.new_zeros(b, n).scatter_(1, visible, 1.0).reshape(b * grid[0], 1, grid[1], grid[2])
            keep8 = keep.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
            keep4 = keep.repeat_interleave(4, dim=2).repeat_interleave(4, dim=3)

        x = self.patch_embed1(fill_tubelet(x, self.tubelet_size))  # [B*T', C1, H/4, W/4]
        x = run_blocks(self.blocks1, x, keep4, checkpointing=self.grad_checkpointing)
        fused = self.fuse1(x)  # [B*T', H'*W', D]
        x = self.patch_embed2(x)  # [B*T', C2, H/8, W/8]
        x = run_blocks(self.blocks2, x, keep8, checkpointing=self.grad_checkpointing)
        fused = fused + self.fuse2(x)
        x = self.patch_embed3(x)  # [B*T', D, H', W']
        # [B*T', H'*W', D] -> [B, T'*H'*W', D]: frames were folded b-major, so tokens come out time-major
        tokens = self.patch_embed4(x.flatten(2).transpose(1, 2)).reshape(b, n, -1)
        tokens = tokens + pos_embed_for(self.embed_dim, grid, tokens, self.pos_embed)
        fused = fused.reshape(b, n, -1)
        if visible is not None:
            tokens, fused = gather_tokens(tokens, visible), gather_tokens(fused, visible)
        tokens = run_blocks(self.blocks, tokens, checkpointing=self.grad_checkpointing) + fused
        return self.norm(tokens) if final_norm else tokens


@dataclass(frozen=True)
class ConvViTSize:
    widths: tuple[int, int, int]
    depths: tuple[int, int, int]
    num_heads: int


CONVVIT_PRESETS: dict[str, ConvViTSize] = {
    "convvit_tiny": ConvViTSize((32, 48, 96), (1, 1, 2), 2),  # tests and CPU demos
    "convvit_small": ConvViTSize((128, 256, 384), (2, 2, 11), 6),  # ViT-S width at stride 16
    "convvit_base": ConvViTSize((256, 384, 768), (2, 2, 11), 12),  # ConvMAE's ConvViT-B
}
