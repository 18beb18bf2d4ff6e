"""Vision Transformer for images and videos, with timm's parameter names.

An input is always a clip `[B, C, T, H, W]`; an image is a clip with T = 1. The patch
embedding is a Conv3d with kernel (tubelet, patch, patch), so a tubelet of 1 gives
image-style 2D patches and a tubelet of 2 gives VideoMAE's cubes. A clip shorter than
the tubelet (an image fed to a video encoder) is repeated along time to fill it.

Given the indices of the visible tokens, the encoder embeds and runs the transformer on
the visible ones only (MAE's asymmetric encoder).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache, partial

import torch
import torch.nn.functional as F
import torch.utils.checkpoint
from torch import nn

from cmae.models.patchify import conv_patches, fill_tubelet, gather_tokens, token_grid
from cmae.models.pos_embed import position_table


def drop_path(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
    """Stochastic depth: zero a sample's residual branch with probability `rate`."""
    if rate == 0.0 or not training:
        return x
    keep = 1.0 - rate
    mask = x.new_empty((x.shape[0],) + (1,) * (x.ndim - 1)).bernoulli_(keep)
    return x * mask / keep


class DropPath(nn.Module):
    def __init__(self, rate: float = 0.0):
        super().__init__()
        self.rate = rate

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return drop_path(x, self.rate, self.training)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class Attention(nn.Module):
    """Multi-head self-attention through `scaled_dot_product_attention` (flash/efficient kernels on GPU)."""

    def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} is not divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.attn_drop = 0.0  # dropout on the attention weights in training (fine-tuning's attn_drop_rate)
        self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        q, k, v = self.qkv(x).reshape(b, n, 3, self.num_heads, d // self.num_heads).permute(2, 0, 3, 1, 4)
        x = F.scaled_dot_product_attention(q, k, v, dropout_p=self.attn_drop if self.training else 0.0)
        return self.proj(x.transpose(1, 2).reshape(b, n, d))


class Block(nn.Module):
    """Pre-norm transformer block: x + attn(norm(x)), then x + mlp(norm(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: float = 4.0, drop_path: float = 0.0):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio))
        self.drop_path = DropPath(drop_path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.drop_path(self.attn(self.norm1(x)))
        return x + self.drop_path(self.mlp(self.norm2(x)))


class PatchEmbed(nn.Module):
    """Clip `[B, C, T, H, W]` -> tokens `[B, N, D]`, N = T/t * H/p * W/p, time-major order."""

    def __init__(self, patch_size: int, tubelet_size: int, in_chans: int, embed_dim: int):
        super().__init__()
        self.patch_size = patch_size
        self.tubelet_size = tubelet_size
        kernel = (tubelet_size, patch_size, patch_size)
        self.proj = nn.Conv3d(in_chans, embed_dim, kernel_size=kernel, stride=kernel)

    def grid(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (T', H', W') for an input shape `[B, C, T, H, W]` (after tubelet padding)."""
        return token_grid(shape, self.patch_size, self.tubelet_size)

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """All N tokens `[B, N, D]`, or only the `visible` `[B, K]` ones `[B, K, D]`.

        With `visible`, only the kept patches are projected (the conv as one matmul over
        patch vectors): at a 90 % mask that skips nine tenths of the embedding's FLOPs,
        about a tenth of a VideoMAE step's, where the official code and Hugging Face
        embed every patch and then drop the masked ones.
        """
        x = fill_tubelet(x, self.tubelet_size)
        if visible is None:
            return self.proj(x).flatten(2).transpose(1, 2)
        patches = gather_tokens(conv_patches(x, self.patch_size, self.tubelet_size), visible)
        return F.linear(patches, self.proj.weight.flatten(1), self.proj.bias)


@lru_cache(maxsize=32)
def _cached_table(kind: str, dim: int, grid: tuple[int, int, int]) -> torch.Tensor:
    return position_table(kind, dim, grid)


def pos_embed_for(dim: int, grid: tuple[int, int, int], like: torch.Tensor, kind: str = "separable") -> torch.Tensor:
    """[1, N, dim] fixed table of `kind` (see `position_table`) on `like`'s device and dtype
    (cached per grid on CPU)."""
    return _cached_table(kind, dim, grid).to(device=like.device, dtype=like.dtype)[None]


def resample_table(table: torch.Tensor, grid: tuple[int, int, int], time: torch.Tensor | None = None) -> torch.Tensor:
    """A learned square table `[1, S*S, D]` (and a temporal one `[1, T0, D]`) -> `[1, T'*H'*W', D]`.

    The square is resampled bicubically (with antialiasing, as timm's `resample_abs_pos_embed`) to
    H' x W' when that differs and repeated over T'; the temporal table, linearly resampled to T'
    when that differs, is added to every place of its time step (mae_st's `sep_pos_embed`).
    """
    t, h, w = grid
    side = round(table.shape[1] ** 0.5)
    if (h, w) != (side, side):
        square = table.float().reshape(1, side, side, -1).permute(0, 3, 1, 2)
        square = F.interpolate(square, size=(h, w), mode="bicubic", antialias=True, align_corners=False)
        table = square.permute(0, 2, 3, 1).reshape(1, h * w, -1).to(table.dtype)
    table = table.repeat(1, t, 1)
    if time is None:
        return table
    if time.shape[1] != t:
        time = F.interpolate(time.float().transpose(1, 2), size=t, mode="linear", align_corners=False)
        time = time.transpose(1, 2).to(table.dtype)
    return table + time.repeat_interleave(h * w, dim=1)


def run_blocks(blocks: nn.ModuleList, x: torch.Tensor, *args, checkpointing: bool = False) -> torch.Tensor:
    """x -> blocks[-1](...blocks[0](x, *args)...). With `checkpointing` (while gradients are on),
    each block's activations are recomputed in backward instead of kept (`train.grad_checkpointing`);
    the RNG state is replayed, so drop path draws the same samples and the gradients are unchanged."""
    for block in blocks:
        if checkpointing and torch.is_grad_enabled():
            x = torch.utils.checkpoint.checkpoint(block, x, *args, use_reentrant=False)
        else:
            x = block(x, *args)
    return x


class VisionTransformer(nn.Module):
    """ViT encoder. `forward(x, visible=None)` -> normed tokens `[B, (1+) K, D]`.

    x: clip `[B, C, T, H, W]`; visible: `[B, K]` indices of tokens to keep (all when None).
    With `cls_token=True` the class token leads the output sequence.
    """

    def __init__(
        self,
        embed_dim: int = 768,
        depth: int = 12,
        num_heads: int = 12,
        mlp_ratio: float = 4.0,
        patch_size: int = 16,
        tubelet_size: int = 2,
        in_chans: int = 3,
        drop_path_rate: float = 0.0,
        cls_token: bool = False,
        pos_embed: str = "separable",
        init: str = "normal",
        pos_size: int = 14,
        pos_frames: int = 0,
    ):
        super().__init__()
        self.embed_dim = embed_dim
        self.depth = depth
        self.pos_embed = pos_embed
        self.grad_checkpointing = False  # set by `train.grad_checkpointing` (see `run_blocks`)
        self.patch_embed = PatchEmbed(patch_size, tubelet_size, in_chans, embed_dim)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, embed_dim)) if cls_token else None
        rates = torch.linspace(0, drop_path_rate, depth, device="cpu").tolist()  # python floats, even on meta
        self.blocks = nn.ModuleList(Block(embed_dim, num_heads, mlp_ratio, rate) for rate in rates)
        self.norm = nn.LayerNorm(embed_dim, eps=1e-6)
        self.apply(partial(init_weights, scheme=init))
        # The patch projection is a linear map of each patch: initialised like one.
        init_linear_map(self.patch_embed.proj, init)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)
        # pos_embed="learned" (timm's supervised ViTs): a trained 2D table of pos_size x pos_size places,
        # resampled to each input's grid and shared by its time steps, and the class token's own code
        # (pos_frames > 0: plus a trained table over that many token time steps, mae_st's sep_pos_embed)
        self.learned_pos_embed = self.cls_pos_embed = self.learned_time_pos_embed = None
        if pos_embed == "learned":
            self.learned_pos_embed = nn.Parameter(torch.zeros(1, pos_size * pos_size, embed_dim))
            nn.init.trunc_normal_(self.learned_pos_embed, std=0.02)
            if pos_frames > 0:
                self.learned_time_pos_embed = nn.Parameter(torch.zeros(1, pos_frames, embed_dim))
                nn.init.trunc_normal_(self.learned_time_pos_embed, std=0.02)
            if self.cls_token is not None:
                self.cls_pos_embed = nn.Parameter(torch.zeros(1, 1, embed_dim))

    @property
    def patch_size(self) -> int:
        return self.patch_embed.patch_size

    @property
    def tubelet_size(self) -> int:
        return self.patch_embed.tubelet_size

    @property
    def num_prefix_tokens(self) -> int:
        return 0 if self.cls_token is None else 1

    def token_grid(self, shape: torch.Size | tuple[int, ...]) -> tuple[int, int, int]:
        """Token grid (T', H', W') of an input shape `[B, C, T, H, W]`."""
        return self.patch_embed.grid(shape)

    def layer_id(self, name: str) -> int:
        """Depth of a parameter for layer-wise lr decay: 0 for the embedding and class token,
        i + 1 for `blocks.i.*`, depth + 1 for the final norm (and any head above it)."""
        if name.startswith(("patch_embed", "cls_token", "learned_", "cls_pos_embed")):
            return 0
        if name.startswith("blocks."):
            return int(name.split(".")[1]) + 1
        return self.depth + 1

    def embed(self, x: torch.Tensor, visible: torch.Tensor | None = None) -> torch.Tensor:
        """Patch tokens plus position code, `[B, N, D]`, or `[B, K, D]` for the `visible` ones only
        (no class token)."""
        tokens = self.patch_embed(x, visible)
        grid = self.token_grid(x.shape)
        if self.learned_pos_embed is not None:
            table = resample_table(self.learned_pos_embed, grid, self.learned_time_pos_embed).to(tokens.dtype)
        else:
            table = pos_embed_for(self.embed_dim, grid, tokens, self.pos_embed)
        if visible is None:
            return tokens + table
        return tokens + gather_tokens(table, visible)

    def forward_tokens(self, tokens: torch.Tensor, final_norm: bool = True) -> torch.Tensor:
        """Run the transformer on already-embedded tokens `[B, K, D]` (class token prepended here);
        `final_norm=False` skips the last LayerNorm (CMAE's target encoder: `final_norm=False`)."""
        if self.cls_token is not None:
            cls = self.cls_token if self.cls_pos_embed is None else self.cls_token + self.cls_pos_embed
            tokens = torch.cat([cls.expand(tokens.shape[0], -1, -1), tokens], dim=1)
        tokens = run_blocks(self.blocks, tokens, checkpointing=self.grad_checkpointing)
        return self.norm(tokens) if final_norm else tokens

    def forward(self, x: torch.Tensor, visible: torch.Tensor | None = None, final_norm: bool = True) -> torch.Tensor:
        return self.forward_tokens(self.embed(x, visible), final_norm)


