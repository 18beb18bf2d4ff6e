"""Which side limits a run: the training loader's clips/s against the model's, for one config and list.

The loader is the one pre-training uses (`training_dataset` + `make_loader`: real files, the real
decoder, the method's views, `data.num_workers` persistent workers); its rate is samples per
second over `--batches` batches after the first (worker start-up is not counted). The model's is
`--steps` timed AdamW steps of the method on one of those batches. A ratio above 1 means the
loader keeps up; the issue's goal is 2x at the paper configs with 10 workers per GPU.

    python benchmarks/loader.py --config configs/demo/videomae.yaml data.train=DATA/train.txt
    python benchmarks/loader.py --config ... "data.train=SHARDS/shard-{000000..000099}.tar" data.cache_decoded=false
    python benchmarks/loader.py --config configs/demo/videomae.yaml data.train=... --repeat 1 2 4
    # decoding only (no model step), on long videos it writes: 320x320, 300 frames, 30 fps
    python benchmarks/loader.py --config configs/pretrain/videomae_vit_b_k400.yaml --long-videos 8 \\
        --decode-only --repeat 1 2 4 data.num_workers=2 train.batch_size=8
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

from cmae.config import load_config
from cmae.data.loader import make_loader, set_loader_epoch
from cmae.distributed import DistInfo
from cmae.engine.pretrain import training_dataset
from cmae.engine.runtime import resolve_device, resolve_precision
from cmae.methods import build_method

sys.path.insert(0, str(Path(__file__).resolve().parent))
from decode import make_video  # noqa: E402
from pretrain_speed import timed_steps  # noqa: E402


def loader_rate(config, batches: int) -> tuple[float, dict]:
    """Samples per second of the training loader over `batches` batches after the first; one batch."""
    dataset = training_dataset(config)
    loader = make_loader(dataset, config, DistInfo(), config.train.batch_size)
    set_loader_epoch(loader, 0)
    iterator = iter(loader)
    first = next(iterator)  # starts the workers
    started, samples = time.perf_counter(), 0
    for _ in range(batches):
        try:
            samples += len(next(iterator)["index"])
        except StopIteration:  # a short list: start the next epoch, as training does
            set_loader_epoch(loader, 1)
            iterator = iter(loader)
    seconds = time.perf_counter() - started
    del iterator  # let the workers go before timing the model
    return samples / seconds, first


def model_rate(config, batch: dict, steps: int) -> float:
    """Samples per second of the method's training step (median of `steps`) on `batch`."""
    device = resolve_device(config.train.device)
    dtype = resolve_precision(config.train.precision, device)
    method = build_method(config).to(device).train()
    inputs = {k: v.to(device) for k, v in batch.items() if isinstance(v, torch.Tensor)}
    timings, _ = timed_steps(method, inputs, device, dtype, steps)
    return len(batch["index"]) / statistics.median(timings)


def write_long_videos(folder: Path, count: int, size: int, length: int) -> Path:
    for i in range(count):
        make_video(folder / f"long_{i}.mp4", length, size, seed=i)
    listing = folder / "train.txt"
    listing.write_text("".join(f"long_{i}.mp4 {i % 2}\n" for i in range(count)))
    return listing


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", required=True)
    parser.add_argument("--batches", type=int, default=10, help="timed loader batches")
    parser.add_argument("--steps", type=int, default=5, help="timed model steps")
    parser.add_argument("--repeat", type=int, nargs="+", default=[1], help="data.repeat values to compare")
    parser.add_argument("--decode-only", action="store_true", help="the loader alone, no model step")
    parser.add_argument("--long-videos", type=int, default=0, help="write this many long videos and load them")
    parser.add_argument("--size", type=int, default=320, help="side of the long videos")
    parser.add_argument("--length", type=int, default=300, help="frames of the long videos")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_intermixed_args()

    with tempfile.TemporaryDirectory() as tmp:
        overrides = list(args.overrides)
        if args.long_videos:
            listing = write_long_videos(Path(tmp), args.long_videos, args.size, args.length)
            overrides.append(f"data.train={listing}")
        rows = []
        for repeat in args.repeat:
            config = load_config(args.config, [*overrides, f"data.repeat={repeat}"])
            loader, batch = loader_rate(config, args.batches)
            model = float("nan") if args.decode_only else model_rate(config, batch, args.steps)
            rows.append((repeat, loader, model))
    data = config.data
    print(f"{args.config}: batch {config.train.batch_size}, {data.num_workers} workers, {data.num_frames} frames "
          f"at stride {data.sampling_rate}, {data.image_size}px, "
          f"decoder {data.decoder}, {torch.get_num_threads()} threads")
    print("| data.repeat | loader clips/s | model clips/s | loader / model |")
    print("|---:|---:|---:|---:|")
    for repeat, loader, model in rows:
        ratio = "-" if args.decode_only else f"{loader / model:.2f}x"
        print(f"| {repeat} | {loader:.1f} | {'-' if args.decode_only else f'{model:.1f}'} | {ratio} |")


if __name__ == "__main__":
    main()
