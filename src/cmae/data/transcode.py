"""`cmae prepare ... --resize SHORT_SIDE`: re-encode videos to a smaller short side, in parallel.

VideoMAE trains Kinetics from copies resized to a 320-pixel short side: decoding a 320p
frame costs a fraction of a 720p one, and the random resized crop to 224 loses nothing.
Each video becomes H.264 (yuv420p, CRF 23, x264's "veryfast" preset) in an mp4 with
a keyframe every `keyframe_interval` frames: a clip read seeks to the keyframe before
its first frame and decodes from there, so a short interval caps that waste, where x264's
default (250) decodes most of a 10-second clip for every read. The cost is a larger file:
measured here (docs/results.md, "Re-encoding for training"), 32 reads a VideoMAE clip as fast as 16 and
twice as fast as 250, in files 1.4x the size of 250's where 16's are 2x.
Frames are never scaled up, timestamps (variable frame rate) are kept, a rotation flag is
applied to the pixels (so readers that ignore it, such as decord, see the upright video),
and audio is dropped (no method here uses it).

Finished files are skipped on a second run: each is written under a temporary name and
renamed when complete, so an interrupted job leaves no half file behind. A file that
fails to decode is logged and counted and does not stop the job.
"""

from __future__ import annotations

import multiprocessing
import os
import time
from concurrent.futures import ProcessPoolExecutor, as_completed
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm


@dataclass(frozen=True)
class ResizeJob:
    source: Path
    target: Path
    short_side: int
    keyframe_interval: int = 32


def scaled_size(width: int, height: int, short_side: int) -> tuple[int, int]:
    """(width, height) with the short side at most `short_side`, aspect kept, both even (yuv420p)."""
    scale = min(1.0, short_side / min(width, height))
    return max(2, round(width * scale / 2) * 2), max(2, round(height * scale / 2) * 2)


def _output_stream(target, video, width: int, height: int, job: ResizeJob):
    """An H.264 stream at the scaled size, in the source's time base (its timestamps, frame for frame)."""
    stream = target.add_stream("libx264", rate=video.average_rate or video.guessed_rate or 30)
    stream.width, stream.height = scaled_size(width, height, job.short_side)
    stream.pix_fmt = "yuv420p"
    stream.codec_context.time_base = video.time_base
    interval = job.keyframe_interval
    stream.options = {"crf": "23", "preset": "veryfast",
                      "x264-params": f"keyint={interval}:min-keyint={interval}:scenecut=0:threads=1"}
    return stream


def resize_video(job: ResizeJob) -> tuple[str, ResizeJob, str]:
    """("done" | "skipped" | "failed", job, reason) for one video; never raises."""
    import av

    if job.target.exists():
        return "skipped", job, ""
    job.target.parent.mkdir(parents=True, exist_ok=True)
    partial = job.target.with_name(job.target.name + ".part")
    try:
        with av.open(str(job.source)) as source, av.open(str(partial), "w", format="mp4") as target:
            if not source.streams.video:
                raise ValueError("no video stream")
            video = source.streams.video[0]
            video.thread_count = 1  # the workers already use every core
            stream, pts = None, -1
            for frame in source.decode(video):
                # the muxer needs rising timestamps; some files repeat one or have none
                pts = pts + 1 if frame.pts is None else max(frame.pts, pts + 1)
                # a rotation flag is applied to the pixels: readers that ignore the flag (decord) then agree
                turns = round(getattr(frame, "rotation", 0) / 90) % 4
                if turns:
                    frame = av.VideoFrame.from_ndarray(np.rot90(frame.to_ndarray(format="rgb24"), turns).copy(),
                                                       format="rgb24")
                if stream is None:
                    stream = _output_stream(target, video, frame.width, frame.height, job)
                scaled = frame.reformat(width=stream.width, height=stream.height, format="yuv420p",
                                        interpolation="AREA")
                scaled.pts, scaled.time_base = pts, video.time_base
                target.mux(stream.encode(scaled))
            if stream is None:
                raise ValueError("no frame could be decoded")
            target.mux(stream.encode())
        os.replace(partial, job.target)
        return "done", job, ""
    except Exception as error:  # any decoder error: count the file, keep going
        partial.unlink(missing_ok=True)
        return "failed", job, f"{type(error).__name__}: {error}"


def resize_videos(jobs: list[ResizeJob], workers: int = 1, log: Path | None = None) -> dict:
    """Run `jobs` on `workers` processes with a progress bar. Returns counts (done, skipped,
    failed), the seconds taken and the bytes written; failures go to `log`, one per line. A
    worker that dies (FFmpeg crashing, the out-of-memory killer) stops the job with the files it
    may have held; what finished is kept for the next run."""
    started = time.time()
    counts = {"done": 0, "skipped": 0, "failed": 0}
    failures = []
    with tqdm(total=len(jobs), desc="resize", unit="video", dynamic_ncols=True) as bar:
        for status, job, reason in _run_all(jobs, workers):
            counts[status] += 1
            if status == "failed":
                failures.append(f"{job.source}\t{reason}")
                bar.write(f"failed: {job.source}: {reason}")
            bar.update()
            bar.set_postfix(failed=counts["failed"], refresh=False)
    if log is not None:
        log.write_text("".join(f"{line}\n" for line in failures))
    written = sum(job.target.stat().st_size for job in jobs if job.target.exists())
    return {**counts, "seconds": round(time.time() - started, 1), "bytes": written, "failed_files": failures}


def _run_all(jobs: list[ResizeJob], workers: int):
    """`resize_video` of every job as each finishes: inline for one worker, else in processes."""
    if workers <= 1:
        yield from map(resize_video, jobs)
        return
    with ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        pending = {pool.submit(resize_video, job): job for job in jobs}
        try:
            for future in as_completed(pending):
                yield future.result()
        except BrokenProcessPool:
            finished = sum(f.done() and not f.cancelled() and f.exception() is None for f in pending)
            raise RuntimeError(f"a resize worker died (FFmpeg crashed, or out of memory); {finished} of {len(jobs)} "
                               "files are done and kept: run the command again to go on (with fewer --workers if "
                               "memory ran out)") from None


def resize_rows(rows_by_split: dict[str, list[tuple[Path, int]]], root: Path, output: Path, short_side: int,
                workers: int = 1, keyframe_interval: int = 32) -> tuple[dict[str, list[tuple[Path, int]]], dict]:
    """Re-encode every listed video to output/videos/<its path under root>.mp4 and return the
    rows pointing at the copies, without the files that failed, and the job's summary."""
    target_of = {file: output / "videos" / file.relative_to(root).with_suffix(".mp4")
                 for rows in rows_by_split.values() for file, _ in rows}
    jobs = [ResizeJob(file, target, short_side, keyframe_interval) for file, target in target_of.items()]
    summary = resize_videos(jobs, workers, log=output / "failed.txt")
    failed = {line.split("\t")[0] for line in summary.pop("failed_files")}
    resized = {split: [(target_of[file], label) for file, label in rows if str(file) not in failed]
               for split, rows in rows_by_split.items()}
    return resized, summary
