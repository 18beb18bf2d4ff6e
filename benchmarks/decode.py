"""Benchmark the video decoding backends on a VideoMAE-style clip read.

Each read opens a file, decodes 16 frames at stride 4 from a random start and closes
it, as a data set's ``__getitem__`` does. Test videos are made with PyAV (libx264,
yuv420p, x264's default keyframe interval unless --gop) in a temporary directory.

    python benchmarks/decode.py [--videos 8] [--frames 16] [--size 224] [--length 300]
"""

from __future__ import annotations

import argparse
import random
import tempfile
import time
from pathlib import Path

import av
import numpy as np
import torch

from cmae.data.decoding import available_backends, open_video


def make_video(path: Path, length: int, size: int, seed: int, fps: int = 30, gop: int | None = None) -> None:
    """A panning texture with a moving square and mild noise: cheap enough to encode,
    but with real motion so that P/B frames cost something to decode."""
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (size // 8 + 1, 2 * size // 8 + 1, 3), dtype=np.uint8)
    texture = texture.repeat(8, 0).repeat(8, 1)  # 8x8 blocks, [size+, 2*size+, 3]
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width = stream.height = size
        stream.pix_fmt = "yuv420p"
        if gop:
            stream.codec_context.gop_size = gop
        for k in range(length):
            shift = k % size
            img = texture[:size, shift : shift + size].copy()
            y = x = (3 * k) % (size - size // 4)
            img[y : y + size // 4, x : x + size // 4] = 255
            img = np.clip(img + rng.integers(-4, 5, img.shape), 0, 255).astype(np.uint8)
            for packet in stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)


def clip_indices(rng: random.Random, length: int, frames: int, rate: int) -> list[int]:
    """VideoMAE sampling: ``frames`` indices ``rate`` apart from a random start."""
    span = (frames - 1) * rate + 1
    start = rng.randint(0, max(length - span, 0))
    return [min(start + i * rate, length - 1) for i in range(frames)]


def bench_case(videos: list[Path], length: int, args: argparse.Namespace) -> dict[str, float]:
    """Mean milliseconds per clip for each backend. Backends alternate within each repeat
    and see the same clips, so drift in machine load affects them alike."""
    times: dict[str, list[float]] = {b: [] for b in available_backends()}
    for rep in range(args.repeats + 1):  # repeat 0 warms caches and is not counted
        rng = random.Random(rep)
        clips = [(v, clip_indices(rng, length, args.frames, args.rate)) for v in videos]
        for backend in times:
            for path, indices in clips:
                t0 = time.perf_counter()
                reader = open_video(path, backend)
                frames = reader.get_frames(indices)
                reader.close()
                if rep:
                    times[backend].append(time.perf_counter() - t0)
                assert frames.shape[0] == args.frames
    return {b: 1000 * float(np.mean(t)) for b, t in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8, help="videos per case")
    parser.add_argument("--frames", type=int, default=16, help="frames per clip")
    parser.add_argument("--rate", type=int, default=4, help="sampling rate (stride)")
    parser.add_argument("--size", type=int, default=224, help="side of the long videos")
    parser.add_argument("--length", type=int, default=300, help="frames in the long videos")
    parser.add_argument("--short-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="passes over the videos")
    parser.add_argument("--gop", type=int, default=None, help="keyframe interval (default: x264's 250)")
    args = parser.parse_args()
    torch.set_num_threads(1)  # as in a DataLoader worker

    short_length = (args.frames - 1) * args.rate + 1
    cases = [
        (f"{args.length}f {args.size}px", args.length, args.size),
        (f"{short_length}f {args.short_size}px", short_length, args.short_size),
    ]
    print(f"backends: {available_backends()}; {args.videos} videos per case, "
          f"{args.frames} frames at stride {args.rate}, {args.repeats} repeats")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for name, length, size in cases:
            videos = [Path(tmp) / f"{size}_{i}.mp4" for i in range(args.videos)]
            for i, path in enumerate(videos):
                make_video(path, length, size, seed=i, gop=args.gop)
            ms = bench_case(videos, length, args)
            rows += [(b, name, t, ms.get("pyav", float("nan")) / t) for b, t in ms.items()]

    print(f"{'backend':<11} {'case':<14} {'ms/clip':>8} {'clips/s':>8} {'vs pyav':>8}")
    for backend, name, t, speedup in rows:
        print(f"{backend:<11} {name:<14} {t:8.2f} {1000 / t:8.1f} {speedup:7.2f}x")


if __name__ == "__main__":
    main()
