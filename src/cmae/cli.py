"""The `cmae` command: synth, pretrain, demo."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from cmae.config import ConfigError, load_config

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def preset(name: str) -> Path:
    """A packaged preset by relative name, e.g. `demo/videomae.yaml`."""
    return CONFIG_DIR / name


def cmd_synth(args: argparse.Namespace) -> None:
    from cmae.data.synth import SynthSpec, write_synthetic_dataset

    spec = SynthSpec(num_train=args.train, num_val=args.val, num_frames=args.frames, size=args.size, seed=args.seed)
    started = time.time()
    summary = write_synthetic_dataset(args.output, spec, progress=True)
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {spec.num_train} + {spec.num_val} clips to {args.output} in {time.time() - started:.1f}s")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from cmae.engine.pretrain import pretrain

    config = load_config(args.config, args.overrides)
    summary = pretrain(config, args.output, resume=args.resume)
    if "last" in summary:
        print(json.dumps({k: summary[k] for k in ("steps", "seconds", "first", "last")}, indent=2))


def cmd_demo(args: argparse.Namespace) -> None:
    from cmae.data.synth import SynthSpec, write_synthetic_dataset
    from cmae.engine.pretrain import pretrain

    output = Path(args.output)
    data = output / "data"
    started = time.time()
    if not (data / "train.txt").exists():
        print(f"[demo] writing the synthetic action data set to {data}")
        write_synthetic_dataset(data, SynthSpec(), progress=True)
    config = load_config(preset("demo/videomae.yaml"), [f"data.train={data / 'train.txt'}", *args.overrides])
    print(f"[demo] pre-training {config.method.name} ({config.model.name}) for {config.train.epochs} epochs")
    summary = pretrain(config, output / "videomae")
    first, last = summary["first"], summary["last"]
    print(
        f"[demo] done in {time.time() - started:.0f}s: loss_rec {first['loss_rec']:.4f} (step {first['step']}) "
        f"-> {last['loss_rec']:.4f} (step {last['step']}); run folder {output / 'videomae'}"
    )


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmae", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write the synthetic action data set (H.264 mp4 + list files)")
    synth.add_argument("output")
    synth.add_argument("--train", type=int, default=400, help="training clips")
    synth.add_argument("--val", type=int, default=160, help="validation clips")
    synth.add_argument("--frames", type=int, default=16)
    synth.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.set_defaults(func=cmd_synth)

    pre = commands.add_parser("pretrain", help="self-supervised pre-training")
    pre.add_argument("--config", required=True, help="YAML preset, e.g. configs/demo/videomae.yaml")
    pre.add_argument("--output", required=True, help="run folder")
    pre.add_argument("--resume", help="checkpoint to continue from (e.g. RUN/checkpoint-last.pt)")
    pre.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=2")
    pre.set_defaults(func=cmd_pretrain)

    demo = commands.add_parser("demo", help="the main job end to end on the synthetic data set")
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("overrides", nargs="*", metavar="key=value")
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: list[str] | None = None) -> None:
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, FileNotFoundError) as error:
        print(f"cmae {args.command}: error: {error}", file=sys.stderr)
        sys.exit(2)


if __name__ == "__main__":
    main()
