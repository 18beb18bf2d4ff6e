"""`cmae extract`: frozen features of a list to a safetensors file, for probing elsewhere.

The features are the probes' own (`evaluate.feature_batches`: the deterministic test views of
`eval.clips` x `eval.crops`, pooled by `eval.feature`, bf16 autocast on CUDA). Under torchrun
each process takes every world-size-th file and rank 0 writes them all, in list order.

    cmae extract --checkpoint RUN/checkpoint-last.pt --output feats.safetensors data.val=LIST
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch

from cmae.config import ConfigError
from cmae.data.lists import read_samples
from cmae.distributed import cleanup, gather_objects, init_distributed
from cmae.engine.evaluate import feature_batches
from cmae.engine.loading import load_pretrained
from cmae.engine.runtime import readable, resolve_device


def extract(checkpoint: str | Path, output: str | Path, config_path: str | Path | None = None,
            overrides: Sequence[str] = ()) -> dict[str, Any]:
    """Write {"features": [N', D], "labels": [N'], "indices": [N']} for the files of data.val
    (indices: line numbers in the list; undecodable files are left out) -> a summary."""
    config, method = load_pretrained(checkpoint, config_path, overrides)
    if not config.data.val:
        raise ConfigError("data.val is not set: give the list (or ImageFolder) to extract features of")
    device = resolve_device(config.train.device)
    info = init_distributed(device)
    if device.type == "cuda":
        device = torch.device("cuda", info.local_rank)
    try:
        samples = read_samples(config.data.val, config.data)
        mine = list(range(info.rank, len(samples), info.world_size))
        encoder = method.encoder.eval().to(device)
        parts = [(features, labels, torch.tensor(mine)[indices])
                 for features, labels, indices in feature_batches(encoder, [samples[i] for i in mine], config, device)]
        gathered = [part for rank_parts in gather_objects(parts) for part in rank_parts]
        summary = {"output": str(output), "files": len(samples)}
        if info.is_main:
            features, labels, indices = (torch.cat(column) for column in zip(*gathered, strict=True))
            order = indices.argsort()
            from safetensors.torch import save_file

            Path(output).parent.mkdir(parents=True, exist_ok=True)
            save_file({"features": features[order].contiguous(), "labels": labels[order].contiguous(),
                       "indices": indices[order].contiguous()}, str(output),
                      metadata={"checkpoint": str(checkpoint), "list": config.data.val,
                                "feature": config.eval.feature, "views": str(config.eval.clips * config.eval.crops)})
            readable(Path(output))
            summary.update(extracted=len(indices), dim=features.shape[1])
        return summary
    finally:
        cleanup()
