"""Views: how one decoded sample becomes the tensors a method consumes.

A view builder gets an open reader (a video, or an image as a one-frame video) and
returns a dict of float tensors `[C, T, H, W]`. `data.views` picks the builder by name;
a method states which keys it needs, and never opens a file itself.
"""

from __future__ import annotations

from typing import Callable, Protocol, Sequence

import torch
from torchvision import tv_tensors
from torchvision.transforms import v2

from cmae.config import ConfigError, DataConfig


class FrameSource(Protocol):
    num_frames: int

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:  # uint8 [T, C, H, W]
        ...


def randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] from torch's RNG (seeded per DataLoader worker)."""
    return int(torch.randint(low, high + 1, ()).item())


def clip_indices(video_frames: int, num_frames: int, rate: int, start: int | None = None) -> list[int]:
    """Frame indices start + k*rate, k = 0..num_frames-1, with a random start when none is given.

    A video shorter than the clip's span is covered evenly instead (the stride shrinks),
    so a one-frame source (an image) gives num_frames copies of frame 0.
    """
    span = (num_frames - 1) * rate + 1
    if video_frames < span:
        return torch.linspace(0, video_frames - 1, num_frames).round().long().tolist()
    if start is None:
        start = randint(0, video_frames - span)
    return [start + k * rate for k in range(num_frames)]


def spatial_transform(config: DataConfig, train: bool) -> v2.Compose:
    """Crop/flip drawn once per call and applied to every frame of a `Video`, then normalise.

    Train: random resized crop (scale `data.crop_scale`) and horizontal flip. Eval: resize
    the short side and centre-crop.
    """
    size = config.image_size
    if train:
        geometric = [v2.RandomResizedCrop(size, scale=tuple(config.crop_scale), ratio=tuple(config.crop_ratio))]
        if config.hflip:
            geometric.append(v2.RandomHorizontalFlip())
    else:
        geometric = [v2.Resize(size), v2.CenterCrop(size)]
    return v2.Compose([*geometric, v2.ToDtype(torch.float32, scale=True), v2.Normalize(config.mean, config.std)])


def to_clip(frames: torch.Tensor, transform: Callable) -> torch.Tensor:
    """uint8 frames `[T, C, H, W]` -> transformed float clip `[C, T, H, W]`."""
    return transform(tv_tensors.Video(frames)).as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous()


class ClipView:
    """One clip of `num_frames` frames at `sampling_rate` -> {"video": [C, T, H, W]}."""

    def __init__(self, config: DataConfig, train: bool = True):
        self.num_frames = config.num_frames
        self.rate = config.sampling_rate
        self.transform = spatial_transform(config, train)

    def __call__(self, source: FrameSource) -> dict[str, torch.Tensor]:
        frames = source.get_frames(clip_indices(source.num_frames, self.num_frames, self.rate))
        return {"video": to_clip(frames, self.transform)}


VIEWS: dict[str, Callable[[DataConfig, bool], Callable[[FrameSource], dict[str, torch.Tensor]]]] = {
    "clip": ClipView,
}


def build_view(config: DataConfig, train: bool = True) -> Callable[[FrameSource], dict[str, torch.Tensor]]:
    if config.views not in VIEWS:
        raise ConfigError(f"unknown data.views {config.views!r}; choose one of: {', '.join(VIEWS)}")
    return VIEWS[config.views](config, train)
