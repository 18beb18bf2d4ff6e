"""Decode only the frames a clip needs, with torchcodec or PyAV (the fallback).

Both wrap FFmpeg's decoders and give bit-identical frames for the same file. Readers
hold an open file and no global state, so a data set should open one per sample
inside ``__getitem__``; that is safe in forked DataLoader workers.
"""

from __future__ import annotations

import functools
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol

import numpy as np
import torch

from cmae.config import ConfigError, reject_choice

__all__ = ["DecodeError", "IMAGE_EXTENSIONS", "VideoReader", "available_backends",
           "is_image", "load_image", "open_video"]

BACKENDS = ("torchcodec", "pyav")
IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")


class DecodeError(RuntimeError):
    """A file that cannot be opened or decoded; the message names the file and the cause."""


class VideoReader(Protocol):
    path: Path
    num_frames: int
    fps: float

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        """uint8 [T, 3, H, W] RGB frames at ``indices`` (any order, repeats allowed),
        not necessarily contiguous; IndexError (naming the file) if out of range."""
        ...

    def close(self) -> None: ...


class _Reader:
    """Context-manager support shared by the readers: ``with open_video(p) as r:``."""

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def check_indices(indices: Sequence[int], num_frames: int, path: Path) -> list[int]:
    idx = [int(i) for i in indices]
    bad = [i for i in idx if not 0 <= i < num_frames]
    if bad:
        raise IndexError(f"{path}: frame index {bad[0]} out of range [0, {num_frames})")
    if not idx:
        raise ValueError(f"{path}: get_frames needs at least one index")
    return idx


class TorchCodecReader(_Reader):
    """torchcodec reader; "exact" seek mode scans the packet index once on open, which
    costs little and gives the true frame count and exact frame indices."""

    def __init__(self, path: Path, device: str = "cpu", data: bytes | None = None) -> None:
        from torchcodec.decoders import VideoDecoder

        self.path = path
        # One FFmpeg thread: DataLoader workers already use every core. device="cuda": NVDEC decodes
        # and the frames come back as CUDA tensors. Rotation metadata is applied (torchcodec >= 0.8).
        try:
            self._decoder = VideoDecoder(str(path) if data is None else data, seek_mode="exact",
                                         num_ffmpeg_threads=1, dimension_order="NCHW", device=device)
        except ValueError as e:
            if "video stream" in str(e):  # an audio-only file
                raise DecodeError(f"{path}: no video stream") from e
            raise
        meta = self._decoder.metadata
        self.num_frames = int(meta.num_frames or 0)
        self.fps = float(meta.average_fps or 0.0)

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        idx = torch.tensor(check_indices(indices, self.num_frames, self.path))
        # Decode each distinct frame once, in file order, then scatter back to the request.
        unique, inverse = torch.unique(idx, sorted=True, return_inverse=True)
        try:
            frames = self._decoder.get_frames_at(unique.tolist()).data  # [U, 3, H, W]
        except Exception as e:  # torchcodec raises plain RuntimeError/ValueError
            raise DecodeError(f"{self.path}: decoding failed: {e}") from e
        return frames[inverse]

    def close(self) -> None:
        self._decoder = None


