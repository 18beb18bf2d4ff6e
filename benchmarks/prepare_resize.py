"""The time and disk cost of `cmae prepare ... --resize`, per 1,000 videos, and what the keyframe
interval buys: the time to read one VideoMAE clip (16 frames, 4 apart, random start) back.

Source videos are Kinetics-shaped: 10 s at 30 fps, 640x360 H.264 with x264's default keyframe
interval, showing a panning texture, a moving square and mild noise (synthetic: real footage
compresses differently, so take the sizes as an indication). Each is re-encoded to a 320 short
side with `resize_videos`, once per keyframe interval, on `--workers` processes.

    python benchmarks/prepare_resize.py --videos 8 --workers 2 --intervals 16 250
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
from pathlib import Path

import av
import numpy as np

from cmae.data.decoding import open_video, resolve_backend
from cmae.data.transcode import ResizeJob, resize_videos

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import clip_indices  # noqa: E402


def make_source(path: Path, seed: int, width: int = 640, height: int = 360, frames: int = 300) -> None:
    rng = np.random.default_rng(seed)
    texture = rng.integers(0, 256, (height // 16 + 1, 2 * width // 16 + 1, 3), dtype=np.uint8)
    texture = texture.repeat(16, 0).repeat(16, 1)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=30)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for k in range(frames):
            img = texture[:height, k : k + width].copy()
            y, x = (2 * k) % (height - 60), (3 * k) % (width - 60)
            img[y : y + 60, x : x + 60] = 255
            img = np.clip(img + rng.integers(-2, 3, img.shape), 0, 255).astype(np.uint8)
            container.mux(stream.encode(av.VideoFrame.from_ndarray(img, format="rgb24")))
        container.mux(stream.encode())


def clip_read_ms(paths: list[Path], reads: int, backend: str) -> float:
    """Median milliseconds to open a file and decode one 16 x 4 clip at a random start."""
    rng, times = random.Random(0), []
    for k in range(reads):
        path = paths[k % len(paths)]
        started = time.perf_counter()
        with open_video(path, backend) as reader:
            reader.get_frames(clip_indices(rng, reader.num_frames, 16, 4))
        times.append(time.perf_counter() - started)
    return 1000 * statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--videos", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--short-side", type=int, default=320)
    parser.add_argument("--intervals", type=int, nargs="+", default=[16, 250])
    parser.add_argument("--reads", type=int, default=40, help="clip reads timed per interval")
    parser.add_argument("--frames", type=int, default=300, help="frames per source video (Kinetics: 300)")
    args = parser.parse_args()
    backend = resolve_backend("auto")
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        sources = [root / "in" / f"{k:04d}.mp4" for k in range(args.videos)]
        sources[0].parent.mkdir()
        for k, path in enumerate(sources):
            make_source(path, k, frames=args.frames)
        source_mb = sum(p.stat().st_size for p in sources) / len(sources) / 1e6
        print(f"{args.videos} sources: 640x360, {args.frames} frames at 30 fps, {source_mb:.2f} MB each; "
              f"resize to a {args.short_side} short side on {args.workers} workers; reads with {backend}")
        print(f"source clip read (keyframe interval 250): {clip_read_ms(sources, args.reads, backend):.1f} ms")
        print("| keyframe interval | s per video (wall, all workers) | hours per 1,000 | GB per 1,000 | "
              "clip read, ms |")
        print("|---|---|---|---|---|")
        for interval in args.intervals:
            jobs = [ResizeJob(p, root / f"out{interval}" / p.name, args.short_side, interval) for p in sources]
            started = time.perf_counter()
            summary = resize_videos(jobs, args.workers)
            seconds = (time.perf_counter() - started) / len(jobs)
            assert summary["failed"] == 0, summary
            gigabytes = summary["bytes"] / len(jobs) * 1000 / 1e9
            read = clip_read_ms([job.target for job in jobs], args.reads, backend)
            print(f"| {interval} | {seconds:.2f} | {seconds * 1000 / 3600:.2f} | {gigabytes:.2f} | {read:.1f} |")


if __name__ == "__main__":
    main()
