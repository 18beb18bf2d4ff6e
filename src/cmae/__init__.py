"""cmae: contrastive masked autoencoders (CMAE-V, ViC-MAE) and their baselines, for video and images.

    import cmae
    encoder = cmae.load_encoder("runs/videomae/checkpoint-last.pt")  # or an exported HF / timm folder
    tokens = encoder(torch.randn(2, 3, 8, 64, 64))                      # [B, C, T, H, W] -> [B, N, D]
    encoder.config                                                      # the resolved cmae Config

The rest of the package is imported on first use, so `import cmae` stays light.
"""

from __future__ import annotations

from collections.abc import Sequence
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

try:
    __version__ = version("cmae")
except PackageNotFoundError:  # run from a source tree that was never installed
    __version__ = "0+unknown"

__all__ = ["__version__", "load_encoder", "load_method"]


def load_method(path: str | Path, config: str | Path | None = None, overrides: Sequence[str] = ()):
    """The whole pre-trained method (encoder, decoder, heads) of a cmae checkpoint, or of a foreign file with
    `config` (a preset's name or file), on the CPU in eval mode; its resolved config is `.config`.
    `overrides` are `key=value` strings, as on the command line."""
    from cmae.engine.loading import load_with_head

    resolved, method, _ = load_with_head(path, config, overrides, report=False)
    method.config = resolved
    return method


def load_encoder(path: str | Path, config: str | Path | None = None, overrides: Sequence[str] = ()):
    """The encoder of a cmae checkpoint, of a folder `cmae export` wrote (hf or timm), of a Hugging Face VideoMAE
    folder, or of an MAE / timm / VideoMAE file (with `config`: a preset whose model.* matches it); in eval
    mode, with its resolved config as `.config`. Input `[B, C, T, H, W]` (or `[B, C, H, W]`), output tokens."""
    method = load_method(path, config, overrides)
    encoder = method.encoder.eval()
    encoder.config = method.config
    return encoder
