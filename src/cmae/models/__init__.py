"""Encoders, decoders and heads; `build_encoder` turns a `ModelConfig` into an encoder."""

from __future__ import annotations

from cmae.config import ConfigError, ModelConfig
from cmae.models.decoder import PixelDecoder
from cmae.models.vit import VIT_PRESETS, VisionTransformer

__all__ = ["PixelDecoder", "VisionTransformer", "VIT_PRESETS", "build_encoder", "ENCODER_NAMES"]

ENCODER_NAMES = tuple(VIT_PRESETS)


def build_encoder(config: ModelConfig) -> VisionTransformer:
    """The encoder named by `model.name`, with the config's patch/tubelet/drop-path settings."""
    if config.name not in VIT_PRESETS:
        raise ConfigError(f"unknown model.name {config.name!r}; choose one of: {', '.join(ENCODER_NAMES)}")
    size = VIT_PRESETS[config.name]
    return VisionTransformer(
        embed_dim=size.embed_dim,
        depth=size.depth,
        num_heads=size.num_heads,
        patch_size=config.patch_size or size.patch_size,
        tubelet_size=config.tubelet_size,
        drop_path_rate=config.drop_path,
        cls_token=config.cls_token,
    )
