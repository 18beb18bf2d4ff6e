"""One-command GPU check: no network, no video decoding. Writes `gpu_check.md` (and .json).

    PYTHONPATH=src python3 benchmarks/gpu_check.py --out OUT     # on a CUDA machine: sections 1-3
    PYTHONPATH=src python3 benchmarks/gpu_check.py --sections init --out OUT   # section 4 (~4 min on one H100)
    python benchmarks/gpu_check.py --cpu-smoke --out OUT         # tiny models, one step each (CI)

Sections, in order (each is skipped, and says so, once `--deadline` seconds have passed):
1. **First steps**: one bf16 training step of every `configs/pretrain` preset at its paper
   size (batch 2), through the method's own forward and EMA hook: loss, time, peak memory.
2. **Speed** of `videomae`, `cmae_v` and `vic_mae` at the paper settings (ViT-B/16, 16x224²,
   tubelet 2; random tensors): ms per step, clips per second, MFU against the GPU's bf16 peak
   (FLOPs counted analytically, `step_flops`), peak memory, and for `videomae` the same-work
   ratio against `transformers.VideoMAEForPreTraining` of the identical architecture.
3. **Scale switches** on the same ViT-B/16 step: `videomae` eager, compiled (`train.compile`),
   with activation checkpointing (`train.grad_checkpointing`), with VideoMAE V2's decoder
   masking (`method.decoder_mask_ratio=0.5`) and sharded by FSDP2 in a process group of one
   (`train.strategy=fsdp`); `cmae_v` and `vic_mae` eager, checkpointed and sharded: ms, peak memory.
4. **Initialisation at the paper size** (issue 12): `videomae` ViT-B trained through cmae's
   own loop (`train_loop`, bf16, real views) for a few hundred steps on synthetic clips
   rendered in memory, from `model.init=xavier` and from `normal`; each encoder and its
   random-init floor probed on the motion label.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import os
import shutil
import sys
import time
from multiprocessing import Pool
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))  # pretrain_speed, reference_check
from pretrain_speed import fake_batch, timed_steps  # noqa: E402

from cmae.config import Config, TrainConfig, load_config  # noqa: E402
from cmae.data.synth import MOTION_CLASSES, VAL_SEED_OFFSET, render_clip, sample_clip  # noqa: E402
from cmae.data.views import MultiViewClips, build_view  # noqa: E402
from cmae.engine.evaluate import linear_probe  # noqa: E402
from cmae.engine.loop import Job, train_loop  # noqa: E402
from cmae.engine.parallel import compile_model, enable_grad_checkpointing, shard_method  # noqa: E402
from cmae.engine.runtime import autocast  # noqa: E402
from cmae.engine.schedule import param_groups  # noqa: E402
from cmae.masking import num_masked  # noqa: E402
from cmae.methods import build_method  # noqa: E402
from cmae.models.pooling import pool_tokens  # noqa: E402
from cmae.models.vit import VIT_PRESETS  # noqa: E402

PRETRAIN = Path(__file__).resolve().parents[1] / "src" / "cmae" / "configs" / "pretrain"
SPEED_PRESETS = ("videomae_vit_b_k400", "cmae_v_vit_b_k400", "vic_mae_vit_b_k400")
# Dense bf16 peak (TFLOP/s) by the name CUDA reports; MFU is left out for other GPUs.
BF16_PEAK = (("H100 PCIe", 756.0), ("H100", 989.4), ("H200", 989.4), ("A100", 312.0), ("L40S", 362.0))
# CPU smoke: the same presets shrunk to a few thousand parameters.
SMOKE = ["data.image_size=32", "model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2"]


def smoke_overrides(config: Config) -> list[str]:
    tiny = "convvit_tiny" if config.model.name.startswith("convvit") else "vit_pico_p4"
    return [*SMOKE, f"model.name={tiny}", f"data.num_frames={min(config.data.num_frames, 4)}"]


# ---------------------------------------------------------------- FLOPs (analytic)

def block_flops(tokens: float, width: int) -> float:
    """Forward FLOPs of one pre-norm ViT block, MLP ratio 4: qkv + proj + MLP = 12 D² MACs per
    token, plus QKᵀ and AV = 2 N² D MACs; 2 FLOPs per MAC. Norms and softmax are left out."""
    return 2 * (12 * tokens * width ** 2 + 2 * tokens ** 2 * width)


def mae_pass_flops(config: Config, frames: int) -> tuple[float, float]:
    """(forward FLOPs with gradients, forward FLOPs of a full-clip no-grad encoder pass) for one
    sample: patch embedding of the visible patches, encoder on the visible tokens,
    encoder-to-decoder map, decoder on the decoded tokens (all of them, or with
    `method.decoder_mask_ratio` the visible ones and a share of the masked), pixel head."""
    size, m = VIT_PRESETS[config.model.name], config.model
    patch, tubelet = m.patch_size or size.patch_size, min(m.tubelet_size, frames)
    places = (config.data.image_size // patch) ** 2
    tokens = (frames // tubelet) * places
    # tube masks keep the same places at every time step; single frames are masked per token
    visible = (frames // tubelet) * (places - num_masked(places, config.method.mask_ratio))
    decoded = tokens - num_masked(tokens - visible, config.method.decoder_mask_ratio)
    patch_dim = 3 * tubelet * patch ** 2
    masked = (2 * visible * patch_dim * size.embed_dim + size.depth * block_flops(visible, size.embed_dim)
              + 2 * visible * size.embed_dim * m.decoder_dim
              + m.decoder_depth * block_flops(decoded, m.decoder_dim) + 2 * decoded * m.decoder_dim * patch_dim)
    full = 2 * tokens * patch_dim * size.embed_dim + size.depth * block_flops(tokens, size.embed_dim)
    return masked, full


def step_flops(config: Config) -> float:
    """Training FLOPs of one sample: 3x the forward (backward = 2x) of what has gradients, plus
    CMAE-V's no-grad target pass over the full clip; ViC-MAE reconstructs two single frames."""
    if config.data.views == "frame_pair":
        return 2 * 3 * mae_pass_flops(config, 1)[0]
    masked, full = mae_pass_flops(config, config.data.num_frames)
    return 3 * masked + (full if config.data.views == "temporal_shift" else 0.0)


