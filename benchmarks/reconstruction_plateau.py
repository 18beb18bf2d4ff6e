"""Can the demo's VideoMAE learn reconstruction on clips where it is trivial? The loss plateau, measured.

    python benchmarks/reconstruction_plateau.py                              # cmae and HF, ramp clips, ~12 min
    python benchmarks/reconstruction_plateau.py --models cmae --lrs 1.9e-4 2e-3 --steps 300 600 1200
    python benchmarks/reconstruction_plateau.py --models cmae --lrs 1e-3 --steps 300 --trace   # the mechanism

The clips are drawn in memory, with no codec: each is one static linear colour ramp across the frame, at a
random angle between two random colours. Every tubelet's normalised target (`norm_pix=channel`) is then the
same ramp pattern, so copying the mean of the visible tokens' targets to every masked token scores the
**copy** column (about 0.12; the uint8 rounding of gentle ramps is the rest), where predicting zero scores
about 0.94. The model is the `videomae` demo preset (or, `hf`, Hugging Face's `VideoMAEForPreTraining` of the
same size, as in benchmarks/reference_check.py), trained with AdamW (betas 0.9/0.95, wd 0.05), batch 32, a
linear warmup over the first tenth of the steps and a constant rate after it. Each loss column is the mean
training loss over the 25 steps before it. `content R2` is the linear decodability (least squares, fitted on
half the clips, scored on the other half) of the visible tokens' own targets from the encoder's outputs: how
much of its input patch the encoder still carries, at initialisation and at the end. `--trace` (cmae only)
prints, every 25 steps, the loss, the gradient norms of the encoder and of the pixel head, and the share of
the decoder blocks' attention that masked tokens pay to visible ones (uniform attention: 0.1).
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import torch

from cmae.config import load_config
from cmae.masking import make_mask
from cmae.methods import build_method, resolve_method
from cmae.models.patchify import gather_tokens, normalized_targets, token_grid

WINDOW = 25  # steps averaged into each loss column


def ramp_clips(count: int, seed: int = 0, frames: int = 8, size: int = 64) -> torch.Tensor:
    """`count` static ramp clips, normalised as cmae's views normalise: `[count, 3, frames, size, size]`."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size] / size - 0.5
    clips = []
    for _ in range(count):
        angle, low, high = rng.uniform(0, 2 * np.pi), rng.uniform(0, 255, 3), rng.uniform(0, 255, 3)
        along = (np.cos(angle) * xx + np.sin(angle) * yy + 0.71) / 1.42  # 0..1 across the frame
        image = (low + (high - low) * along[..., None]).astype(np.uint8)  # [H, W, 3]
        clips.append(np.repeat(image[None], frames, 0))
    x = torch.from_numpy(np.stack(clips)).float().div(255).permute(0, 4, 1, 2, 3)  # [B, 3, T, H, W]
    data = load_config("demo/videomae").data
    return (x - torch.tensor(data.mean)[:, None, None, None]) / torch.tensor(data.std)[:, None, None, None]


def baselines(clips: torch.Tensor, mask_ratio: float, patch: int = 8, tubelet: int = 2) -> tuple[float, float]:
    """(predict zero, copy the mean visible target) masked-token losses under the demo's tube masks."""
    targets = normalized_targets(clips, patch, tubelet, "channel")  # [B, N, P]
    mask = make_mask("tube", len(clips), token_grid(clips.shape, patch, tubelet), mask_ratio, clips.device)
    copied = gather_tokens(targets, mask.visible).mean(1, keepdim=True)
    hidden = mask.masked
    return targets[hidden].square().mean().item(), (targets - copied)[hidden].square().mean().item()


