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

METHODS: dict[str, type[Method]] = {
    "mae": MAE,
    "videomae": VideoMAE,
    "cmae_v": CMAEV,
    "vic_mae": ViCMAE,
    "mae_simsiam": MAESimSiam,
    "mae_vicreg": MAEVICReg,
}

__all__ = ["METHODS", "Method", "MethodOutput", "build_method"]


def build_method(config: Config) -> Method:
    if config.method.name not in METHODS:
        raise ConfigError(f"unknown method.name {config.method.name!r}; choose one of: {', '.join(METHODS)}")
    return METHODS[config.method.name](config)
