"""cmae's `videomae` step against `transformers.VideoMAEForPreTraining` on the same work, on CPU.

Both run through the same timed AdamW step (`pretrain_speed.timed_steps`) on the same random
batch and tube-mask ratio, with the same architecture: by default ViT-S/16 on 16 x 112² clips,
tubelet 2, mask 0.9, decoder 192 wide x 4 blocks, batch 8, fp32. The implementations take
turns for `--rounds` rounds, so a drift in the machine's speed hits both; the table shows each
one's median ms per step and its speed-up over Hugging Face's (median of the per-round ratios).

    python benchmarks/hf_speed.py                      # the table (about 3 minutes on 2 cores)
    python benchmarks/hf_speed.py --rounds 1 --steps 1 model.name=vit_pico_p4 data.image_size=32 ...
"""

from __future__ import annotations

import argparse
import statistics

import torch
from pretrain_speed import PRESETS, fake_batch, timed_steps
from reference_check import HFVideoMAE

from cmae.config import load_config
from cmae.methods import build_method

VIT_S_112 = ["model.name=vit_small", "data.image_size=112", "data.num_frames=16", "model.tubelet_size=2",
             "method.mask_ratio=0.9", "model.decoder_dim=192", "model.decoder_depth=4", "model.decoder_heads=3",
             "model.pos_embed=videomae_1d"]
# (row, how it is built, extra overrides): the same work first, then VideoMAE V2's decoder masking
CANDIDATES = [
    ("transformers VideoMAEForPreTraining", HFVideoMAE, []),
    ("cmae videomae", build_method, []),
    ("cmae videomae, method.decoder_mask_ratio=0.5", build_method, ["method.decoder_mask_ratio=0.5"]),
]


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per round (after 2 warm-up steps)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("overrides", nargs="*", metavar="key=value", help="applied after the ViT-S/16 settings")
    args = parser.parse_args(argv)
    device = torch.device("cpu")
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, fp32, batch {args.batch}", flush=True)
    methods, batches = [], []
    for _, build, extra in CANDIDATES:
        config = load_config(PRESETS / "videomae.yaml", [*VIT_S_112, *args.overrides, *extra])
        torch.manual_seed(0)
        methods.append(build(config).train())
        batches.append(fake_batch(config, args.batch, device))
    timings = [[] for _ in CANDIDATES]  # per candidate: each round's median seconds
    for _ in range(args.rounds):
        for index, method in enumerate(methods):
            seconds, _ = timed_steps(method, batches[index], device, torch.float32, args.steps)
            timings[index].append(statistics.median(seconds))
    rows = []
    print("\n| implementation | ms/step | speed-up over transformers |\n| --- | ---: | ---: |")
    for (name, _, _), rounds in zip(CANDIDATES, timings, strict=True):
        ratio = statistics.median(hf / ours for hf, ours in zip(timings[0], rounds, strict=True))
        rows.append({"implementation": name, "ms_per_step": 1000 * statistics.median(rounds), "speedup": ratio})
        print(f"| {name} | {rows[-1]['ms_per_step']:.0f} | {ratio:.2f}x |", flush=True)
    return rows


if __name__ == "__main__":
    main()
