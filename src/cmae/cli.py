"""The `cmae` command: synth, prepare, pretrain, linprobe, attnprobe, knn, finetune, visualize, plot, extract, export, demo,
presets, models."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

from cmae import __version__
from cmae.config import ConfigError, InputError, load_config
from cmae.data.synth import STYLES, SynthSpec
from cmae.engine.checkpoint import CheckpointWriteError
from cmae.engine.signals import EXIT_INTERRUPTED
from cmae.interop import WeightsError


def cmd_synth(args: argparse.Namespace) -> None:
    from cmae.data.synth import write_synthetic_dataset

    spec = SynthSpec(num_train=args.train, num_val=args.val, num_frames=args.frames, size=args.size, seed=args.seed,
                     background_drift=args.background_drift, distractors=args.distractors,
                     same_shape_distractors=args.same_shape_distractors,
                     same_color_distractors=args.same_color_distractors, background_pool=args.background_pool,
                     style=args.style, crf=args.crf, light=args.light, leaf_shade=tuple(args.leaf_shade),
                     motion_scale=args.motion_scale, leaf_outline=args.leaf_outline,
                     background_light=args.background_light,
                     background_light_angle=tuple(args.background_light_angle))
    started = time.time()
    summary = write_synthetic_dataset(args.output, spec, progress=True)
    print(json.dumps(summary, indent=2, default=str))
    print(f"wrote {spec.num_train} + {spec.num_val} clips to {args.output} in {time.time() - started:.1f}s")


def cmd_pretrain(args: argparse.Namespace) -> None:
    from cmae.engine.pretrain import pretrain

    config = load_config(args.config, args.overrides)
    summary = pretrain(config, args.output, resume=args.resume, resume_override=args.resume_override,
                       init=args.init, overwrite=args.overwrite)
    if "last" in summary:
        print(json.dumps({k: summary[k] for k in ("steps", "seconds", "first", "last")}, indent=2))


def cmd_visualize(args: argparse.Namespace) -> None:
    from cmae.visualize import visualize

    result = visualize(args.checkpoint, args.input, args.output, config_path=args.config,
                       overrides=args.overrides, seed=args.seed, true_stats=args.true_stats)
    print(f"wrote {result['output']} (loss {result['loss']:.4f}, patch statistics: {result['stats']})")


def cmd_plot(args: argparse.Namespace) -> None:
    from cmae.visualize import plot_runs

    print(f"wrote {plot_runs(args.runs, args.output, keys=args.keys)}")


def cmd_evaluate(args: argparse.Namespace) -> None:
    """linprobe / knn / finetune share one signature: --checkpoint CKPT|random --output DIR [--config F]."""
    if args.command == "finetune":
        from cmae.engine.finetune import finetune

        summary = finetune(args.checkpoint, args.output, args.config, args.overrides, resume=args.resume,
                           overwrite=args.overwrite)
    else:
        from cmae.engine.evaluate import frozen_evaluation

        summary = frozen_evaluation(args.command, args.checkpoint, args.output, args.config, args.overrides)
    print(f"{args.command}: top1 {summary['top1']:.2f}  top5 {summary['top5']:.2f}  -> {args.output}/summary.json")


def cmd_extract(args: argparse.Namespace) -> None:
    from cmae.engine.extract import extract

    summary = extract(args.checkpoint, args.output, args.config, args.overrides)
    if "extracted" in summary:
        print(f"wrote {summary['extracted']} of {summary['files']} features ({summary['dim']} wide) to {args.output}")


def cmd_export(args: argparse.Namespace) -> None:
    from cmae.export import export

    print(f"wrote {export(args.checkpoint, args.format, args.output)}")


def cmd_presets(args: argparse.Namespace) -> None:
    from cmae.config_schema import PRESETS, list_presets

    presets = list_presets()
    width = max(len(name) for name, _ in presets)
    for name, description in presets:
        print(f"{name:<{width}}  {description}")
    print(f"(in {PRESETS}; give one as --config NAME, from any folder)")


def cmd_models(args: argparse.Namespace) -> None:
    from cmae.models import CONVVIT_PRESETS, VIT_PRESETS

    for name, size in VIT_PRESETS.items():
        print(f"{name:<20} ViT     width {size.embed_dim:<5} depth {size.depth:<3} heads {size.num_heads:<3} "
              f"patch {size.patch_size}")
    for name, conv in CONVVIT_PRESETS.items():
        print(f"{name:<20} ConvViT widths {'/'.join(map(str, conv.widths))}  depths {'/'.join(map(str, conv.depths))}"
              "  stride 16")


def cmd_demo(args: argparse.Namespace) -> None:
    import dataclasses

    from cmae.demo import DEMO_SPEC, run_demo

    spec = dataclasses.replace(DEMO_SPEC, num_train=args.train_clips or DEMO_SPEC.num_train,
                               num_val=args.val_clips or DEMO_SPEC.num_val)
    run_demo(args.output, epochs=args.epochs, spec=spec, overrides=args.overrides)


def check_lists(lists: list[str], workers: int) -> None:
    """Decode every file of `lists`; print one line per file that fails and a count, and exit 1 if any did."""
    from cmae.data.check import undecodable
    from cmae.data.lists import read_samples

    samples = [sample for source in lists for sample in read_samples(source)]
    failed = 0
    for error in undecodable(samples, workers):
        print(error, flush=True)
        failed += 1
    print(f"{failed} of {len(samples)} files do not decode" if failed else f"all {len(samples)} files decode")
    if failed:
        sys.exit(1)


def cmd_prepare(args: argparse.Namespace) -> None:
    if args.dataset == "check":
        check_lists(args.lists, args.workers)
        return
    if args.dataset == "shards":
        from cmae.data.shards import parse_size, write_shards

        summary = write_shards(args.list, args.output, parse_size(args.shard_size), args.list_format, args.seed,
                               args.samples_per_shard)
        print(f"wrote {summary['samples']} samples in {summary['shards']} shards ({summary['bytes'] / 1e9:.2f} GB) "
              f"to {args.output}; train on them with 'data.train={summary['pattern']}' (quoted)")
        return
    from cmae.data.prepare import prepare_dataset

    resize = None
    if getattr(args, "resize", None):
        import functools

        from cmae.data.transcode import resize_rows

        resize = functools.partial(resize_rows, short_side=args.resize, workers=args.workers,
                                   keyframe_interval=args.keyframe_interval)
    report = prepare_dataset(args.dataset, args.root, args.output, split=getattr(args, "split", 1),
                             val_labels=getattr(args, "val_labels", None), resize=resize)
    print(json.dumps(report, indent=2))
    print(f"wrote {args.output}/train.txt ({report['train_listed']}), val.txt ({report['val_listed']}) and "
          f"classes.txt ({report['classes']}); missing {report['missing']}, orphans {report['orphans']}, "
          f"duplicates {report['duplicates']}" + (f", resize failures {report['resize']['failed']}"
                                                  if "resize" in report else ""))
    if args.check:
        check_lists([f"{args.output}/{split}.txt" for split in ("train", "val")], args.workers)


def add_prepare(commands) -> None:
    prepare = commands.add_parser("prepare", help="list files from a data set's official annotations, or tar shards")
    datasets = prepare.add_subparsers(dest="dataset", required=True)
    helps = {"kinetics": "Kinetics-400/600/700: the train / validate CSVs and the clips",
             "ssv2": "Something-Something v2: labels.json, the train / validation JSONs and the .webm videos",
             "ucf101": "UCF101: classInd.txt, trainlist0N / testlist0N and the .avi videos",
             "hmdb51": "HMDB51: the *_test_splitN.txt files and the .avi videos",
             "imagenet": "ImageNet: train/ and val/ (a class tree, or flat with a ground-truth file)"}
    for name, text in helps.items():
        one = datasets.add_parser(name, help=text)
        one.add_argument("--root", required=True, help="the data set as downloaded")
        one.add_argument("--output", required=True, help="folder for train.txt, val.txt, classes.txt, report.json")
        one.add_argument("--check", action="store_true", help="then decode every listed file and name the ones "
                         "that fail (exit status 1 if any)")
        one.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="processes that re-encode, "
                         "threads that check")
        if name in ("ucf101", "hmdb51"):
            one.add_argument("--split", type=int, default=1, choices=(1, 2, 3), help="the official split")
        if name == "imagenet":
            one.add_argument("--val-labels", help="ground truth of a flat val folder (default: LOC_val_solution.csv "
                             "under the root; or lines '<file> <synset or sorted-synset index>')")
            continue
        one.add_argument("--resize", type=int, metavar="SHORT_SIDE",
                         help="re-encode the videos to this short side under OUTPUT/videos (VideoMAE: 320)")
        one.add_argument("--keyframe-interval", type=int, default=32,
                         help="frames between keyframes of the re-encoded videos (shorter: faster seeks, larger files)")
    check = datasets.add_parser("check", help="decode every file of list files (or image folders) and name the "
                                "ones that fail (exit status 1 if any)")
    check.add_argument("lists", nargs="+", metavar="LIST", help="list files, e.g. data.train and data.val")
    check.add_argument("--workers", type=int, default=os.cpu_count() or 1, help="threads that decode")
    shards = datasets.add_parser("shards", help="tar shards (WebDataset layout: key.mp4 + key.cls) of a list")
    shards.add_argument("--list", required=True, help="a list file in any data.list_format")
    shards.add_argument("--output", required=True, help="folder for shard-NNNNNN.tar and index.json")
    shards.add_argument("--shard-size", default="1GB", help="bytes per shard, e.g. 1GB, 500MB")
    shards.add_argument("--samples-per-shard", type=int, default=0,
                        help="also close a shard at this many samples (equal counts balance the readers best)")
    shards.add_argument("--list-format", default="auto", help="data.list_format of the list (default: detect)")
    shards.add_argument("--seed", type=int, default=0, help="seed of the order the samples are packed in")
    prepare.set_defaults(func=cmd_prepare)


def add_pretrain(commands) -> None:
    pre = commands.add_parser("pretrain", help="self-supervised pre-training")
    pre.add_argument("--config", required=True, help="a preset's name (demo/videomae; cmae presets lists them) or a "
                     "YAML file")
    pre.add_argument("--output", required=True, help="run folder")
    pre.add_argument("--resume", help="checkpoint to continue from (e.g. RUN/checkpoint-last.pt), or 'auto': "
                     "the output folder's checkpoint-last.pt if there is one, else a fresh start (safe in job scripts)")
    pre.add_argument("--init", help="start from these weights: a cmae checkpoint, an MAE / timm / ViC-MAE, official "
                     "VideoMAE or Hugging Face VideoMAE file or folder (the architecture comes from --config)")
    pre.add_argument("--overwrite", action="store_true",
                     help="start afresh in an output folder that holds a run, moving that run to a sibling folder")
    pre.add_argument("--resume-override", action="store_true",
                     help="resume even if the config changes the model (model.*, method.*, input size)")
    pre.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides, e.g. train.epochs=2")
    pre.set_defaults(func=cmd_pretrain)


def add_weights_commands(commands) -> None:
    """extract and export: a checkpoint's features or weights for other tools."""
    ext = commands.add_parser("extract", help="frozen features of data.val to a safetensors file")
    ext.add_argument("--checkpoint", required=True, help="a checkpoint, or a foreign file / folder with --config")
    ext.add_argument("--output", required=True, help="the .safetensors file to write")
    ext.add_argument("--config", help="a preset laid over the checkpoint's config (the architecture for foreign files)")
    ext.add_argument("overrides", nargs="*", metavar="key=value", help="e.g. data.val=LIST eval.clips=5 eval.feature=cls")
    ext.set_defaults(func=cmd_extract)

    exp = commands.add_parser("export", help="a checkpoint's encoder for transformers (hf) or timm")
    exp.add_argument("--checkpoint", required=True, help="a cmae checkpoint")
    exp.add_argument("--format", required=True, choices=["hf", "timm"],
                     help="hf: a VideoMAEModel folder (videomae_1d models); timm: ViT weights (image models)")
    exp.add_argument("--output", required=True, help="folder to write")
    exp.set_defaults(func=cmd_export)