class PyAVReader(_Reader):
    """PyAV reader: one seek to the keyframe before the first wanted frame, then a
    sequential decode that stops after the last one.

    A frame's index is computed from its timestamp, and index ``i`` returns the frame
    on screen at ``i / fps`` (the last frame with index <= i). That is exact for
    constant-frame-rate video and degrades gracefully for variable rate, dropped
    frames, or a header that promises more frames than the stream holds (the
    trailing indices get the last frame and ``num_frames`` is corrected).
    """

    def __init__(self, path: Path, data: bytes | None = None) -> None:
        import av
        from av.video.reformatter import VideoReformatter

        self.path = path
        self._container = av.open(str(path) if data is None else io.BytesIO(data))
        if not self._container.streams.video:
            self._container.close()
            raise DecodeError(f"{path}: no video stream")
        stream = self._stream = self._container.streams.video[0]
        # One thread, as for torchcodec: FFmpeg's threads cut latency a little but
        # cost more CPU per clip, and DataLoader workers already fill the cores.
        stream.codec_context.thread_count = 1
        # A reformatter kept for the reader, with one thread, converts small frames
        # ~20x faster than frame.to_ndarray(format="rgb24"), which builds a new
        # swscale context and (PyAV >= 17, whose threads argument older ones lack)
        # a thread pool for every frame.
        self._reformatter = VideoReformatter()
        self._sws_args = {"threads": 1} if int(av.__version__.split(".")[0]) >= 17 else {}
        rate = stream.average_rate or stream.guessed_rate or stream.base_rate
        self.fps = float(rate) if rate else 0.0
        self._tb = float(stream.time_base)
        self._start = stream.start_time or 0
        if stream.frames > 0:
            self.num_frames = int(stream.frames)
        else:  # Matroska/WebM and raw streams often have no frame count in the header.
            if stream.duration is not None:
                seconds = stream.duration * self._tb
            else:
                seconds = (self._container.duration or 0) / 1e6  # in AV_TIME_BASE units
            self.num_frames = round(seconds * self.fps)
        # Callers plan clips from this count; indices that a later correction of num_frames
        # (a header that overstated the length) leaves past the end get the last frame.
        self._declared_frames = self.num_frames


    def _decode(self, wanted: list[int], seek: bool) -> dict[int, np.ndarray]:
        """Frames [H, W, 3] for the sorted, distinct ``wanted`` indices."""
        offset = round(wanted[0] / self.fps / self._tb) if seek else 0
        self._container.seek(self._start + offset, stream=self._stream)
        out: dict[int, np.ndarray] = {}
        rgb: dict[int, np.ndarray] = {}  # converted frames by index: convert each once

        def take(i: int, j: int, frame) -> None:
            if j not in rgb:
                rgb[j] = self._reformatter.reformat(frame, format="rgb24", **self._sws_args).to_ndarray()
                # the display matrix's counter-clockwise turn (phone videos), as torchcodec applies it
                if turns := round(getattr(frame, "rotation", 0) / 90) % 4:
                    rgb[j] = np.rot90(rgb[j], turns)
            out[i] = rgb[j]

        k, j, prev = 0, -1, None  # next wanted position, current index, (index, frame) before it
        for frame in self._container.decode(self._stream):
            if frame.pts is None:  # no timestamps: count frames, from the start
                if seek:
                    return self._decode(wanted, seek=False)
                j += 1
            else:
                j = round((frame.pts - self._start) * self._tb * self.fps)
            while k < len(wanted) and wanted[k] <= j:
                if wanted[k] < j and prev is not None:  # wanted[k] was on screen in prev
                    take(wanted[k], *prev)
                elif wanted[k] < j and seek:  # the seek landed past it: start over
                    return self._decode(wanted, seek=False)
                else:  # an exact hit, or before the first frame of the video
                    take(wanted[k], j, frame)
                k += 1
            if k == len(wanted):
                return out
            prev = (j, frame)
        # End of stream before the last wanted frame: the header overstated the length.
        if prev is None:
            return self._decode(wanted, seek=False) if seek else out
        self.num_frames = min(self.num_frames, prev[0] + 1)
        for i in wanted[k:]:
            take(i, *prev)
        return out

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:
        import av

        idx = [min(i, self.num_frames - 1) for i in check_indices(indices, self._declared_frames, self.path)]
        try:
            frames = self._decode(sorted(set(idx)), seek=True)
        except av.FFmpegError as e:
            raise DecodeError(f"{self.path}: decoding failed: {e}") from e
        if not frames:
            raise DecodeError(f"{self.path}: no frame could be decoded")
        # [T, H, W, 3] -> [T, 3, H, W]; repeats and order come from indexing the dict.
        return torch.from_numpy(np.stack([frames[i] for i in idx])).permute(0, 3, 1, 2)

    def close(self) -> None:
        self._container.close()


@functools.cache
def _probe(backend: str) -> str | None:
    """None if ``backend`` imports and can decode here, else why not."""
    try:
        if backend == "torchcodec":
            import torchcodec.decoders

            # Recent torchcodec imports without FFmpeg and only fails when decoding;
            # older versions raise on import instead.
            if getattr(torchcodec, "ffmpeg_major_version", 0) is None:
                return "torchcodec could not load the FFmpeg libraries"
        else:
            import av  # noqa: F401
    except Exception as e:  # ImportError, or RuntimeError/OSError from loading FFmpeg
        return f"{type(e).__name__}: {e}"
    return None


