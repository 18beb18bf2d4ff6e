"""Tests for cmae.data.decoding on small H.264 videos written with PyAV."""

from __future__ import annotations

import wave
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import pytest
import torch
from PIL import Image

from cmae.data import decoding
from cmae.data.decoding import (
    DecodeError,
    available_backends,
    is_image,
    load_image,
    open_video,
)

NUM_FRAMES, SIZE, FPS = 24, 32, 25
BACKENDS = available_backends()


def brightness(k: int) -> int:
    """Grey level of frame k: 10 levels apart, so +-4 of H.264 error still reads back."""
    return 10 * k + 5


def write_video(path: Path, frames: list[np.ndarray], gop: int = 5, options: dict | None = None,
                codec: str = "libx264") -> Path:
    """H.264 yuv420p at FPS; a short keyframe interval so that reads have to seek, and
    x264's default B-frames so that decode order differs from display order."""
    with av.open(str(path), "w", options=options or {}) as container:
        stream = container.add_stream(codec, rate=FPS)
        stream.height, stream.width = frames[0].shape[:2]
        stream.pix_fmt = "yuv420p"
        stream.codec_context.gop_size = gop
        for img in frames:
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def grey_frames() -> list[np.ndarray]:
    return [np.full((SIZE, SIZE, 3), brightness(k), np.uint8) for k in range(NUM_FRAMES)]


@pytest.fixture(scope="module")
def videos(tmp_path_factory) -> dict[str, Path]:
    """Grey-level videos in MP4 (frame count in the header) and MKV (no count: it is
    estimated from the duration), plus a colourful one for comparing backends."""
    root = tmp_path_factory.mktemp("videos")
    rng = np.random.default_rng(0)
    texture = rng.integers(0, 256, (40, 40 + NUM_FRAMES, 3), dtype=np.uint8)
    return {
        "mp4": write_video(root / "grey.mp4", grey_frames()),
        "mkv": write_video(root / "grey.mkv", grey_frames()),
        "colour": write_video(root / "colour.mp4", [texture[:, k : k + 40] for k in range(NUM_FRAMES)]),
    }


def frame_numbers(frames: torch.Tensor) -> list[int]:
    """Which grey frame each [3, H, W] image is, asserting it is a clean match."""
    levels = frames.float().mean(dim=(1, 2, 3))
    numbers = torch.round((levels - 5) / 10).long()
    assert torch.allclose(levels, numbers * 10 + 5.0, atol=3), levels
    return numbers.tolist()


def test_available_backends():
    assert "pyav" in BACKENDS  # a hard dependency
    assert BACKENDS == [b for b in ("torchcodec", "pyav") if b in BACKENDS]


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("container", ["mp4", "mkv"])
def test_metadata(videos, backend, container):
    with open_video(videos[container], backend) as reader:
        assert reader.path == videos[container]
        assert reader.num_frames == NUM_FRAMES
        assert reader.fps == pytest.approx(FPS)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    "indices",
    [list(range(NUM_FRAMES)), [2, 6, 10, 14], [23, 0, 11, 5, 17], [3, 3, 7, 3, 22, 22], [23], [0]],
    ids=["all", "sorted", "unsorted", "repeated", "last", "first"],
)
def test_get_frames(videos, backend, indices):
    with open_video(videos["mp4"], backend) as reader:
        frames = reader.get_frames(indices)
    assert frames.shape == (len(indices), 3, SIZE, SIZE)
    assert frames.dtype == torch.uint8
    assert frame_numbers(frames) == indices


@pytest.mark.parametrize("backend", BACKENDS)
def test_repeated_calls_on_one_reader(videos, backend):
    """Backwards and forwards seeks between calls."""
    with open_video(videos["mkv"], backend) as reader:
        for k in [20, 3, 3, 12, 0, 23, 7]:
            assert frame_numbers(reader.get_frames([k])) == [k]


@pytest.mark.skipif(len(BACKENDS) < 2, reason="needs torchcodec and PyAV")
def test_backends_agree(videos):
    """Same FFmpeg H.264 decode and swscale conversion: bit-identical frames."""
    indices = [13, 0, 5, 5, 23, 9]
    decoded = []
    for backend in BACKENDS:
        with open_video(videos["colour"], backend) as reader:
            decoded.append(reader.get_frames(indices))
    assert torch.equal(decoded[0], decoded[1])


@pytest.mark.parametrize("backend", BACKENDS)
def test_out_of_range_index(videos, backend):
    with open_video(videos["mp4"], backend) as reader:
        for bad in ([NUM_FRAMES], [0, -1]):
            with pytest.raises(IndexError, match="grey.mp4"):
                reader.get_frames(bad)


