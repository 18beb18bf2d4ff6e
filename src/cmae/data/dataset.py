"""A map-style data set over video/image samples that skips files it cannot decode."""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch.utils.data import Dataset

from cmae.data.decoding import DecodeError, check_indices, is_image, load_image, open_video
from cmae.data.lists import Sample, read_samples
from cmae.data.views import TrainView, render_views

# Consecutive undecodable files after which a sample gives up: the data set is broken, not noisy.
MAX_CONSECUTIVE_FAILURES = 32


class ImageSource:
    """An image as a one-frame video: any frame index returns the image."""

    num_frames = 1
    fps = 0.0
    is_image = True

    def __init__(self, path: Path, data: bytes | None = None):
        self.path = path
        self.image = load_image(path, data)  # [1, C, H, W]

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        return self.image.expand(len(indices), -1, -1, -1)

    def close(self) -> None:
        pass


class FrameFolderSource:
    """A raw-frame folder (mmaction's rawframes): frame i is the image `frame_template.format(frame_start + i)`."""

    fps = 0.0
    is_image = False

    def __init__(self, sample: Sample):
        if not sample.path.is_dir():
            raise DecodeError(f"{sample.path}: no such frame folder")
        self.path, self.num_frames = sample.path, sample.num_frames
        self.template, self.start = sample.frame_template, sample.frame_start

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = check_indices(indices, self.num_frames, self.path)
        loaded = {i: load_image(self.path / self.template.format(self.start + i))[0] for i in set(idx)}
        return torch.stack([loaded[i] for i in idx])

    def close(self) -> None:
        pass


def open_source(path: Path, backend: str = "auto", device: str = "cpu", data: bytes | None = None):
    """A video reader, or an `ImageSource` for image files; of `data` (bytes named by `path`) if given."""
    return ImageSource(path, data) if is_image(path) else open_video(path, backend, device, data)


def open_sample(sample: Sample, backend: str = "auto", device: str = "cpu"):
    """`open_source` of the sample's file, or its raw-frame folder."""
    return FrameFolderSource(sample) if sample.is_frame_folder else open_source(sample.path, backend, device)


class DecodedVideo:
    """Every frame of a video, decoded once and held in memory (`data.cache_decoded`)."""

    def __init__(self, source):
        self.num_frames, self.fps = source.num_frames, source.fps
        self.frames = source.get_frames(range(source.num_frames))  # uint8 [T, C, H, W]

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        return self.frames[list(indices)]

    def close(self) -> None:
        pass


def render(view: Callable, source, repeat: int = 1) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
    """The view of an open source, or `repeat` views of it decoded in one pass; closes the source."""
    try:
        return view(source) if repeat == 1 else render_views(view, source, repeat)
    finally:
        source.close()


def tag(item: dict | list[dict], label: int, index: int, num_failed: int) -> dict | list[dict]:
    """Add the sample's label, its index in the data set and the undecodable files it stands in for."""
    for one in item if isinstance(item, list) else [item]:
        one.update(label=label, index=index, num_failed=num_failed)
    return item


class VideoDataset(Dataset):
    """Samples -> {view tensors..., "label", "index", "num_failed"}.

    A file that fails to decode is reported (warning naming it) and replaced by the next
    decodable sample; `num_failed` counts the files skipped for this item, so the engine
    can total them over workers and ranks and stop when too many fail.

    With `cache_decoded`, each video is decoded whole on first use and kept in memory
    (per process: every data-loader worker holds its own copy), so later epochs skip the
    decoder; for small data sets of short clips, such as the demo's.

    With `repeat` k > 1 an item is a list of k samples of one video (`views.render_views`):
    each draws its own temporal position, crop, flip and colour, and the frames all k need
    are decoded in one pass. `decodes` counts the videos this process opened.
    """

    def __init__(
        self,
        samples: Sequence[Sample] | str | Path,
        view: Callable[..., dict[str, torch.Tensor]],
        backend: str = "auto",
        cache_decoded: bool = False,
        repeat: int = 1,
        device: str = "cpu",
    ):
        self.samples = list(read_samples(samples) if isinstance(samples, (str, Path)) else samples)
        self.view = view
        self.backend, self.device = backend, device
        self.cache: dict[Path, DecodedVideo | ImageSource] | None = {} if cache_decoded else None
        if repeat > 1 and not isinstance(view, TrainView):
            raise TypeError(f"repeat={repeat} needs a view with plan/render (a TrainView), got {view!r}")
        self.repeat = repeat
        self.decodes = 0

    def __len__(self) -> int:
        return len(self.samples)

    def open(self, sample: Sample):
        """The sample's frames: from the cache, or a freshly opened reader."""
        # Readers raise DecodeError for bad files; any other error is a bug and propagates.
        source = None if self.cache is None else self.cache.get(sample.path)
        if source is None:
            source = open_sample(sample, self.backend, self.device)
            self.decodes += 1
            if self.cache is not None:
                if not isinstance(source, ImageSource):  # an image is already held in memory
                    with contextlib.closing(source):
                        source = DecodedVideo(source)
                self.cache[sample.path] = source
        return source

    def load(self, sample: Sample) -> dict[str, torch.Tensor] | list[dict[str, torch.Tensor]]:
        return render(self.view, self.open(sample), self.repeat)

    def __getitem__(self, index: int) -> dict | list[dict]:
        for attempt in range(MAX_CONSECUTIVE_FAILURES):
            position = (index + attempt) % len(self.samples)
            sample = self.samples[position]
            try:
                item = self.load(sample)
            except DecodeError as error:
                warnings.warn(f"skipping undecodable file ({error})", stacklevel=2)
                continue
            return tag(item, sample.label, position, attempt)
        raise RuntimeError(
            f"{MAX_CONSECUTIVE_FAILURES} consecutive files from index {index} could not be decoded "
            f"(last: {self.samples[(index + MAX_CONSECUTIVE_FAILURES - 1) % len(self.samples)].path}); "
            "check the data set and the decoder (data.decoder)"
        )


def decoded_items(batch: dict) -> torch.Tensor:
    """`[B]` mask of a collated batch's items that are their own sample: the others stood in
    for an undecodable file and duplicate a neighbour, which an evaluation must not score."""
    return batch["num_failed"] == 0