def bf16_peak() -> float | None:
    name = torch.cuda.get_device_name() if torch.cuda.is_available() else ""
    return next((peak * 1e12 for key, peak in BF16_PEAK if key in name), None)


# ---------------------------------------------------------------- 1 and 2: steps and speed

def train_steps(method: torch.nn.Module, batch: dict, device: torch.device, steps: int,
                train: TrainConfig | None = None) -> dict[str, float]:
    """`steps` timed optimiser steps after two warm-up ones (one step when `steps` is 0):
    median ms, peak memory, last loss."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    timings, loss = timed_steps(method, batch, device, dtype, max(steps, 1), warmup=2 if steps else 0, train=train)
    timed = sorted(timings)
    return {"ms": 1000 * timed[len(timed) // 2], "loss": loss.item(),
            "peak_gib": torch.cuda.max_memory_allocated() / 2 ** 30 if device.type == "cuda" else float("nan")}


def first_steps(device: torch.device, smoke: bool) -> list[dict]:
    rows = []
    for path in sorted(PRETRAIN.glob("*.yaml")):
        config = load_config(path)
        config = load_config(path, smoke_overrides(config) if smoke else [])
        torch.manual_seed(0)
        method = build_method(config).to(device).train()
        result = train_steps(method, fake_batch(config, 2, device), device, steps=0 if smoke else 1)
        rows.append({"preset": path.stem, "method": config.method.name, "model": config.model.name, **result,
                     "finite": math.isfinite(result["loss"])})
        log(f"first step {path.stem}: loss {result['loss']:.4f}, {result['ms']:.0f} ms")
        del method
        if device.type == "cuda":
            torch.cuda.empty_cache()
    return rows


def speed(device: torch.device, smoke: bool, batch: int, steps: int) -> list[dict]:
    rows, peak = [], bf16_peak()
    for name in SPEED_PRESETS:
        config = load_config(PRETRAIN / f"{name}.yaml")
        if smoke:
            config = load_config(PRETRAIN / f"{name}.yaml", smoke_overrides(config))
        torch.manual_seed(0)
        data = fake_batch(config, batch, device)
        candidates = [("cmae", build_method)]
        if config.method.name == "videomae" and not smoke:
            from reference_check import HFVideoMAE
            candidates.append(("transformers", HFVideoMAE))
        for implementation, build in candidates:
            method = build(config).to(device).train()
            result = train_steps(method, data, device, steps)
            flops = step_flops(config) * batch
            rows.append({"preset": name, "implementation": implementation, "batch": batch, **result,
                         "clips_per_s": batch / result["ms"] * 1000, "tflop_per_step": flops / 1e12,
                         "mfu": flops / (result["ms"] / 1000) / peak if peak else float("nan")})
            log(f"speed {name} ({implementation}): {result['ms']:.1f} ms/step, {result['peak_gib']:.1f} GiB")
            del method
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- 3: what a ViT-L cluster run switches on

# (row, overrides, compile, activation checkpointing, FSDP2): each against eager on the same batch
SCALE_VARIANTS = [
    ("eager", [], False, False, False),
    ("train.compile", [], True, False, False),
    ("train.grad_checkpointing", [], False, True, False),
    ("method.decoder_mask_ratio=0.5", ["method.decoder_mask_ratio=0.5"], False, False, False),
    ("train.strategy=fsdp (1 process)", [], False, False, True),
]


def one_process_group(device: torch.device) -> None:
    """A process group of one, for an FSDP2 step on a single device."""
    import torch.distributed as dist

    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo", rank=0, world_size=1)


def scale(device: torch.device, smoke: bool, batch: int, steps: int) -> list[dict]:
    """`videomae` in every variant; `cmae_v` and `vic_mae` (BatchNorm heads, EMA target) eager,
    with activation checkpointing and sharded."""
    rows = []
    for name in SPEED_PRESETS:
        for label, overrides, compiled, checkpointing, fsdp in SCALE_VARIANTS:
            if not name.startswith("videomae") and (compiled or overrides):
                continue
            config = load_config(PRETRAIN / f"{name}.yaml", overrides)
            if smoke:
                config = load_config(PRETRAIN / f"{name}.yaml", [*smoke_overrides(config), *overrides])
            torch.manual_seed(0)
            method = build_method(config).to(device).train()
            if checkpointing:
                enable_grad_checkpointing(method)
            if fsdp:
                one_process_group(device)
                shard_method(method, torch.bfloat16 if device.type == "cuda" else torch.float32)
            if compiled:
                compile_model(method)
            started = time.time()
            result = train_steps(method, fake_batch(config, batch, device), device, steps,
                                 TrainConfig(strategy="fsdp" if fsdp else "ddp"))
            rows.append({"preset": name, "variant": label, "batch": batch, **result,
                         "seconds": time.time() - started, "clips_per_s": batch / result["ms"] * 1000})
            log(f"scale {name} {label}: {result['ms']:.1f} ms/step, {result['peak_gib']:.2f} GiB")
            del method
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- 4: initialisation at the paper size

class InMemoryClip:
    """A rendered clip as a frame source (what `DecodedVideo` holds after decoding)."""

    fps = 8.0

    def __init__(self, frames: np.ndarray):
        self.frames = torch.from_numpy(frames).permute(0, 3, 1, 2).contiguous()  # uint8 [T, C, H, W]
        self.num_frames = len(self.frames)

    def get_frames(self, indices) -> torch.Tensor:
        return self.frames[list(indices)]

    def close(self) -> None:
        pass


def render(args: tuple[int, int]) -> tuple[np.ndarray, int]:
    seed, size = args
    motion = seed % len(MOTION_CLASSES)
    return render_clip(sample_clip(motion, np.random.default_rng(seed), 16, size)), motion


class RenderedClips(torch.utils.data.Dataset):
    """Rendered clips through a real view (crops, flips, normalisation): {view..., "label"}."""

    def __init__(self, clips: list[InMemoryClip], labels: list[int], view):
        self.clips, self.labels, self.view = clips, labels, view

    def __len__(self) -> int:
        return len(self.clips)

    def __getitem__(self, index: int) -> dict:
        return {**self.view(self.clips[index]), "label": self.labels[index], "index": index, "num_failed": 0}


@torch.no_grad()
def features(encoder: torch.nn.Module, data: RenderedClips, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    encoder.eval()
    loader = torch.utils.data.DataLoader(data, batch_size=32, num_workers=min(8, os.cpu_count() or 1))
    pooled, labels = [], []
    for batch in loader:
        clips = batch["video"].flatten(0, 1).to(device)  # [B x views, C, T, H, W]
        with autocast(device, torch.bfloat16 if device.type == "cuda" else torch.float32):
            tokens = encoder(clips)
        pooled.append(pool_tokens(encoder, tokens, "mean").float().cpu())
        labels.append(batch["label"])
    return torch.cat(pooled), torch.cat(labels)


def init_check(device: torch.device, smoke: bool, args, work: Path, out: Path) -> list[dict]:
    """Pre-train videomae ViT-B from each init, probe it and its floor on the motion label."""
    size = 32 if smoke else args.render_size
    shutil.rmtree(work, ignore_errors=True)  # a rerun must not append to an earlier run's metrics
    seeds = [(i, size) for i in range(args.train_clips)] + [(VAL_SEED_OFFSET + i, size) for i in range(args.val_clips)]
    started = time.time()
    with Pool(os.cpu_count()) as pool:
        rendered = pool.map(render, seeds, chunksize=16)
    clips, labels = [InMemoryClip(f) for f, _ in rendered], [label for _, label in rendered]
    log(f"rendered {len(clips)} clips at {size}x{size} in {time.time() - started:.0f}s")
    train_clips, val_clips = clips[: args.train_clips], clips[args.train_clips:]
    train_labels, val_labels = labels[: args.train_clips], labels[args.train_clips:]

    rows = []
    for seed in range(args.init_seeds):
        for init in args.inits.split(","):
            overrides = [f"model.init={init}", f"train.seed={seed}", f"train.batch_size={args.init_batch}",
                         f"train.epochs={args.init_epochs}", "train.warmup_epochs=1", f"train.lr={args.init_lr}",
                         f"train.save_every={args.init_epochs}", "train.keep_every=0", "train.log_every=10",
                         f"data.num_workers={min(12, os.cpu_count() or 1)}", "data.sampling_rate=1",
                         "eval.probe_epochs=100", "eval.probe_batch_size=256"]
            config = load_config(PRETRAIN / "videomae_vit_b_k400.yaml", overrides)
            if smoke:
                config = load_config(PRETRAIN / "videomae_vit_b_k400.yaml", [*overrides, *smoke_overrides(config),
                                                                              "train.batch_size=4", "train.epochs=1"])
            built: list[torch.nn.Module] = []
            initial: list[dict] = []

            def make_job(dev: torch.device, config=config, initial=initial, built=built) -> Job:
                method = build_method(config).to(dev)
                initial.append(copy.deepcopy(method.encoder.state_dict()))
                built.append(method)
                data = RenderedClips(train_clips, train_labels, build_view(config.data, train=True))
                return Job(method, data, param_groups(method, config.train.weight_decay), config.train)

            started = time.time()
            summary = train_loop(config, work / f"{init}-seed{seed}", make_job)
            seconds = time.time() - started
            encoder = built[0].encoder
            view = MultiViewClips(config.data, 1, 1)
            row = {"init": init, "seed": seed, "steps": summary.get("steps"), "train_s": seconds,
                   "loss_first": summary["first"]["loss"], "loss_last": summary["last"]["loss"]}
            for which in ("trained", "floor"):
                if which == "floor":
                    encoder.load_state_dict(initial[0])
                x, y = features(encoder, RenderedClips(train_clips, train_labels, view), device)
                vx, vy = features(encoder, RenderedClips(val_clips, val_labels, view), device)
                row[which] = linear_probe(x, y, vx, vy, len(MOTION_CLASSES), config.eval, seed=seed)["top1"]
            row["gain"] = row["trained"] - row["floor"]
            rows.append(row)
            (out / "init_rows.json").write_text(json.dumps(rows, indent=2))
            log(f"init {init} seed {seed}: loss {row['loss_first']:.3f} -> {row['loss_last']:.3f}, "
                f"probe {row['trained']:.1f} (floor {row['floor']:.1f}) in {seconds:.0f}s")
            del built[:], encoder
            if device.type == "cuda":
                torch.cuda.empty_cache()
    return rows


# ---------------------------------------------------------------- report

def md_table(header: str, rows: list[str]) -> list[str]:
    """Markdown lines: `header` as "| a | b |" with its alignment row (text columns left), then rows."""
    cells = [c.strip() for c in header.strip("|").split("|")]
    align = ["---" if c in ("preset", "method", "model", "implementation", "variant", "init", "finite") or "->" in c
             else "---:" for c in cells]
    return [header, "| " + " | ".join(align) + " |", *rows, ""]


def markdown(report: dict) -> str:
    env = report["environment"]
    lines = [f"# cmae GPU check — {env['device']}, {env['date']}", "",
             f"torch {env['torch']}, CUDA {env['cuda']}, bf16 peak used for MFU: {env['bf16_peak_tflops']} TFLOP/s.", ""]
    if report.get("first_steps"):
        lines += ["## 1. One bf16 training step of every paper preset (batch 2)", ""]
        lines += md_table("| preset | method | model | loss | finite | ms | peak GiB |", [
            f"| {r['preset']} | {r['method']} | {r['model']} | {r['loss']:.4f} | {r['finite']} | {r['ms']:.0f} | "
            f"{r['peak_gib']:.2f} |" for r in report["first_steps"]])
    if report.get("speed"):
        lines += ["## 2. Speed at the paper settings (bf16, random tensors, median step)", ""]
        lines += md_table("| preset | implementation | batch | ms/step | clips/s | TFLOP/step | MFU | peak GiB |", [
            f"| {r['preset']} | {r['implementation']} | {r['batch']} | {r['ms']:.1f} | {r['clips_per_s']:.1f} | "
            f"{r['tflop_per_step']:.2f} | {100 * r['mfu']:.1f} % | {r['peak_gib']:.1f} |" for r in report["speed"]])
        lines += ["TFLOP/step is `step_flops` (analytic: 3x forward of what has gradients, + CMAE-V's "
                  "no-grad target pass) x batch.", ""]
    if report.get("scale"):
        lines += ["## 3. Compilation, activation checkpointing, decoder masking, FSDP2 (bf16, median step)", ""]
        lines += md_table("| preset | variant | batch | ms/step | clips/s | peak GiB | row s (incl. compile) |", [
            f"| {r['preset']} | {r['variant']} | {r['batch']} | {r['ms']:.1f} | {r['clips_per_s']:.1f} | "
            f"{r['peak_gib']:.2f} | {r['seconds']:.0f} |" for r in report["scale"]])
    if report.get("init"):
        lines += ["## 4. `model.init` at ViT-B (videomae, 16x224², trained through `train_loop`)", "",
                  report["init_setup"], ""]
        lines += md_table("| init | seed | steps | loss first -> last | motion probe | floor | gain |", [
            f"| {r['init']} | {r['seed']} | {r['steps']} | {r['loss_first']:.3f} -> {r['loss_last']:.3f} | "
            f"{r['trained']:.1f} | {r['floor']:.1f} | {r['gain']:+.1f} |" for r in report["init"]])
    lines += [f"Skipped (deadline): {', '.join(report['skipped']) or 'none'}. Total {report['seconds']:.0f} s.", ""]
    return "\n".join(lines)


def log(message: str) -> None:
    print(f"[gpu_check] {message}", flush=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default=os.environ.get("OUT", "gpu_check"))
    parser.add_argument("--cpu-smoke", action="store_true", help="tiny models on CPU, one step each")
    parser.add_argument("--deadline", type=float, default=420, help="seconds after which sections are skipped")
    # section 4 (measured on an H100 on 2026-11-26, README) only when asked: 1-3 fit one device call
    parser.add_argument("--sections", default="first_steps,speed,scale")
    parser.add_argument("--batch", type=int, default=32,
                        help="speed and scale batch (32: the official VideoMAE run's per-GPU batch, 2048 over 64)")
    parser.add_argument("--steps", type=int, default=8, help="timed steps per speed row")
    parser.add_argument("--train-clips", type=int, default=1536)
    parser.add_argument("--val-clips", type=int, default=768)
    parser.add_argument("--render-size", type=int, default=112, help="rendered side; the views resize to 224")
    parser.add_argument("--init-seeds", type=int, default=2)
    parser.add_argument("--inits", default="xavier,normal", help="model.init values to compare")
    parser.add_argument("--init-batch", type=int, default=32)
    parser.add_argument("--init-epochs", type=int, default=6)
    parser.add_argument("--init-lr", type=float, default=3e-4)
    args = parser.parse_args(argv)
    smoke = args.cpu_smoke
    if smoke:
        args.batch, args.steps, args.train_clips, args.val_clips, args.init_seeds = 2, 1, 16, 16, 1
    elif not torch.cuda.is_available():
        raise SystemExit("no CUDA device: run with --cpu-smoke on a CPU machine")
    device = torch.device("cpu" if smoke else "cuda")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(os.environ.get("TMPDIR", "/tmp")) / "cmae_gpu_check"
    started = time.time()
    peak = bf16_peak()
    report: dict = {"environment": {
        "device": torch.cuda.get_device_name() if device.type == "cuda" else "CPU (smoke)",
        "date": time.strftime("%Y-%m-%d"), "torch": torch.__version__, "cuda": torch.version.cuda,
        "bf16_peak_tflops": peak / 1e12 if peak else None}, "skipped": []}
    report["init_setup"] = (f"{args.train_clips} training and {args.val_clips} validation clips rendered at "
                            f"{args.render_size}² (16 frames), views at 224²; batch {args.init_batch}, "
                            f"{args.init_epochs} epochs, AdamW peak lr {args.init_lr:g} (1 warm-up epoch, cosine), "
                            "bf16; linear probe on mean-pooled tokens, 100 epochs; "
                            "floor = the same encoder before training.")
    sections = {"first_steps": lambda: first_steps(device, smoke),
                "speed": lambda: speed(device, smoke, args.batch, args.steps),
                "scale": lambda: scale(device, smoke, args.batch, args.steps),
                "init": lambda: init_check(device, smoke, args, work, out)}
    for name in args.sections.split(","):
        if time.time() - started > args.deadline:
            report["skipped"].append(name)
            continue
        report[name] = sections[name]()
        report["seconds"] = time.time() - started
        (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
        (out / "gpu_check.md").write_text(markdown(report))
    report["seconds"] = time.time() - started
    (out / "gpu_check.json").write_text(json.dumps(report, indent=2))
    (out / "gpu_check.md").write_text(markdown(report))
    print(markdown(report), flush=True)


if __name__ == "__main__":
    main()
