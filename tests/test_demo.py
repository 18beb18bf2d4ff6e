"""The demo end to end on a tiny budget: every file it promises, a well-formed table."""

import pytest
import torch

from cmae.data.synth import SynthSpec
from cmae.demo import PRESETS, RANDOM_FLOORS, TASKS, Claim, claim_lines, difference_se, run_demo, save_random_init
from tests.helpers import TINY_DECODER

# patch 4 (the preset's): the demo's 32x32 frames give 8x8 tokens
TINY = ["model.name=vit_pico_p4", *TINY_DECODER, "data.image_size=32", "train.batch_size=8", "data.num_workers=0",
        "train.warmup_epochs=0"]


def test_demo_writes_table_curves_and_picture(tmp_path):
    rows = run_demo(tmp_path, epochs=1, methods=("videomae", "vic_mae"),
                    spec=SynthSpec(num_train=16, num_val=8, num_frames=16, size=32), overrides=TINY)
    assert [row["encoder"] for row in rows] == ["videomae", "vic_mae", *RANDOM_FLOORS]
    assert all(len(row) == 1 + 2 * len(TASKS) for row in rows)
    assert all(0 <= value <= 100 for row in rows for key, value in row.items() if key != "encoder")
    for name in ("results.md", "results.json", "losses.png", "reconstruction.png", "reconstruction-neighbours.png"):
        assert (tmp_path / name).is_file(), name
    for method in ("videomae", "vic_mae"):  # train.monitor is on: the curves' last panel
        logged = (tmp_path / method / "metrics.jsonl").read_text()
        assert "\"monitor_top1\"" in logged and "/monitor-train" in (tmp_path / method / "config.yaml").read_text()
    summaries = sorted((tmp_path / "eval").glob("*/summary.json"))
    assert len(summaries) == len(rows) * 2 * len(TASKS)  # one folder per encoder, task and protocol
    floor_config = (tmp_path / "eval" / "random-videomae-motion-knn" / "config.yaml").read_text()
    assert "vit_pico_p4" in floor_config and "image_size: 32" in floor_config  # the demo's overrides reach the floors
    # a floor's features are extracted once per list (train and val of each task), then reused by kNN
    assert len(list((tmp_path / "random-videomae" / "features").glob("*.pt"))) == 2 * len(TASKS)
    accuracies, claims = (tmp_path / "results.md").read_text().split("What each method is built to learn")
    assert "| motion linprobe |" in accuracies and accuracies.count("\n| ") == 2 + len(rows)
    # the claims whose encoders ran, each with its difference, standard error and verdict
    claim_rows = [line for line in claims.splitlines() if line.startswith("| ") and "learns" in line]
    assert [line.split(":")[0] for line in claim_rows] == ["| videomae learns motion", "| vic_mae learns appearance"]
    assert all(line.endswith(("| yes |", "| no |")) for line in claim_rows)


def test_claims_need_both_margin_and_standard_errors():
    assert difference_se(50.0, 50.0, 100) == pytest.approx(100 * (0.5 / 100) ** 0.5)
    assert Claim("x", "c", "a", "b", margin=8).check(8.0, 5.0) and not Claim("x", "c", "a", "b", margin=8).check(7.9, 0.1)
    assert not Claim("x", "c", "a", "b", min_se=2).check(3.0, 1.5) and Claim("x", "c", "a", "b", min_se=2).check(3.1, 1.5)


def test_a_claim_may_compare_two_protocols_of_one_encoder_and_skips_missing_cells():
    rows = [{"encoder": "a", "lin": 50.0, "attn": 56.0}, {"encoder": "floor", "lin": 30.0}]
    claims = [Claim("attn reads more", "attn", "a", "a", baseline_column="lin"), Claim("a learns", "attn", "a", "floor")]
    lines = claim_lines(claims, rows, lambda claim, a, b: 2.0)
    assert lines[2:] == ["| attn reads more: a attn - a lin (needs >= 0 points) | +6.0 | 2.0 | +3.0 | yes |"]


def test_saved_floor_is_the_seeded_random_init(tmp_path):
    from cmae.engine.loading import load_pretrained

    path = save_random_init(PRESETS / "mae.yaml", TINY, tmp_path)
    _, saved = load_pretrained(path)
    _, fresh = load_pretrained("random", PRESETS / "mae.yaml", TINY)
    for (name, a), (_, b) in zip(saved.state_dict().items(), fresh.state_dict().items(), strict=True):
        assert torch.equal(a, b), name