INITS = ("xavier", "normal")


def init_linear_map(layer: nn.Module, scheme: str = "normal") -> None:
    """A linear layer, or a patch projection read as a linear map of one patch.

    `xavier`: MAE's and VideoMAE's xavier-uniform, std sqrt(2 / (fan_in + fan_out)), which grows
    as the width shrinks; `normal`: N(0, 0.02) at every width (Hugging Face's VideoMAE, BEiT).
    At ViT-B width the two nearly agree (std 0.023-0.026 for the blocks' layers).
    """
    if scheme == "xavier":
        nn.init.xavier_uniform_(layer.weight.view(layer.weight.shape[0], -1))
    elif scheme == "normal":
        nn.init.normal_(layer.weight, std=0.02)
    else:
        raise ValueError(f"model.init must be one of {', '.join(INITS)}, got {scheme!r}")
    # MAE re-initialises only a patch projection's weight and keeps the conv's default bias.
    if layer.bias is not None and (scheme == "normal" or isinstance(layer, nn.Linear)):
        nn.init.zeros_(layer.bias)


def init_weights(module: nn.Module, scheme: str = "normal") -> None:
    """For `module.apply`: linear layers by `scheme` (see `init_linear_map`), unit LayerNorms."""
    if isinstance(module, nn.Linear):
        init_linear_map(module, scheme)
    elif isinstance(module, nn.LayerNorm):
        nn.init.ones_(module.weight)
        nn.init.zeros_(module.bias)