def add_evaluations(commands) -> None:
    """linprobe, attnprobe, knn and finetune: one signature."""
    protocols = {"linprobe": "linear probe on frozen features", "attnprobe": "attentive probe (V-JEPA) on frozen "
                 "token grids", "knn": "weighted kNN on frozen features",
                 "finetune": "end-to-end fine-tuning"}
    for name, text in protocols.items():
        evaluate = commands.add_parser(name, help=text)
        source = evaluate.add_mutually_exclusive_group(required=True)
        source.add_argument("--checkpoint", help="a run's checkpoint-last.pt, 'random' (a random-init encoder of "
                            "--config), or a foreign file / Hugging Face folder (MAE, timm, VideoMAE) with --config")
        if name == "finetune":
            source.add_argument("--init", dest="checkpoint", help="the same as --checkpoint: the weights to start from")
            evaluate.add_argument("--resume", help="a fine-tuning checkpoint to continue from, or 'auto': the output "
                                  "folder's checkpoint-last.pt if there is one, else a fresh start")
            evaluate.add_argument("--overwrite", action="store_true", help="start afresh in an output folder that "
                                  "holds a run, moving that run to a sibling folder")
        evaluate.add_argument("--output", required=True, help="folder for config.yaml and summary.json")
        evaluate.add_argument("--config", help="a preset laid over the checkpoint's config (required with random)")
        evaluate.add_argument("overrides", nargs="*", metavar="key=value",
                              help="e.g. data.train=LIST data.val=LIST eval.clips=5 eval.label_fraction=0.1")
        evaluate.set_defaults(func=cmd_evaluate)