def test_pyav_header_overstating_length(videos):
    """Frames past the real end read as the last frame, and num_frames is corrected."""
    with open_video(videos["mp4"], "pyav") as reader:
        reader.num_frames = reader._declared_frames = NUM_FRAMES + 6  # as if the header promised 6 more
        frames = reader.get_frames([NUM_FRAMES + 3, 20, NUM_FRAMES - 1])
        assert frame_numbers(frames) == [NUM_FRAMES - 1, 20, NUM_FRAMES - 1]
        assert reader.num_frames == NUM_FRAMES
        # a later clip planned from the header's count (multi-view testing) still reads
        assert frame_numbers(reader.get_frames([NUM_FRAMES + 1, NUM_FRAMES + 5])) == [NUM_FRAMES - 1] * 2


def read_all(path: Path, backend: str) -> None:
    with open_video(path, backend) as reader:
        reader.get_frames(range(reader.num_frames))


@pytest.mark.parametrize("backend", BACKENDS)
def test_corrupt_files(tmp_path, videos, backend):
    garbage = tmp_path / "garbage.mp4"
    garbage.write_bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8).tobytes())
    data = videos["mp4"].read_bytes()
    truncated = tmp_path / "truncated.mp4"  # loses the index (moov), which PyAV writes last
    truncated.write_bytes(data[: len(data) // 2])
    faststart = write_video(tmp_path / "faststart.mp4", grey_frames(), options={"movflags": "faststart"})
    data = faststart.read_bytes()
    truncated_data = tmp_path / "truncated_data.mp4"  # keeps the index, loses frames
    truncated_data.write_bytes(data[: len(data) // 2])
    audio = tmp_path / "audio.mp4"  # a WAV file: valid media, but no video stream
    with wave.open(str(audio), "wb") as w:
        w.setnchannels(1), w.setsampwidth(2), w.setframerate(8000)
        w.writeframes(bytes(1600))
    for path in (garbage, truncated, truncated_data, audio):
        with pytest.raises(DecodeError, match=path.name):
            read_all(path, backend)


@pytest.mark.parametrize("backend", ["auto", *BACKENDS])
def test_missing_file(tmp_path, backend):
    with pytest.raises(DecodeError, match="nothing_here.mp4"):
        open_video(tmp_path / "nothing_here.mp4", backend)


def test_backend_names(videos, monkeypatch):
    with pytest.raises(ValueError, match="unknown video backend"):
        open_video(videos["mp4"], "opencv")
    with open_video(videos["mp4"]) as reader:  # "auto"
        assert isinstance(reader, decoding.TorchCodecReader if BACKENDS[0] == "torchcodec" else decoding.PyAVReader)
    # A forced backend that cannot load says how to install it.
    monkeypatch.setattr(decoding, "_probe", lambda b: "no FFmpeg" if b == "torchcodec" else None)
    assert available_backends() == ["pyav"]
    with pytest.raises(RuntimeError, match="pip install torchcodec"):
        open_video(videos["mp4"], "torchcodec")


class _Clips(torch.utils.data.Dataset):
    def __init__(self, path: Path) -> None:
        self.path = path

    def __len__(self) -> int:
        return 4

    def __getitem__(self, i: int) -> torch.Tensor:
        with open_video(self.path) as reader:  # opened per sample, in the worker
            return reader.get_frames([i, i + 4])


def test_dataloader_workers(videos):
    loader = torch.utils.data.DataLoader(_Clips(videos["mp4"]), batch_size=2, num_workers=2)
    batches = list(loader)
    assert [frame_numbers(clip) for batch in batches for clip in batch] == [[i, i + 4] for i in range(4)]


def test_images(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 256, (12, 20, 3), dtype=np.uint8)
    Image.fromarray(pixels).save(tmp_path / "a.png")
    Image.fromarray(pixels).convert("RGBA").save(tmp_path / "b.webp", lossless=True)
    for name in ("a.png", "b.webp"):
        image = load_image(tmp_path / name)
        assert image.shape == (1, 3, 12, 20) and image.dtype == torch.uint8
        assert torch.equal(image[0].permute(1, 2, 0), torch.from_numpy(pixels)), name

    smooth = np.ascontiguousarray(np.broadcast_to(np.arange(20, dtype=np.uint8)[None, :, None] * 10, (12, 20, 3)))
    Image.fromarray(smooth).save(tmp_path / "c.JPG", quality=95)
    image = load_image(tmp_path / "c.JPG")
    assert image.shape == (1, 3, 12, 20) and image.dtype == torch.uint8
    assert (image[0].permute(1, 2, 0).int() - torch.from_numpy(smooth).int()).abs().max() <= 8

    assert is_image(tmp_path / "c.JPG") and is_image("x.bmp") and not is_image("x.mp4")
    (tmp_path / "bad.png").write_bytes(b"not a png")
    with pytest.raises(DecodeError, match="bad.png"):
        load_image(tmp_path / "bad.png")


@pytest.mark.skipif(torch.cuda.is_available(), reason="the error is for machines without a GPU")
def test_cuda_decoding_without_a_gpu_is_refused_at_start(synth_dir, tmp_path):
    from cmae.config import ConfigError, load_config
    from cmae.engine.pretrain import pretrain
    from tests.helpers import tiny_overrides

    config = load_config("configs/demo/videomae.yaml", tiny_overrides(synth_dir, **{"data.decode_device": "cuda"}))
    with pytest.raises(ConfigError, match="data.decode_device=cuda needs a CUDA GPU"):
        pretrain(config, tmp_path)
    assert not (tmp_path / "metrics.jsonl").exists()


@pytest.mark.parametrize("codec", ["libvpx-vp9", "libvpx", "libsvtav1"])  # SSv2's VP9 / VP8, AV1 webm
def test_webm_codecs(tmp_path, codec):
    frames = [np.full((64, 64, 3), brightness(k), np.uint8) for k in range(NUM_FRAMES)]
    path = write_video(tmp_path / "clip.webm", frames, codec=codec)
    for backend in BACKENDS:
        with open_video(path, backend) as reader:
            assert reader.num_frames == NUM_FRAMES
            assert frame_numbers(reader.get_frames([20, 3, 11])) == [20, 3, 11]


@pytest.mark.parametrize("backend", BACKENDS)
def test_bytes_decode_like_the_file(videos, backend):
    with open_video(videos["colour"], backend) as from_file, \
            open_video("member.mp4", backend, data=videos["colour"].read_bytes()) as from_bytes:
        assert torch.equal(from_file.get_frames([0, 13]), from_bytes.get_frames([0, 13]))


def test_rotation_metadata_is_applied(tmp_path):
    """A phone video stored landscape with a 90-degree display matrix comes out portrait, the
    same with every backend (torchcodec applies the matrix; the PyAV reader turns the frames)."""
    frame = np.zeros((32, 48, 3), np.uint8)
    frame[:8, :8] = 255  # a white corner, top left as stored
    path = tmp_path / "rotated.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width, stream.pix_fmt = 32, 48, "yuv420p"
        stream.set_display_rotation(90)  # counter-clockwise
        for packet in [*stream.encode(av.VideoFrame.from_ndarray(frame, format="rgb24")), *stream.encode()]:
            container.mux(packet)
    for backend in BACKENDS:
        with open_video(path, backend) as reader:
            shown = reader.get_frames([0])[0, 0]
        assert shown.shape == (48, 32)  # portrait
        assert shown[-4:, :4].float().mean() > 200 and shown[:4, :4].float().mean() < 50  # corner now bottom left


def test_variable_frame_rate_decodes_in_time_order(tmp_path):
    """Frames 50 and 100 ms apart: torchcodec returns every frame by its index, the PyAV reader
    the frame on screen at index / average fps (its docstring); both in display order."""
    path = tmp_path / "vfr.mp4"
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.height, stream.width, stream.pix_fmt = SIZE, SIZE, "yuv420p"
        stream.codec_context.time_base = Fraction(1, 1000)  # keeps the uneven steps
        pts = 0
        for k, img in enumerate(grey_frames()):
            frame = av.VideoFrame.from_ndarray(img, format="rgb24")
            frame.pts, frame.time_base = pts, Fraction(1, 1000)
            pts += 50 if k % 2 else 100
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    for backend in BACKENDS:
        with open_video(path, backend) as reader:
            numbers = frame_numbers(reader.get_frames(range(reader.num_frames)))
        assert numbers == sorted(numbers) and numbers[0] == 0 and numbers[-1] >= NUM_FRAMES - 2, (backend, numbers)


@pytest.mark.parametrize("backend", BACKENDS)
def test_empty_and_audio_only_files_name_the_reason(tmp_path, backend):
    (tmp_path / "empty.mp4").write_bytes(b"")
    with pytest.raises(DecodeError, match=r"empty.mp4: empty file \(0 bytes\)"):
        open_video(tmp_path / "empty.mp4", backend)
    with av.open(str(tmp_path / "speech.m4a"), "w", format="mp4") as container:
        stream = container.add_stream("aac", rate=16000)
        for k in range(4):
            samples = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.int16), format="s16", layout="mono")
            samples.sample_rate, samples.pts = 16000, 1024 * k
            for packet in stream.encode(samples):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    with pytest.raises(DecodeError, match=r"speech.m4a: no video stream"):
        open_video(tmp_path / "speech.m4a", backend)