def content_r2(method, clips: torch.Tensor) -> float:
    """R^2 of the visible tokens' own targets, linearly decoded from cmae's encoder outputs."""
    with torch.no_grad():
        mask = method.make_mask(clips)
        latent = method.encoder(clips, mask.visible)[:, method.encoder.num_prefix_tokens:]
        targets = method.targets(clips, mask.visible)
    x = torch.cat([latent.reshape(-1, latent.shape[-1]), torch.ones(latent.numel() // latent.shape[-1], 1)], 1)
    y = targets.reshape(-1, targets.shape[-1])
    half = len(x) // 2
    weights = torch.linalg.lstsq(x[:half], y[:half]).solution
    residual = y[half:] - x[half:] @ weights
    return 1 - residual.square().mean().item() / y[half:].var(0).mean().item()


def build(model: str, overrides: list[str]):
    config = resolve_method(load_config("demo/videomae", overrides))
    if model == "cmae":
        return build_method(config)
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from reference_check import HFVideoMAE
    return HFVideoMAE(config)


def encoder_of(method):
    """cmae's method itself, or (hf) a cmae videomae carrying the HF model's weights, for `content_r2`."""
    if hasattr(method, "cmae_state"):
        twin = build_method(resolve_method(load_config("demo/videomae")))
        twin.load_state_dict(method.cmae_state())
        return twin
    return method


def attention_on_visible(method, clips: torch.Tensor) -> list[float]:
    """Per decoder block, the mean share of a masked token's attention that goes to the visible tokens."""
    inputs: list[torch.Tensor] = []
    hooks = [block.attn.register_forward_hook(lambda module, args, out: inputs.append(args[0]))
             for block in method.decoder.decoder_blocks]
    with torch.no_grad():
        mask = method.make_mask(clips)
        method.reconstruct(clips, mask)
        shares = []
        for block, x in zip(method.decoder.decoder_blocks, inputs, strict=True):
            heads = block.attn.num_heads
            q, k, _ = block.attn.qkv(x).reshape(*x.shape[:2], 3, heads, -1).permute(2, 0, 3, 1, 4)
            weights = (q @ k.transpose(-1, -2) * q.shape[-1] ** -0.5).softmax(-1)  # [B, heads, N, N]
            on_visible = (weights * (~mask.masked)[:, None, None].float()).sum(-1)  # [B, heads, N]
            shares.append(on_visible.mean(1)[mask.masked].mean().item())
    for hook in hooks:
        hook.remove()
    return shares


def trace_line(step: int, losses: list[float], method, probe_clips: torch.Tensor) -> str:
    def norm(prefix: str) -> float:
        return sum(p.grad.square().sum().item() for n, p in method.named_parameters()
                   if n.startswith(prefix) and p.grad is not None) ** 0.5
    shares = " ".join(f"{share:.2f}" for share in attention_on_visible(method, probe_clips))
    return (f"step {step:5d}  loss {np.mean(losses[-WINDOW:]):.3f}  grad encoder {norm('encoder.'):.4f}  "
            f"grad head {norm('decoder.decoder_pred'):.4f}  attention on visible {shares}")


def run(model: str, clips: torch.Tensor, probe_clips: torch.Tensor, lr: float, steps: list[int],
        seed: int, trace: bool = False) -> dict[str, float]:
    torch.manual_seed(seed)
    method = build(model, [])
    method.train()
    row = {"content R2 init": content_r2(encoder_of(method), probe_clips)}
    optimizer = torch.optim.AdamW(method.parameters(), lr=lr, betas=(0.9, 0.95), weight_decay=0.05)
    warmup, losses = max(1, steps[-1] // 10), []
    generator = torch.Generator().manual_seed(seed)
    for step in range(1, steps[-1] + 1):
        for group in optimizer.param_groups:
            group["lr"] = lr * min(1.0, step / warmup)
        loss = method({"video": clips[torch.randint(0, len(clips), (32,), generator=generator)]}).loss
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())
        if trace and step % WINDOW == 0:
            print(trace_line(step, losses, method, probe_clips), flush=True)
        if step in steps:
            row[f"loss @{step}"] = float(np.mean(losses[-WINDOW:]))
    row["content R2 end"] = content_r2(encoder_of(method), probe_clips)
    return row


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", nargs="+", default=["cmae", "hf"], choices=["cmae", "hf"])
    parser.add_argument("--lrs", nargs="+", type=float, default=[1.9e-4, 2e-3])
    parser.add_argument("--steps", nargs="+", type=int, default=[100, 300, 600, 1000])
    parser.add_argument("--clips", type=int, default=1600)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--trace", action="store_true", help="cmae only: the mechanism every 25 steps")
    args = parser.parse_args(argv)
    steps = sorted(args.steps)
    clips, probe_clips = ramp_clips(args.clips, args.seed), ramp_clips(128, args.seed + 1)
    zero, copy = baselines(probe_clips, load_config("demo/videomae").method.mask_ratio)
    print(f"ramp clips: predict zero {zero:.3f}, copy the mean visible target {copy:.3f} (masked-token loss)\n")
    rows = []
    for model in args.models:
        for lr in args.lrs:
            start = time.time()
            rows.append({"model": model, "lr": lr, **run(model, clips, probe_clips, lr, steps, args.seed,
                                                                args.trace and model == "cmae"),
                         "s": time.time() - start})
    columns = [key for key in rows[0] if key not in ("model", "lr")]
    print("| model | lr | " + " | ".join(columns) + " |")
    print("|---|---|" + "---|" * len(columns))
    for row in rows:
        print(f"| {row['model']} | {row['lr']:g} | " + " | ".join(f"{row[c]:.3f}" if c != "s" else f"{row[c]:.0f}"
                                                               for c in columns) + " |")
    return rows


if __name__ == "__main__":
    main()