# cmae synth's number options of one style (a pair where the default is one: a range, LOW HIGH)
STYLE_OPTIONS = (("--leaf-shade", SynthSpec.leaf_shade, "camera: the range of each leaf's own ramp strength (0 0: flat "
                  "leaves)"),
                 ("--motion-scale", SynthSpec.motion_scale, "camera: every camera and object motion times this (up to 3)"),
                 ("--leaf-outline", SynthSpec.leaf_outline, "camera: a dark rim on every leaf, this fraction of the frame "
                  "wide (0: none; up to 0.1)"),
                 ("--background-light", SynthSpec.background_light, "shapes: a grey ramp under the objects, rising by "
                  "up to this many levels across the frame (0: none)"),
                 ("--background-light-angle", SynthSpec.background_light_angle, "shapes: the range of directions, in "
                  "degrees, in which the background light rises (0: rightwards, 90: down; 240 300: from above)"))


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="cmae", description=__doc__)
    parser.add_argument("--debug", action="store_true", help="show Python's traceback for an error")
    parser.add_argument("--version", action="version", version=f"cmae {__version__}")
    commands = parser.add_subparsers(dest="command", required=True)

    synth = commands.add_parser("synth", help="write the synthetic action data set (H.264 mp4 + list files)")
    synth.add_argument("output")
    synth.add_argument("--train", type=int, default=400, help="training clips")
    synth.add_argument("--val", type=int, default=160, help="validation clips")
    synth.add_argument("--frames", type=int, default=16)
    synth.add_argument("--size", type=int, default=64, help="frame height and width in pixels")
    synth.add_argument("--seed", type=int, default=0)
    synth.add_argument("--style", choices=STYLES, default=SynthSpec.style,
                       help="camera: the whole scene pans, rolls or zooms (the label) over large shaded leaves; "
                            "natural: textured, accelerating objects over dead leaves (docs/data.md); "
                            "shapes: flat shapes over a dark texture (the demo's data)")
    synth.add_argument("--crf", type=int, default=SynthSpec.crf, help="x264 quality (lower: less codec noise)")
    synth.add_argument("--light", type=float, default=SynthSpec.light,
                       help="a screen-fixed light ramp: brightness 1 +- this half a diagonal from the centre (0: none)")
    for option, default, text in STYLE_OPTIONS:
        pair = {"nargs": 2, "metavar": ("LOW", "HIGH")} if isinstance(default, tuple) else {}
        synth.add_argument(option, type=float, default=default, help=text, **pair)
    synth.add_argument("--background-drift", type=float, default=0.3,
                       help="largest background travel over a clip, as a fraction of the frame (0: static)")
    synth.add_argument("--background-pool", type=int, default=0,
                       help="draw every background from this many shared textures (0: each clip its own)")
    synth.add_argument("--distractors", type=int, default=3, help="largest number of distractor objects")
    synth.add_argument("--same-shape-distractors", action="store_true",
                       help="distractors take the main object's shape (a clean object label; the demo's data)")
    synth.add_argument("--same-color-distractors", action="store_true",
                       help="distractors take the main object's colours (a clean colour label; the demo's data)")
    synth.set_defaults(func=cmd_synth)

    add_prepare(commands)
    add_pretrain(commands)

    vis = commands.add_parser("visualize", help="draw a masked clip and its reconstruction to a PNG")
    vis.add_argument("--checkpoint", required=True, help="checkpoint file, or 'random' with --config")
    vis.add_argument("--input", required=True, help="a video or an image")
    vis.add_argument("--output", required=True, help="PNG file to write")
    vis.add_argument("--config", help="preset applied on top of the checkpoint's config (needed for 'random')")
    vis.add_argument("--seed", type=int, default=0, help="seed of the mask")
    vis.add_argument("--true-stats", action="store_true",
                     help="de-normalise masked patches with their true statistics (leaks them; default: neighbours')")
    vis.add_argument("overrides", nargs="*", metavar="key=value", help="config overrides")
    vis.set_defaults(func=cmd_visualize)

    plot = commands.add_parser("plot", help="loss curves of run folders to a PNG")
    plot.add_argument("runs", nargs="+", metavar="RUN", help="run folders with metrics.jsonl")
    plot.add_argument("--output", required=True, help="PNG file to write")
    plot.add_argument("--keys", nargs="+",
                      help="logged keys to plot (default: loss, loss_rec, loss_con, monitor_top1 if logged)")
    plot.set_defaults(func=cmd_plot)

    add_evaluations(commands)
    add_weights_commands(commands)

    demo = commands.add_parser("demo", help="the main job end to end on the synthetic data set")
    demo.add_argument("--output", default="runs/demo")
    demo.add_argument("--epochs", type=int, help="pre-training epochs of every method (default: equal wall time, "
                      "videomae 6, cmae_v 3, vic_mae 18, mae 18)")
    demo.add_argument("--train-clips", type=int, help="synthetic training clips (default 1600)")
    demo.add_argument("--val-clips", type=int, help="synthetic validation clips (default 640)")
    demo.add_argument("overrides", nargs="*", metavar="key=value")
    demo.set_defaults(func=cmd_demo)
    commands.add_parser("presets", help="the packaged presets, by name").set_defaults(func=cmd_presets)
    commands.add_parser("models", help="the encoder names of model.name").set_defaults(func=cmd_models)
    return parser


def main(argv: list[str] | None = None) -> None:
    """Run a command; bad input is one line naming the problem (exit 2), never a traceback (--debug shows it)."""
    args = build_parser().parse_args(argv)
    try:
        args.func(args)
    except (ConfigError, InputError, WeightsError, FileNotFoundError, CheckpointWriteError) as error:
        if args.debug:
            raise
        print(f"cmae {args.command}: error: {error}", file=sys.stderr)
        sys.exit(1 if isinstance(error, CheckpointWriteError) else 2)
    except KeyboardInterrupt:  # a second Ctrl-C in training, or one outside it
        if args.debug:
            raise
        print(f"cmae {args.command}: interrupted; a run keeps its last checkpoint (continue it with --resume auto)",
              file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
