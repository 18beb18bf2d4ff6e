"""Named override sets that shrink any preset to seconds on a CPU, `tiny_overrides`, and
`torchrun_pretrain` (two real gloo processes)."""

import os
import subprocess
import sys
from pathlib import Path

TINY_ENCODER = ["model.name=vit_pico_p4", "model.patch_size=8"]  # 48 wide, 2 blocks, 32x32 -> 4x4 patches
TINY_DECODER = ["model.decoder_dim=32", "model.decoder_depth=1", "model.decoder_heads=2"]
TINY_MODEL = TINY_ENCODER + TINY_DECODER
TINY_HEADS = ["method.proj_hidden=32", "method.pred_hidden=32", "method.proj_dim=16"]  # contrastive heads
TINY_INPUT = ["data.sampling_rate=1", "data.image_size=32", "data.num_workers=0"]  # the frame count is the caller's
TINY_TRAIN = ["train.batch_size=8", "train.epochs=2", "train.warmup_epochs=1", "train.log_every=1"]


def tiny_overrides(synth_dir, **extra) -> list[str]:
    """A tiny run on the session's synthetic clips (4 frames); `extra` keys replace any of them."""
    values = dict(text.split("=", 1) for text in [f"data.train={synth_dir / 'train.txt'}", "data.num_frames=4",
                                                   *TINY_INPUT, *TINY_MODEL, *TINY_TRAIN])
    values.update(extra)
    return [f"{key}={value}" for key, value in values.items()]


def torchrun_pretrain(preset, output, overrides, *extra_args):
    """`cmae pretrain` in two gloo processes; fails the test with their output if they fail."""
    torchrun = Path(sys.executable).with_name("torchrun")
    command = [str(torchrun), "--standalone", "--nproc_per_node=2", "-m", "cmae.cli", "pretrain",
               "--config", preset, "--output", str(output), *extra_args, *overrides]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=300, env=env)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
