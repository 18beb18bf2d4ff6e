"""Reference check: Hugging Face's VideoMAE trained through cmae's own loop, next to cmae's videomae.

Every row pre-trains one model with the `videomae` demo preset's budget (the demo's data,
views, tube masks from `cmae.masking.make_mask`, AdamW, schedule, batch 32, 300 steps), then
probes its encoder and the same encoder at its initial weights (the row's floor) with cmae's
linear probe on the motion label. The reference row is `transformers.VideoMAEForPreTraining`
(configured like the preset: 96 wide, 4 blocks, patch 8, tubelet 2, decoder 64 x 2, norm-pix
loss), wrapped as a cmae method; its weights are probed through `cmae.interop.videomae_from_hf`.
The other rows are cmae's `videomae` with one factor of its initial state changed at a time.

    python benchmarks/reference_check.py                       # every reference row, seeds 0 1 2 (~1.5 h, 2 cores)
    python benchmarks/reference_check.py --rows cmae_v cmae_v-w0 cmae_v-2tau --seeds 0     # CMAE-V ablation rows
    python benchmarks/reference_check.py --rows hf cmae-xavier --seeds 0
    python benchmarks/reference_check.py --rows cmae-xavier cmae-normal --output runs/rc-vit-b --epochs 3 \
        --set model.name=vit_base model.patch_size=8 model.decoder_dim=384 model.decoder_heads=6 model.decoder_depth=4

Prints a markdown table (mean +- std over seeds, and the standard error of a mean) and writes
it with the per-seed numbers to OUTPUT/results.{md,json}. Finished (row, seed) runs are reused.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from cmae.config import Config, load_config
from cmae.data.synth import SynthSpec
from cmae.demo import DEMO_EPOCHS, PRESETS, PROBE, _has_dataset
from cmae.engine.checkpoint import save_checkpoint
from cmae.engine.evaluate import frozen_evaluation
from cmae.engine.loop import Job, train_loop
from cmae.engine.pretrain import training_dataset
from cmae.engine.schedule import param_groups
from cmae.interop import videomae_from_hf
from cmae.masking import make_mask
from cmae.methods import build_method
from cmae.methods.base import Method, MethodOutput
from cmae.models.patchify import token_grid
from cmae.models.vit import VIT_PRESETS

MOTION = ["data.num_frames=8", "data.sampling_rate=2"]
# The data of the measurement: the demo's size, distractors of any shape (motion is the label here).
SPEC = SynthSpec(num_train=1600, num_val=640)


class HFVideoMAE(Method):
    """`transformers.VideoMAEForPreTraining` behind cmae's method interface: batch -> MethodOutput.

    Masks come from cmae's `make_mask` (tube, the preset's ratio); the loss is HF's own
    (norm-pix MSE over the masked tubelets, per channel, unbiased std: cmae's `channel` targets).
    """

    name = "hf_videomae"

    def __init__(self, config: Config):
        super().__init__()
        from transformers import VideoMAEConfig, VideoMAEForPreTraining

        size, model = VIT_PRESETS[config.model.name], config.model
        self.patch, self.tubelet = model.patch_size or size.patch_size, model.tubelet_size
        self.mask_ratio = config.method.mask_ratio
        self.model = VideoMAEForPreTraining(VideoMAEConfig(
            image_size=config.data.image_size, patch_size=self.patch, num_frames=config.data.num_frames,
            tubelet_size=self.tubelet, hidden_size=size.embed_dim, num_hidden_layers=size.depth,
            num_attention_heads=size.num_heads, intermediate_size=4 * size.embed_dim,
            decoder_hidden_size=model.decoder_dim, decoder_num_hidden_layers=model.decoder_depth,
            decoder_num_attention_heads=model.decoder_heads, decoder_intermediate_size=4 * model.decoder_dim,
            qkv_bias=True, use_mean_pooling=False, norm_pix_loss=config.method.norm_pix == "channel",
            layer_norm_eps=1e-6,
        ))

    def forward(self, batch: dict[str, torch.Tensor]) -> MethodOutput:
        clip = batch["video"]  # [B, C, T, H, W]
        grid = token_grid(clip.shape, self.patch, self.tubelet)
        mask = make_mask("tube", clip.shape[0], grid, self.mask_ratio, clip.device)
        loss = self.model(clip.transpose(1, 2), bool_masked_pos=mask.masked).loss
        return MethodOutput(loss, {"loss_rec": loss.detach()})

    def cmae_state(self) -> dict[str, torch.Tensor]:
        return videomae_from_hf(self.model.state_dict())


# ---- initial-state changes applied to cmae's videomae (each row names what it changes) ----

def linears(method: nn.Module, where: str = "") -> list[nn.Linear]:
    return [m for name, m in method.named_modules() if isinstance(m, nn.Linear) and name.startswith(where)]


def normal_linears(method: nn.Module, where: str = "") -> None:
    for layer in linears(method, where):
        nn.init.normal_(layer.weight, std=0.02)
        nn.init.zeros_(layer.bias)


def xavier_linears(method: nn.Module, where: str = "") -> None:
    for layer in linears(method, where):
        nn.init.xavier_uniform_(layer.weight)
        nn.init.zeros_(layer.bias)


def default_conv(method: nn.Module) -> None:
    method.encoder.patch_embed.proj.reset_parameters()  # PyTorch's Conv3d init (official VideoMAE)


def mask_token(std: float) -> Callable[[nn.Module], None]:
    def apply(method: nn.Module) -> None:
        nn.init.normal_(method.decoder.mask_token, std=std) if std else nn.init.zeros_(method.decoder.mask_token)
    return apply


def head_xavier(method: nn.Module) -> None:
    nn.init.xavier_uniform_(method.decoder.decoder_pred.weight)


@dataclass
class Row:
    name: str
    label: str
    overrides: list[str] = field(default_factory=list)
    change: Callable[[nn.Module], None] | None = None  # applied to the freshly built method
    hf: bool = False
    preset: str = "videomae"  # the demo preset the row starts from


OLD = ["model.init=xavier", "model.decoder_init=xavier", "model.pos_embed=separable"]  # before: MAE's init
NEW = ["model.init=normal", "model.decoder_init=normal", "model.pos_embed=videomae_1d"]  # Hugging Face's
FIXED = ["model.init=normal", "model.decoder_init=xavier", "model.pos_embed=separable"]  # cmae's defaults now
ROWS = [
    Row("hf", "HF VideoMAE (reference), trained by cmae's loop", hf=True),
    Row("cmae-xavier", "cmae videomae, MAE/VideoMAE xavier init, separable table (before the fix)", OLD),
    Row("cmae-xavier-joint", "cmae, xavier init, VideoMAE's joint table", [*OLD, "model.pos_embed=videomae_1d"]),
    Row("cmae-normal-separable", "cmae, normal(0.02) init, separable table", [*NEW, "model.pos_embed=separable"]),
    Row("cmae-normal", "cmae, normal(0.02) init everywhere, joint table: Hugging Face's initial state", NEW),
    Row("cmae-fixed", "cmae after the fix (its defaults): normal(0.02) encoder, xavier decoder, separable table",
        FIXED),
    Row("cmae-fixed-joint", "cmae after the fix with VideoMAE's joint table (the video demo presets)",
        [*FIXED, "model.pos_embed=videomae_1d"]),
    Row("normal-but-enc-xavier", "cmae normal init, but xavier linears in the encoder", NEW,
        lambda m: xavier_linears(m, "encoder")),
    Row("normal-but-dec-xavier", "cmae normal init, but xavier linears in the decoder", NEW,
        lambda m: xavier_linears(m, "decoder")),
    Row("normal-but-head-xavier", "cmae normal init, but xavier on the decoder head only", NEW, head_xavier),
    Row("normal-but-dec-blocks-xavier", "cmae normal init, but xavier in the decoder's blocks and input map "
        "(head normal)", NEW, lambda m: (xavier_linears(m, "decoder"), normal_linears(m, "decoder.decoder_pred"))),
    Row("normal-but-dec-qkv-xavier", "cmae normal init, but xavier on the decoder's attention qkv only", NEW,
        lambda m: [xavier_linears(m, f"decoder.decoder_blocks.{i}.attn.qkv") for i in range(len(m.decoder.decoder_blocks))]),
    Row("xavier-but-head-normal", "cmae xavier init, but normal(0.02) on the decoder head only", OLD,
        lambda m: normal_linears(m, "decoder.decoder_pred")),
    Row("normal-conv-default", "cmae normal init, PyTorch's default Conv3d patch embedding (official VideoMAE)",
        NEW, default_conv),
    Row("normal-mask-0.02", "cmae normal init, mask token normal(0.02) instead of zero", NEW, mask_token(0.02)),
    Row("xavier-lr3.5", "cmae xavier init, joint table, 3.5x the learning rate (xavier's std / 0.02 at width 96)",
        [*OLD, "model.pos_embed=videomae_1d", "train.base_lr=5.25e-3"]),
]


def cmae_v_row(name: str, label: str, *overrides: str) -> Row:
    # measured with the separable table, before the video presets took VideoMAE's joint one
    return Row(name, label, ["model.pos_embed=separable", *overrides], preset="cmae_v")


# Why CMAE-V's contrastive term costs motion accuracy: one setting of the cmae_v demo preset at a time.
CMAE_V_ROWS = [
    cmae_v_row("cmae_v", "cmae_v demo preset (separable table): lambda_c 1, tau 0.07, colour-augmented target, "
                         "shift <= 2, decoder feature, batch 32"),
    cmae_v_row("cmae_v-w0", "lambda_c 0 (videomae with an idle contrastive branch)", "method.con_weight=0"),
    cmae_v_row("cmae_v-w0.25", "lambda_c 0.25", "method.con_weight=0.25"),
    cmae_v_row("cmae_v-2tau", "lambda_c 1 x 2 tau (CMAE's code; effective 0.14)", "method.con_scale_2tau=true"),
    cmae_v_row("cmae_v-tau0.2", "temperature 0.2", "method.temperature=0.2"),
    cmae_v_row("cmae_v-nocolor", "no colour augmentation on the target", "data.target_color=false"),
    cmae_v_row("cmae_v-shift0", "no temporal shift (target = the online clip's frames)", "data.max_shift=0"),
    cmae_v_row("cmae_v-encoder", "online feature from the encoder's visible tokens", "method.feature=encoder"),
    cmae_v_row("cmae_v-batch64", "batch 64 (63 negatives; half the steps)", "train.batch_size=64"),
]
ALL_ROWS = ROWS + CMAE_V_ROWS


def build(row: Row, config: Config) -> nn.Module:
    if row.hf:
        return HFVideoMAE(config)
    method = build_method(config)
    if row.change is not None:
        row.change(method)
    return method


def cmae_state(method: nn.Module) -> dict[str, torch.Tensor]:
    return method.cmae_state() if isinstance(method, HFVideoMAE) else method.state_dict()


def probe_config(row: Row, config: Config, common: list[str]) -> Config:
    """The cmae config whose `videomae` method holds this row's weights (HF: VideoMAE's table)."""
    return load_config(PRESETS / f"{row.preset}.yaml", [f"data.train={config.data.train}", *common, *row.overrides,
                                                        *(NEW if row.hf else [])])


def write_checkpoint(path: Path, method: nn.Module, config: Config) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    save_checkpoint(path, {"model": cmae_state(method), "config": config.to_dict(), "epoch": 0, "step": 0})
    return path


def run_row(row: Row, seed: int, data: Path, output: Path, epochs: int, common: list[str]) -> dict[str, float]:
    out = output / f"{row.name}-seed{seed}"
    done = out / "result.json"
    if done.exists():
        return json.loads(done.read_text())
    config = load_config(PRESETS / f"{row.preset}.yaml", [f"data.train={data / 'train.txt'}", f"train.epochs={epochs}",
                                                          f"train.seed={seed}", *common, *row.overrides])
    probe_cfg = probe_config(row, config, common)

    built: list[nn.Module] = []

    def make_job(device: torch.device) -> Job:
        method = build(row, config).to(device)  # built after the loop seeded the run: the floor is its start
        write_checkpoint(out / "checkpoint-init.pt", method, probe_cfg)
        built.append(method)
        return Job(method, training_dataset(config), param_groups(method, config.train.weight_decay), config.train)

    started = time.time()
    summary = train_loop(config, out, make_job)
    write_checkpoint(out / "checkpoint-trained.pt", built[0], probe_cfg)
    result = {"loss_first": summary["first"]["loss"], "loss_last": summary["last"]["loss"],
              "train_seconds": time.time() - started}
    for which in ("init", "trained"):
        evaluation = frozen_evaluation("linprobe", out / f"checkpoint-{which}.pt", out / f"probe-{which}", None,
                                       [f"data.train={data / 'train.txt'}", f"data.val={data / 'val.txt'}",
                                        *MOTION, *PROBE])
        result[which] = evaluation["top1"]
    result["gain"] = result["trained"] - result["init"]
    done.write_text(json.dumps(result, indent=2))
    return result


def finished(output: Path) -> dict[str, dict[int, dict]]:
    """Every (row, seed) result in `output`, from this run or earlier ones."""
    results: dict[str, dict[int, dict]] = {}
    for row in ALL_ROWS:
        for path in sorted(output.glob(f"{row.name}-seed*/result.json")):
            seed = int(path.parent.name.rsplit("-seed", 1)[1])
            results.setdefault(row.name, {})[seed] = json.loads(path.read_text())
    return results


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, dict[int, dict]], num_val: int) -> str:
    probe_se = 100 * math.sqrt(0.4 * 0.6 / num_val)  # one probe's binomial standard error near 40 %
    lines = [
        f"Motion linear probe, top-1 % on {num_val} validation clips (one probe's standard error about "
        f"{probe_se:.1f} points); mean +- std over seeds, (n) seeds; SE = std / sqrt(n).",
        "",
        "| row | trained | floor (its initial weights) | gain | per seed: trained / floor | loss first -> last |",
        "| --- | ---: | ---: | ---: | --- | --- |",
    ]
    for row in ALL_ROWS:
        if row.name not in results:
            continue
        runs = results[row.name]
        cells = []
        for key in ("trained", "init", "gain"):
            m, s = mean_std([r[key] for r in runs.values()])
            cells.append(f"{m:.1f} +- {s:.1f} ({len(runs)})")
        per_seed = ", ".join(f"{r['trained']:.1f} / {r['init']:.1f}" for r in runs.values())
        losses = ", ".join(f"{r['loss_first']:.3f} -> {r['loss_last']:.3f}" for r in runs.values())
        lines.append(f"| {row.label} | " + " | ".join(cells) + f" | {per_seed} | {losses} |")
    return "\n".join(lines) + "\n"


def init_scale_table() -> str:
    """Std of a block's linear layers under each `model.init`, by encoder width (decoders as in the presets)."""
    lines = ["| encoder (decoder width) | qkv | mlp fc1 | decoder head (tubelet 2) | `model.init=normal` |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for name, decoder in (("vit_micro_p8", 64), ("vit_small", 192), ("vit_base", 384), ("vit_large", 512)):
        d = VIT_PRESETS[name].embed_dim
        patch_dim = 3 * 2 * VIT_PRESETS[name].patch_size ** 2
        xavier = [math.sqrt(2 / (a + b)) for a, b in ((d, 3 * d), (d, 4 * d), (decoder, patch_dim))]
        lines.append(f"| {name} ({decoder}) | " + " | ".join(f"{x:.3f}" for x in xavier) + " | 0.020 |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/reference_check")
    parser.add_argument("--rows", nargs="*", default=[row.name for row in ROWS], choices=[row.name for row in ALL_ROWS],
                        help="rows to run (default: the reference check's; cmae_v* rows: the CMAE-V ablation)")
    parser.add_argument("--seeds", nargs="*", type=int, default=[0, 1, 2])
    parser.add_argument("--epochs", type=int, default=DEMO_EPOCHS["videomae"])
    parser.add_argument("--set", nargs="*", default=[], metavar="key=value",
                        help="overrides for every row (e.g. a paper-size model)")
    parser.add_argument("--init-table", action="store_true", help="only print xavier's std by model width")
    args = parser.parse_args(argv)
    if args.init_table:
        print(init_scale_table())
        return
    output = Path(args.output)
    data = output / "data"
    if not _has_dataset(data, SPEC):
        from cmae.data.synth import write_synthetic_dataset
        write_synthetic_dataset(data, SPEC)
    for name in args.rows:
        row = next(r for r in ALL_ROWS if r.name == name)
        for seed in args.seeds:
            result = run_row(row, seed, data, output, args.epochs, args.set)
            print(f"[reference_check] {name} seed {seed}: trained {result['trained']:.1f}, floor {result['init']:.1f}",
                  flush=True)
    results = finished(output)
    text = table(results, SPEC.num_val)
    (output / "results.md").write_text(text)
    (output / "results.json").write_text(json.dumps(results, indent=2))
    print(text)


if __name__ == "__main__":
    sys.exit(main())
