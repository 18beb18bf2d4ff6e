import json
import warnings

import pytest
import torch

from cmae.cli import main
from cmae.config import ConfigError, InputError, load_config
from cmae.engine.finetune import Classifier, FinetuneObjective, finetune, finetune_train_config, layer_decay_groups
from cmae.engine.pretrain import pretrain
from cmae.models.vit import VisionTransformer
from tests.helpers import TINY_INPUT, TINY_MODEL, tiny_overrides

TINY = [*TINY_MODEL, *TINY_INPUT, "data.num_frames=4"]


def test_layer_decay_scales():
    encoder = VisionTransformer(embed_dim=48, depth=3, num_heads=2, patch_size=8, cls_token=True)
    model = Classifier(encoder, 5)
    groups = layer_decay_groups(model, weight_decay=0.05, layer_decay=0.5)
    scale_of = {}
    names = {id(p): n for n, p in model.named_parameters()}
    for group in groups:
        for param in group["params"]:
            scale_of[names[id(param)]] = (group["lr_scale"], group["weight_decay"])
    assert scale_of["head.weight"] == (1.0, 0.05) and scale_of["head.bias"] == (1.0, 0.0)
    assert scale_of["fc_norm.weight"] == (1.0, 0.0)
    assert "encoder.norm.weight" not in scale_of  # mean pooling skips the final norm (official layout)
    assert scale_of["encoder.blocks.2.attn.qkv.weight"] == (0.5, 0.05)
    assert scale_of["encoder.blocks.0.mlp.fc1.weight"] == (0.125, 0.05)
    assert scale_of["encoder.patch_embed.proj.weight"] == (0.0625, 0.05)
    assert scale_of["encoder.cls_token"] == (0.0625, 0.0)
    assert len(scale_of) == sum(1 for _ in model.parameters())


def test_soft_targets_mix_and_smooth():
    classifier = Classifier(VisionTransformer(embed_dim=48, depth=1, num_heads=2, patch_size=8), 4)
    objective = FinetuneObjective(classifier, 4, mixup=0.8, cutmix=1.0, smoothing=0.1)
    torch.manual_seed(0)
    clip = torch.randn(6, 3, 2, 16, 16)
    mixed, target = objective.soft_targets(clip, torch.tensor([0, 1, 2, 3, 0, 1]))
    assert mixed.shape == clip.shape and target.shape == (6, 4)
    assert torch.allclose(target.sum(-1), torch.ones(6))
    assert (target >= 0.1 / 4 - 1e-6).all()  # smoothing mass on every class
    plain = FinetuneObjective(classifier, 4, mixup=0, cutmix=0, smoothing=0.0)
    same, onehot = plain.soft_targets(clip, torch.tensor([0, 1, 2, 3, 0, 1]))
    assert torch.equal(same, clip) and torch.equal(onehot.argmax(-1), torch.tensor([0, 1, 2, 3, 0, 1]))


def test_finetune_end_to_end_with_multiview_and_fraction(synth_dir, tmp_path):
    run = tmp_path / "pre"
    # A capped smoke run: fine-tuning must not inherit the cap.
    pretrain(load_config("configs/demo/videomae.yaml",
                         tiny_overrides(synth_dir, **{"train.epochs": 1, "train.max_steps_per_epoch": 1})), run)
    overrides = [f"data.train={synth_dir / 'train.txt'}", f"data.val={synth_dir / 'val.txt'}",
                 "finetune.epochs=2", "finetune.batch_size=4", "finetune.warmup_epochs=1", "eval.clips=2",
                 "eval.crops=3", "eval.label_fraction=0.5", "eval.batch_size=4"]
    summary = finetune(run / "checkpoint-last.pt", tmp_path / "ft", overrides=overrides)
    written = json.loads((tmp_path / "ft" / "summary.json").read_text())
    assert written["top1"] == pytest.approx(summary["top1"]) and 0 <= written["top1"] <= written["top5"] <= 100
    assert written["num_train"] == 16 and written["label_fraction"] == 0.5  # 24 clips, 8 classes x 3 -> 8 x 2
    assert written["steps"] == 2 * 16 // 4
    assert (tmp_path / "ft" / "checkpoint-last.pt").is_file()
    assert "loss_cls" in (tmp_path / "ft" / "metrics.jsonl").read_text()
    with pytest.raises(ConfigError, match="not eval.feature='temporal'"):
        finetune(run / "checkpoint-last.pt", tmp_path / "ft2", overrides=overrides + ["eval.feature=temporal"])


