"""Pre-training methods by name: each a `Method` (cmae.methods.base) whose forward(batch) -> MethodOutput."""

from __future__ import annotations

from cmae.config import Config, ConfigError
from cmae.methods.base import Method, MethodOutput
from cmae.methods.cmae_v import CMAEV
from cmae.methods.mae import MAE
from cmae.methods.mae_simsiam import MAESimSiam
from cmae.methods.mae_vicreg import MAEVICReg
from cmae.methods.vic_mae import ViCMAE
from cmae.methods.videomae import VideoMAE
from cmae.models import check_input_size

METHODS: dict[str, type[Method]] = {
    "mae": MAE,
    "videomae": VideoMAE,
    "cmae_v": CMAEV,
    "vic_mae": ViCMAE,
    "mae_simsiam": MAESimSiam,
    "mae_vicreg": MAEVICReg,
}

__all__ = ["METHODS", "Method", "MethodOutput", "build_method", "resolve_method"]


def resolve_method(config: Config) -> Config:
    """The config checks that need the registry, run before any data is read (`pretrain`, the
    checkpoint loaders and `build_method` call it): `method.name` must be a method, and `data.views`
    must give it its inputs; `auto` becomes the method's own view sampler; the input size must cut
    into the encoder's patches and tubelets. Raises ConfigError."""
    method = METHODS.get(config.method.name)
    if method is None:
        raise ConfigError(f"unknown method.name {config.method.name!r}; choose one of: {', '.join(METHODS)}")
    if config.data.views == "auto":
        config.data.views = method.view_sampler
    elif config.data.views != method.view_sampler:
        raise ConfigError(f"data.views={config.data.views} does not give method {config.method.name!r} its inputs "
                          f"{list(method.views)}: use {method.view_sampler} (or auto)")
    check_input_size(config.model, config.data.image_size, config.data.num_frames)
    return config


def build_method(config: Config) -> Method:
    return METHODS[resolve_method(config).method.name](config)
