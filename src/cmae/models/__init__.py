"""Encoders, decoders and heads; `build_encoder` turns a `ModelConfig` into an encoder."""

from __future__ import annotations

from cmae.config import ConfigError, ModelConfig
from cmae.models.convvit import CONVVIT_PRESETS, ConvViT
from cmae.models.decoder import PixelDecoder
from cmae.models.vit import VIT_PRESETS, VisionTransformer

__all__ = [
    "ConvViT", "CONVVIT_PRESETS", "PixelDecoder", "VisionTransformer", "VIT_PRESETS", "build_encoder", "ENCODER_NAMES",
    "check_input_size",
]

ENCODER_NAMES = tuple(VIT_PRESETS) + tuple(CONVVIT_PRESETS)


def build_encoder(config: ModelConfig) -> VisionTransformer | ConvViT:
    """The encoder named by `model.name`, with the config's patch/tubelet/drop-path settings."""
    if config.name in CONVVIT_PRESETS:
        return _build_convvit(config)
    if config.name not in VIT_PRESETS:
        raise ConfigError(f"unknown model.name {config.name!r}; choose one of: {', '.join(ENCODER_NAMES)}")
    size = VIT_PRESETS[config.name]
    return VisionTransformer(
        embed_dim=size.embed_dim,
        depth=size.depth,
        num_heads=size.num_heads,
        mlp_ratio=size.mlp_ratio,
        patch_size=config.patch_size or size.patch_size,
        tubelet_size=config.tubelet_size,
        drop_path_rate=config.drop_path,
        cls_token=config.cls_token,
        pos_embed=config.pos_embed,
        init=config.init,
        pos_size=config.pos_size,
        pos_frames=config.pos_frames,
    )


def check_input_size(config: ModelConfig, image_size: int, num_frames: int) -> None:
    """Frames must cut into whole patches and tubelets, or the first forward pass fails deep in a
    convolution: say which key, at start. One frame (an image) is repeated to the tubelet size."""
    if config.name not in ENCODER_NAMES:
        raise ConfigError(f"unknown model.name {config.name!r}; choose one of: {', '.join(ENCODER_NAMES)} "
                          "(cmae models lists them)")
    patch = 16 if config.name in CONVVIT_PRESETS else config.patch_size or VIT_PRESETS[config.name].patch_size
    if image_size % patch:
        raise ConfigError(f"data.image_size={image_size} is not a multiple of {config.name}'s patch size {patch}: "
                          f"use {image_size - image_size % patch or patch} or {image_size - image_size % patch + patch}")
    if num_frames > 1 and num_frames % config.tubelet_size:
        raise ConfigError(f"data.num_frames={num_frames} is not a multiple of model.tubelet_size={config.tubelet_size}")


def _build_convvit(config: ModelConfig) -> ConvViT:
    """ConvViT's token stride is fixed at 16 by its three stages, and it has no class token."""
    if config.patch_size not in (0, 16):
        raise ConfigError(f"model.patch_size={config.patch_size}: {config.name} has a fixed stride of 16 (use 0 or 16)")
    if config.cls_token:
        raise ConfigError(f"model.cls_token=true: {config.name} has no class token (pool its tokens instead)")
    if config.pos_embed == "learned":
        raise ConfigError(f"model.pos_embed=learned: {config.name} takes fixed tables only")
    size = CONVVIT_PRESETS[config.name]
    return ConvViT(
        widths=size.widths,
        depths=size.depths,
        num_heads=size.num_heads,
        tubelet_size=config.tubelet_size,
        drop_path_rate=config.drop_path,
        pos_embed=config.pos_embed,
        init=config.init,
    )