def test_finetune_repeats_samples_and_resumes_mid_run_exactly(synth_dir, tmp_path):
    """data.repeat=2 gives each video two augmented samples (an epoch of 2 x 24), in two micro-batches
    a step; a run resumed from its step-5 checkpoint (mid-epoch, through the command's --resume)
    ends as the uninterrupted one, head dropout and random erasing included."""
    overrides = [f"data.train={synth_dir / 'train.txt'}", f"data.val={synth_dir / 'val.txt'}", "data.repeat=2",
                 "finetune.epochs=2", "finetune.batch_size=8", "finetune.warmup_epochs=1", "finetune.reprob=0.25",
                 "finetune.accum_steps=2", "finetune.head_dropout=0.5",
                 "train.save_every_steps=1", "train.keep_checkpoints=20", "eval.batch_size=4"]
    config = load_config("configs/demo/videomae.yaml", overrides)
    assert finetune_train_config(config).accum_steps == 2
    full = finetune("random", tmp_path / "full", config_path="configs/demo/videomae.yaml",
                    overrides=[*TINY, *overrides])
    assert full["steps"] == 2 * 24 * 2 // 8
    main(["finetune", "--init", "random", "--config", "configs/demo/videomae.yaml", "--output",
          str(tmp_path / "resumed"), "--resume", str(tmp_path / "full" / "checkpoint-step0000005.pt"),
          *TINY, *overrides])
    resumed = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert resumed["steps"] == full["steps"] and resumed["top1"] == full["top1"]
    a = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)["model"]
    b = torch.load(tmp_path / "resumed" / "checkpoint-last.pt", weights_only=True)["model"]
    assert a.keys() == b.keys() and all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    retest = finetune("random", tmp_path / "full", config_path="configs/demo/videomae.yaml",
                      overrides=[*TINY, *overrides, "eval.clips=1"], resume="auto")  # a finished run: the test only
    assert retest["steps"] == full["steps"] and retest["top1"] >= 0
    with pytest.raises(ConfigError, match="is a cmae fine-tuning checkpoint, not a pre-trained one"):
        finetune(tmp_path / "full" / "checkpoint-last.pt", tmp_path / "other", overrides=overrides)
    with pytest.raises(ConfigError, match="saved mid-epoch with finetune.batch_size=8; this run has 4"):
        finetune("random", tmp_path / "other", config_path="configs/demo/videomae.yaml",
                 overrides=[*TINY, *overrides, "finetune.batch_size=4"],
                 resume=tmp_path / "full" / "checkpoint-step0000005.pt")


def test_a_file_head_is_used_only_where_it_fits(capsys):
    """A class-token file (timm, MAE: `head` without `fc_norm`) fits eval.feature=cls, not mean pooling;
    a head of other classes starts anew in training and is refused in a test."""
    from cmae.engine.finetune import classes_and_head

    cls_head = {"head.weight": torch.zeros(8, 48), "head.bias": torch.zeros(8)}
    mean_head = {**cls_head, "fc_norm.weight": torch.ones(48), "fc_norm.bias": torch.zeros(48)}
    labels = list(range(8))
    assert classes_and_head("f.pth", cls_head, labels, "cls", test_only=False) == (8, True)
    assert classes_and_head("f.pth", mean_head, labels, "mean", test_only=True) == (8, True)
    assert classes_and_head("f.pth", cls_head, labels, "mean", test_only=False) == (8, False)
    assert "does not fit this classifier (8 classes, eval.feature=mean): a new head starts" in capsys.readouterr().out
    assert classes_and_head("f.pth", mean_head, labels[:5], "mean", test_only=False) == (5, False)
    assert classes_and_head("f.pth", {}, labels, "mean", test_only=False) == (8, False)
    with pytest.raises(ConfigError, match="eval.feature=mean needs"):
        classes_and_head("f.pth", cls_head, labels, "mean", test_only=True)
    with pytest.raises(ConfigError, match="has 8 classes; data.val has labels up to 9"):
        classes_and_head("f.pth", mean_head, list(range(10)), "mean", test_only=True)