@dataclass(frozen=True)
class ViTSize:
    embed_dim: int
    depth: int
    num_heads: int
    patch_size: int
    mlp_ratio: float = 4.0


_TIMM_SIZES = {  # timm's names (vit_<size>_patch<p>), and VideoMAE's ViT-H/16 and VideoMAE V2's ViT-g/14
    "vit_tiny_patch16": ViTSize(192, 12, 3, 16),
    "vit_small_patch16": ViTSize(384, 12, 6, 16),
    "vit_base_patch16": ViTSize(768, 12, 12, 16),
    "vit_large_patch16": ViTSize(1024, 24, 16, 16),
    "vit_huge_patch14": ViTSize(1280, 32, 16, 14),
    "vit_huge_patch16": ViTSize(1280, 32, 16, 16),
    "vit_giant_patch14": ViTSize(1408, 40, 16, 14, 48 / 11),  # MLP 6144 wide
}

# The paper sizes (patch 16; vit_huge is timm's and MAE's patch 14, VideoMAE's ViT-H is
# vit_huge_patch16), timm's names, and small-patch variants for the tiny inputs of CPU demos and tests.
VIT_PRESETS: dict[str, ViTSize] = {
    "vit_tiny": ViTSize(192, 12, 3, 16),
    "vit_small": ViTSize(384, 12, 6, 16),
    "vit_base": ViTSize(768, 12, 12, 16),
    "vit_large": ViTSize(1024, 24, 16, 16),
    "vit_huge": ViTSize(1280, 32, 16, 14),
    **_TIMM_SIZES,
    "vit_micro_p8": ViTSize(96, 4, 3, 8),
    "vit_tiny_p8": ViTSize(192, 6, 3, 8),
    "vit_small_p8": ViTSize(384, 12, 6, 8),
    "vit_pico_p4": ViTSize(48, 2, 2, 4),
}