_INSTALL_HINT = {
    "torchcodec": "pip install torchcodec (it needs the system FFmpeg libraries, e.g. apt install ffmpeg)",
    "pyav": "pip install av",
}


def available_backends() -> list[str]:
    """The usable backends in order of preference: a subset of ["torchcodec", "pyav"]."""
    return [b for b in BACKENDS if _probe(b) is None]


def resolve_backend(backend: str = "auto") -> str:
    """The backend `open_video` uses for `backend` ("auto": the first usable one); raises when
    it is not one of them or not usable here."""
    if backend == "auto":
        usable = available_backends()
        if not usable:
            raise RuntimeError(f"no video backend is usable; install one: {_INSTALL_HINT['pyav']}")
        return usable[0]
    if backend not in BACKENDS:
        reject_choice("video backend", backend, ("auto", *BACKENDS))
    if (why := _probe(backend)) is not None:
        raise RuntimeError(f"video backend {backend!r} is not usable ({why}); {_INSTALL_HINT[backend]}")
    return backend


def check_decode_device(device: str, backend: str = "auto") -> None:
    """Raise, saying what is missing, unless frames can be decoded on `device` with `backend`."""
    if device == "cpu":
        return
    if device.split(":")[0] != "cuda":
        reject_choice("decode device", device, ("cpu", "cuda", "cuda:N"))
    if not torch.cuda.is_available():
        raise ConfigError("data.decode_device=cuda needs a CUDA GPU, and this machine has none; use cpu")
    if backend not in ("auto", "torchcodec") or _probe("torchcodec") is not None:
        raise ConfigError(f"data.decode_device=cuda decodes with torchcodec (data.decoder={backend!r}; torchcodec: "
                           f"{_probe('torchcodec') or 'usable'}); {_INSTALL_HINT['torchcodec']}, built with CUDA")


def open_video(path: str | Path, backend: str = "auto", device: str = "cpu", data: bytes | None = None) -> VideoReader:
    """Open ``path`` with ``backend`` ("auto": the first of available_backends()), decoding on
    ``device`` (cuda: torchcodec's NVDEC; see `check_decode_device`). With ``data``, decode those
    bytes (a tar shard's member) and use ``path`` only to name them.

    Raises DecodeError (naming the file) for anything that is not a decodable video, with the
    reason: no such file, an empty file, no video stream, no decodable frames, the decoder's error.
    """
    path = Path(path)
    if device != "cpu":
        check_decode_device(device, backend)
        backend = "torchcodec"
    backend = resolve_backend(backend)

    if data is None and not path.is_file():
        raise DecodeError(f"{path}: no such file")
    if (len(data) if data is not None else path.stat().st_size) == 0:
        raise DecodeError(f"{path}: empty file (0 bytes)")
    try:
        reader = TorchCodecReader(path, device, data) if backend == "torchcodec" else PyAVReader(path, data)
    except DecodeError:
        raise
    except Exception as e:  # each library has its own error types for bad input
        raise DecodeError(f"{path}: cannot open as video ({type(e).__name__}: {e})") from e
    if reader.num_frames <= 0 or reader.fps <= 0:
        reader.close()
        raise DecodeError(f"{path}: no decodable frames (num_frames={reader.num_frames}, fps={reader.fps})")
    return reader


def is_image(path: str | Path) -> bool:
    """Whether ``path`` has an image extension (such files load as one-frame clips)."""
    return Path(path).suffix.lower() in IMAGE_EXTENSIONS


def load_image(path: str | Path, data: bytes | None = None) -> torch.Tensor:
    """uint8 [1, 3, H, W] RGB image, EXIF rotation applied; from ``data`` (bytes named by ``path``) if given."""
    from PIL import Image, ImageOps

    # PIL rather than torchvision.io (deprecated since 0.29, ~2x faster on JPEG) or
    # torchcodec's image decoders (no EXIF rotation): it reads every format in
    # IMAGE_EXTENSIONS and is always installed.
    path = Path(path)
    try:
        with Image.open(path if data is None else io.BytesIO(data)) as img:
            rgb = np.array(ImageOps.exif_transpose(img).convert("RGB"))  # [H, W, 3]
    except Exception as e:
        raise DecodeError(f"{path}: cannot load image ({type(e).__name__}: {e})") from e
    return torch.from_numpy(rgb).permute(2, 0, 1).unsqueeze(0)