def test_the_batch_follows_the_preset_and_the_test_stops_past_max_failed_fraction(synth_dir, tmp_path):
    """finetune.batch_size=0 (the default) trains in the preset's train.batch_size (8 here: 24 clips, 3 steps
    an epoch) and records it; a paper's fine-tuning preset keeps its own. The multi-view test counts a
    file that does not decode against data.max_failed_fraction, as the frozen evaluations do."""
    assert load_config("configs/demo/videomae.yaml").finetune.batch_size == 0
    assert load_config("finetune/videomae_vit_b_k400").finetune.batch_size == 768
    (tmp_path / "bad.mp4").write_text("not a video\n")
    rows = [f"{synth_dir / line.split()[0]} {line.split()[1]}" for line in (synth_dir / "val.txt").read_text().splitlines()]
    (tmp_path / "val.txt").write_text("\n".join([*rows[:4], f"{tmp_path / 'bad.mp4'} 0"]) + "\n")  # 1 of 5: 20 %
    overrides = [*TINY, f"data.train={synth_dir / 'train.txt'}", f"data.val={tmp_path / 'val.txt'}",
                 "train.batch_size=8", "finetune.epochs=1", "finetune.warmup_epochs=0", "eval.batch_size=5"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the decoder's warning naming the bad file
        with pytest.raises(InputError, match=r"1 of 5 files could not be decoded \(20.0% > data.max_failed_fraction"):
            finetune("random", tmp_path / "ft", config_path="configs/demo/videomae.yaml", overrides=overrides)
        summary = finetune("random", tmp_path / "ft", config_path="configs/demo/videomae.yaml", resume="auto",
                           overrides=[*overrides, "data.max_failed_fraction=0.25"])  # the finished run: test only
    assert summary["steps"] == 24 // 8 and summary["skipped_val"] == 1 and summary["num_val"] == 4
    assert "batch_size: 8" in (tmp_path / "ft" / "config.yaml").read_text().split("finetune:")[1]


@pytest.mark.parametrize("select", [0.0, 0.25])
def test_eval_every_keeps_the_best_epoch(synth_dir, tiny_run, tmp_path, select):
    """finetune.eval_every=1: a validation row each epoch, checkpoint-best.pt the best one's, and the summary
    names the best epoch, what judged it (the selection split when set, else data.val) and its full test."""
    overrides = [f"data.train={synth_dir / 'train.txt'}", f"data.val={synth_dir / 'val.txt'}", "finetune.epochs=3",
                 "finetune.batch_size=4", "finetune.warmup_epochs=1", "eval.batch_size=8", "finetune.eval_every=1",
                 f"eval.select_fraction={select}"]
    summary = finetune(tiny_run / "checkpoint-last.pt", tmp_path / "ft", overrides=overrides)
    key = "select_top1" if select else "val_top1"
    rows = [json.loads(line) for line in (tmp_path / "ft" / "metrics.jsonl").read_text().splitlines()]
    checks = [row for row in rows if key in row]
    assert [row["epoch"] for row in checks] == [0, 1, 2]
    best = max(checks, key=lambda row: row[key])  # the first of equals
    assert summary["best_epoch"] == best["epoch"] + 1 and summary[f"best_{key}"] == best[key]
    assert summary["best_on"] == ("select" if select else "val")
    assert summary["num_train"] == (16 if select else 24)  # 8 classes x 3 clips, one per class held out
    assert (tmp_path / "ft" / "checkpoint-best.pt").is_file() and 0 <= summary["best"]["top1"] <= 100
    saved = torch.load(tmp_path / "ft" / "checkpoint-best.pt", weights_only=False)
    assert saved["epoch"] == best["epoch"] + 1


def test_model_ema_follows_the_weights_and_is_tested(synth_dir, tiny_run, tmp_path):
    classifier = Classifier(VisionTransformer(embed_dim=48, depth=1, num_heads=2, patch_size=8), 3)
    objective = FinetuneObjective(classifier, 3, mixup=0, cutmix=0, smoothing=0, ema_decay=0.9)
    start = classifier.head.bias.detach().clone()
    with torch.no_grad():
        classifier.head.bias.add_(1.0)
    objective.after_step(1, 10)
    torch.testing.assert_close(objective.ema.head.bias, start + 0.1)  # 0.9 x old + 0.1 x new
    assert not any(p.requires_grad for p in objective.ema.parameters())
    overrides = [f"data.train={synth_dir / 'train.txt'}", f"data.val={synth_dir / 'val.txt'}", "finetune.epochs=1",
                 "finetune.batch_size=8", "finetune.warmup_epochs=1", "eval.batch_size=8", "finetune.model_ema=true",
                 "finetune.model_ema_decay=0.5", "finetune.weight_decay_end=0.0", "finetune.warmup_lr=1e-6",
                 "finetune.attn_drop_rate=0.1"]
    summary = finetune(tiny_run / "checkpoint-last.pt", tmp_path / "ft", overrides=overrides)
    assert 0 <= summary["ema"]["top1"] <= 100 and summary["ema"]["decay"] == 0.5
    saved = torch.load(tmp_path / "ft" / "checkpoint-last.pt", weights_only=False)
    assert any(key.startswith("ema.") for key in saved["model"])  # --resume restores the average too
    assert summary["first"]["lr"] == pytest.approx(1e-6)  # the warm-up starts at warmup_lr
    without = [o for o in overrides if not o.startswith("finetune.model_ema=")] + ["finetune.model_ema=false"]
    with pytest.raises(ConfigError, match=r"finetune\.model_ema=False \(checkpoint: True\)"):
        finetune(tiny_run / "checkpoint-last.pt", tmp_path / "ft", overrides=without, resume="auto")


def test_attention_dropout_acts_in_training_only():
    encoder = VisionTransformer(embed_dim=48, depth=1, num_heads=2, patch_size=8)
    encoder.blocks[0].attn.attn_drop = 0.5
    clip = torch.randn(2, 3, 1, 16, 16)
    torch.manual_seed(0)
    encoder.train()
    assert not torch.allclose(encoder(clip), encoder(clip))
    encoder.eval()
    assert torch.equal(encoder(clip), encoder(clip))
