"""Pre-training: files -> VideoDataset(view) (tar shards -> ShardStream) -> DataLoader -> method(batch)
-> loss -> AdamW, through the one training loop of `cmae.engine.loop` (one process or many under torchrun),
with atomic checkpoints (each epoch, every `train.save_every_steps`, on SIGTERM/SIGUSR1) that
`--resume` continues from exactly.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from cmae.config import Config, ConfigError
from cmae.data.dataset import VideoDataset
from cmae.data.decoding import check_decode_device
from cmae.data.lists import Sample, is_shard_pattern, mix_samples, read_samples
from cmae.data.shards import ShardStream
from cmae.data.views import build_view
from cmae.engine.loading import initialize_from
from cmae.engine.loop import Job, train_loop
from cmae.engine.monitor import monitor_hook
from cmae.engine.schedule import param_groups
from cmae.interop import load_imported
from cmae.methods import build_method, resolve_method

__all__ = ["Job", "pretrain", "train_loop", "training_dataset", "training_samples"]


def training_samples(config: Config) -> list[Sample]:
    """data.train, with data.train_images mixed in at data.image_ratio when given."""
    samples = read_samples(config.data.train, config.data)
    if config.data.train_images:
        try:
            samples = mix_samples(samples, read_samples(config.data.train_images, config.data), config.data.image_ratio,
                                  config.train.seed)
        except ValueError as error:
            raise ConfigError(str(error)) from None
    return samples


def training_dataset(config: Config, device: torch.device | None = None) -> VideoDataset | ShardStream:
    """The pre-training samples through the method's train-time views (`data.*` settings): from a
    list or image folder, or streamed from tar shards. With `data.decode_device=cuda`, frames are
    decoded on this process's GPU (`device`)."""
    data = config.data
    if not data.train:
        raise ConfigError("data.train is not set: give a list file, an ImageFolder directory or tar shards")
    check_decode_device(data.decode_device, data.decoder)
    decode_on = str(device) if data.decode_device == "cuda" and device is not None and device.type == "cuda" \
        else data.decode_device  # spawned workers do not inherit torch.cuda.set_device: name the GPU
    if is_shard_pattern(data.train):
        if data.train_images:
            raise ConfigError(f"data.train_images does not mix into tar shards (data.train={data.train}); "
                              "pack the images into the shards' list instead")
        if data.cache_decoded:
            raise ConfigError("data.cache_decoded does not work with tar shards, which stream each epoch anew; "
                              "set data.cache_decoded=false")
        return ShardStream(data.train, build_view(data, train=True), backend=data.decoder, device=decode_on,
                           repeat=data.repeat, seed=config.train.seed, shuffle_buffer=data.shuffle_buffer)
    return VideoDataset(training_samples(config), build_view(data, train=True), backend=data.decoder,
                        cache_decoded=data.cache_decoded, repeat=data.repeat, device=decode_on)


def pretrain(config: Config, output: str | Path, resume: str | Path | None = None,
             resume_override: bool = False, init: str | Path | None = None, overwrite: bool = False) -> dict[str, Any]:
    """Pre-train `config.method` and return a summary (steps, first/last logged losses, paths).
    `resume`: a checkpoint, or "auto" (the output folder's, if any); see `train_loop`.
    `init`: start from these weights (cmae, MAE / timm, VideoMAE or Hugging Face; `cmae.interop`);
    a resumed run continues from its checkpoint instead. `overwrite` moves a run already in `output` aside."""
    resolve_method(config)  # a method name or data.views that does not fit stops the run before any file is read
    imported = initialize_from(init, config) if init is not None else None

    def make_job(device: torch.device) -> Job:
        dataset = training_dataset(config, device)
        method = build_method(config)
        if imported is not None:
            report = load_imported(method, imported)
            if os.environ.get("RANK", "0") == "0":
                print(report, flush=True)
        method = method.to(device)
        return Job(method, dataset, param_groups(method, config.train.weight_decay), config.train,
                   after_epoch=monitor_hook(config))

    return train_loop(config, output, make_job, resume, resume_override, overwrite)
