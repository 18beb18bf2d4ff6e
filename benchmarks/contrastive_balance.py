"""How the contrastive term's gradient compares with reconstruction's, by method, model size and weight.

    python benchmarks/contrastive_balance.py                      # the README's table (~25 min on 2 cores)
    python benchmarks/contrastive_balance.py --sizes vit_micro_p8 --steps 20 --output /tmp/cb

For each method (`cmae_v`, `vic_mae`), encoder size and weight setting, the method's demo preset
(batch 32, 64x64 clips of the demo data) with `train.log_term_grads=true`:
- at init: the gradient norm of each loss term on the shared encoder's parameters, for the
  first batch (a one-step run);
- after `--steps` steps: the same at the last step of a run of that length (the rule re-measures
  lambda every 5 steps meanwhile, as the demo presets' `train.log_every` makes it).
`InfoNCE : rec` is |grad L_con| / |grad L_rec| (the terms unweighted); `effective` multiplies
it by lambda, the weight the step used (for `grad_ratio`, the rule's lambda at that step). AdamW
normalises each parameter's step, so an effective ratio far above 1 means the encoder follows
InfoNCE alone. Sizes in `--init-only` (ViT-B: too slow for 100 CPU steps) get the init column only.
ViC-MAE's lambda starts at step 0 here (`method.con_start_epoch=0`), so its ratios are comparable.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from cmae.config import load_config
from cmae.data.synth import write_synthetic_dataset
from cmae.demo import DEMO_SPEC, PRESETS, _has_dataset
from cmae.engine.pretrain import pretrain
from cmae.engine.runtime import read_metrics

RULE = ["method.con_weight=grad_ratio", "method.con_grad_ratio=0.3"]  # as the cmae_v demo preset uses it
RULE_EVERY = 5  # the rule re-measures on logging steps: the demo presets' train.log_every
SETTINGS = {  # name -> overrides; the presets' own numbers, and the rule
    "cmae_v": {"1 (paper)": ["method.con_weight=1"], "grad_ratio 0.3": RULE},
    "vic_mae": {"0.03 (demo)": ["method.con_weight=0.03"], "grad_ratio 0.3": RULE},
}
# One-frame methods use the image encoder (tubelet 1); every size at the demo's 64 px input.
SIZE_OVERRIDES = {"vit_small": ["model.patch_size=16"], "vit_base": ["model.patch_size=16"]}


def measured(folder: Path, overrides: list[str], preset: Path, steps: int, every: int) -> dict:
    """The last logged row of a `steps`-step run that logs (and measures) every `every` steps: a
    fixed weight needs one measurement, at the last step; the rule re-measures as the demo does."""
    done = folder / "metrics.jsonl"
    if not done.is_file() or read_metrics(done)[-1]["step"] != steps:
        epochs = -(-steps // 50)  # 50 steps per epoch on the demo's 1,600 clips
        config = load_config(preset, [*overrides, f"train.epochs={epochs}",
                                      f"train.max_steps_per_epoch={-(-steps // epochs)}", f"train.log_every={every}",
                                      "train.log_term_grads=true", "train.tensorboard=false"])
        pretrain(config, folder, overwrite=True)  # an unfinished run of an earlier call: again
    return read_metrics(done)[-1]


def ratio_cells(row: dict, target: float | None) -> tuple[str, str, str]:
    """(unweighted ratio, lambda, effective ratio). The rule's first step runs at lambda 0 while it
    measures: shown with the lambda that measurement sets (its target ratio / the ratio)."""
    ratio = row["grad_norm_loss_con"] / row["grad_norm_loss_rec"]
    weight = row.get("con_weight", 1.0)
    if target is not None and row["step"] == 1:
        weight = target / ratio
    return f"{ratio:.0f}x", f"{weight:.2g}", f"{ratio * weight:.2g}x"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--output", default="runs/contrastive_balance")
    parser.add_argument("--methods", nargs="*", default=list(SETTINGS))
    parser.add_argument("--sizes", nargs="*", default=["vit_micro_p8", "vit_tiny_p8", "vit_small", "vit_base"])
    parser.add_argument("--init-only", nargs="*", default=["vit_base"])
    parser.add_argument("--steps", type=int, default=100)
    args = parser.parse_args(argv)
    output = Path(args.output)
    data = output / "data"
    if not _has_dataset(data, DEMO_SPEC):
        write_synthetic_dataset(data, DEMO_SPEC)
    lines = [f"| method | encoder | con_weight | InfoNCE : rec, init | lambda | effective, init | "
             f"InfoNCE : rec, step {args.steps} | lambda | effective, step {args.steps} |",
             "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    rows = []
    for method in args.methods:
        extra = ["method.con_start_epoch=0"] if method == "vic_mae" else []
        for size in args.sizes:
            for setting, overrides in SETTINGS[method].items():
                common = [f"data.train={data / 'train.txt'}", f"model.name={size}", *SIZE_OVERRIDES.get(size, []),
                          *extra, *overrides]
                tag = f"{method}-{size}-{setting.split()[0]}"
                init = measured(output / tag / "init", common, PRESETS / f"{method}.yaml", 1, 1)
                target = 0.3 if "grad_ratio" in setting else None
                every = RULE_EVERY if target else args.steps
                cells = list(ratio_cells(init, target))
                row = {"method": method, "size": size, "setting": setting, "init": init}
                if size in args.init_only:
                    cells += ["-", "-", "-"]
                else:
                    row["trained"] = measured(output / tag / "trained", common, PRESETS / f"{method}.yaml", args.steps,
                                              every)
                    cells += ratio_cells(row["trained"], target)
                rows.append(row)
                lines.append(f"| {method} | {size} | {setting} | " + " | ".join(cells) + " |")
                print(lines[-1], flush=True)
    text = "\n".join(lines) + "\n"
    (output / "balance.md").write_text(text)
    (output / "balance.json").write_text(json.dumps(rows, indent=2))
    print(text)


if __name__ == "__main__":
    main()
