"""A map-style data set over video/image samples that skips files it cannot decode."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch.utils.data import Dataset

from cmae.data.decoding import DecodeError, is_image, load_image, open_video
from cmae.data.lists import Sample, read_samples

# Consecutive undecodable files after which a sample gives up: the data set is broken, not noisy.
MAX_CONSECUTIVE_FAILURES = 32


class ImageSource:
    """An image as a one-frame video: any frame index returns the image."""

    num_frames = 1
    fps = 0.0
    is_image = True

    def __init__(self, path: Path):
        self.path = path
        self.image = load_image(path)  # [1, C, H, W]

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        return self.image.expand(len(indices), -1, -1, -1)

    def close(self) -> None:
        pass


def open_source(path: Path, backend: str = "auto"):
    """A video reader, or an `ImageSource` for image files."""
    return ImageSource(path) if is_image(path) else open_video(path, backend)


class VideoDataset(Dataset):
    """Samples -> {view tensors..., "label", "index", "num_failed"}.

    A file that fails to decode is reported (warning naming it) and replaced by the next
    decodable sample; `num_failed` counts the files skipped for this item, so the engine
    can total them over workers and ranks and stop when too many fail.
    """

    def __init__(
        self,
        samples: Sequence[Sample] | str | Path,
        view: Callable[..., dict[str, torch.Tensor]],
        backend: str = "auto",
    ):
        self.samples = list(read_samples(samples) if isinstance(samples, (str, Path)) else samples)
        self.view = view
        self.backend = backend

    def __len__(self) -> int:
        return len(self.samples)

    def load(self, sample: Sample) -> dict[str, torch.Tensor]:
        # Readers raise DecodeError for bad files; any other error is a bug and propagates.
        source = open_source(sample.path, self.backend)
        try:
            return self.view(source)
        finally:
            source.close()

    def __getitem__(self, index: int) -> dict:
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            position = (index + attempt) % len(self.samples)
            sample = self.samples[position]
            try:
                item = self.load(sample)
            except DecodeError as error:
                warnings.warn(f"skipping undecodable file ({error})", stacklevel=2)
                continue
            item.update(label=sample.label, index=position, num_failed=attempt)
            return item
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_FAILURES} consecutive files from index {index} could not be decoded "
            f"(last: {self.samples[(index + MAX_CONSECUTIVE_FAILURES - 1) % len(self.samples)].path}); "
            "check the data set and the decoder (data.decoder)"
        )


def decoded_items(batch: dict) -> torch.Tensor:
    """`[B]` mask of a collated batch's items that are their own sample: the others stood in
    for an undecodable file and duplicate a neighbour, which an evaluation must not score."""
    return batch["num_failed"] == 0
