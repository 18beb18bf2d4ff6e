"""Frozen-encoder protocols: features, linear probe, kNN, label fractions, multi-view."""

import json
from collections import Counter

import pytest
import torch

from cmae.config import ConfigError, DataConfig, EvalConfig, InputError, load_config
from cmae.data.decoding import available_backends
from cmae.data.lists import read_samples
from cmae.data.views import MultiViewClips, crop_offsets, evenly_spaced_starts
from cmae.engine.evaluate import (
    _cache_key,
    balanced_fraction,
    extract_features,
    frozen_evaluation,
    knn_classify,
    linear_probe,
    topk_accuracy,
)
from cmae.models import build_encoder
from cmae.models.pooling import pool_tokens
from tests.helpers import TINY_INPUT, TINY_MODEL, TINY_TRAIN, tiny_overrides

PRESET = "configs/demo/videomae.yaml"


def eval_overrides(synth_dir):
    return [f"data.train={synth_dir / 'train.txt'}", f"data.val={synth_dir / 'val.txt'}",
            "eval.probe_epochs=5", "eval.batch_size=8"]


def test_linprobe_keeps_the_encoder_frozen_and_in_eval_mode(synth_dir, tiny_run, tmp_path, monkeypatch):
    import cmae.engine.evaluate as evaluate

    modes = []
    original = evaluate.extract_features

    def spy(encoder, samples, config, device=None, readout=None):
        encoder.register_forward_pre_hook(lambda module, args: modes.append(module.training))
        return original(encoder, samples, config, device, readout)

    monkeypatch.setattr(evaluate, "extract_features", spy)
    checkpoint = tiny_run / "checkpoint-last.pt"
    before = torch.load(checkpoint, weights_only=True)["model"]
    summary = frozen_evaluation("linprobe", checkpoint, tmp_path / "lp", overrides=eval_overrides(synth_dir))
    assert modes and not any(modes)  # every encoder pass in eval mode
    after = torch.load(checkpoint, weights_only=True)["model"]
    assert all(torch.equal(before[k], after[k]) for k in before)  # weights and buffers untouched
    written = json.loads((tmp_path / "lp" / "summary.json").read_text())
    assert written["top1"] == summary["top1"] and 0 <= summary["top1"] <= summary["top5"] <= 100
    assert (tmp_path / "lp" / "config.yaml").is_file()
    assert list((tiny_run / "features").glob("*.pt")), "features are cached next to the checkpoint"


def test_knn_and_random_floor(synth_dir, tiny_run, tmp_path):
    knn = frozen_evaluation("knn", tiny_run / "checkpoint-last.pt", tmp_path / "knn", overrides=eval_overrides(synth_dir))
    random = frozen_evaluation("knn", "random", tmp_path / "rnd", PRESET,
                               eval_overrides(synth_dir) + TINY_INPUT + TINY_MODEL + TINY_TRAIN)
    assert {"top1", "top5"} <= set(knn) and {"top1", "top5"} <= set(random)
    with pytest.raises(ConfigError, match="needs --config"):
        frozen_evaluation("knn", "random", tmp_path / "x")
    with pytest.raises(ConfigError, match="'eval.knn_temperature' must be > 0"):
        frozen_evaluation("knn", tiny_run / "checkpoint-last.pt", tmp_path / "y",
                          overrides=eval_overrides(synth_dir) + ["eval.knn_temperature=0"])


def test_image_lists_evaluate_a_video_encoder(synth_dir, tiny_run, tmp_path):
    from PIL import Image

    lines = []
    for split in ("train", "val"):
        for k in range(8):
            Image.new("RGB", (32, 32), (30 * k, 255 - 30 * k, 100)).save(tmp_path / f"{split}{k}.png")
            lines.append(f"{split}{k}.png {k % 2}")
        (tmp_path / f"{split}.txt").write_text("\n".join(lines[-8:]) + "\n")
    summary = frozen_evaluation("knn", tiny_run / "checkpoint-last.pt", tmp_path / "img",
                                overrides=[f"data.train={tmp_path / 'train.txt'}", f"data.val={tmp_path / 'val.txt'}",
                                           "data.num_frames=1"])
    assert summary["num_train"] == 8 and summary["num_classes"] == 2


def test_feature_cache_follows_the_data_and_leaves_out_bad_files(synth_dir, tiny_run, tmp_path):
    """An ImageFolder tree changed under the same root is re-extracted, not served stale; an
    undecodable file is left out of the evaluation and counted, never scored as a duplicate."""
    from PIL import Image

    def folder_overrides():
        return [f"data.train={tmp_path / 'train'}", f"data.val={tmp_path / 'val'}", "data.num_frames=1"]

    for split in ("train", "val"):
        for k in range(6):
            (tmp_path / split / f"c{k % 2}").mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (32, 32), (40 * k, 100, 255 - 40 * k)).save(tmp_path / split / f"c{k % 2}" / f"{k}.png")
    checkpoint = tiny_run / "checkpoint-last.pt"
    first = frozen_evaluation("knn", checkpoint, tmp_path / "a", overrides=folder_overrides())
    assert (first["num_val"], first["skipped_val"]) == (6, 0)
    (tmp_path / "val" / "c0" / "0.png").write_bytes(b"not a png")  # same root, same file names
    with pytest.raises(InputError, match=r"1 of 6 files could not be decoded \(16.7% > data.max_failed_fraction"):
        frozen_evaluation("knn", checkpoint, tmp_path / "b", overrides=folder_overrides())  # pre-training's 5%
    with pytest.warns(UserWarning, match="1 of 6 files could not be decoded"):
        second = frozen_evaluation("knn", checkpoint, tmp_path / "b",
                                   overrides=[*folder_overrides(), "data.max_failed_fraction=0.2"])
    assert (second["num_val"], second["skipped_val"], second["skipped_train"]) == (5, 1, 0)
    (tmp_path / "val" / "c2").mkdir()  # a class the training tree lacks would shift every label
    with pytest.raises(ConfigError, match=r"different classes \(only in train: \[\], only in val: \['c2'\]\)"):
        frozen_evaluation("knn", checkpoint, tmp_path / "c", overrides=folder_overrides())


def test_feature_cache_key_follows_the_feature_settings(synth_dir, tiny_run):
    samples = read_samples(str(synth_dir / "val.txt"))
    checkpoint = tiny_run / "checkpoint-last.pt"

    def key(*overrides):
        return _cache_key(checkpoint, samples, load_config(PRESET, list(overrides)))

    assert key() == key("train.epochs=3")  # a setting that does not shape a feature
    assert key() == key(f"data.decoder={available_backends()[0]}")  # "auto" is keyed as what it picks
    for override in ("eval.feature=temporal", "eval.crops=3", "data.image_size=32", "data.test_crop_ratio=0.875"):
        assert key(override) != key(), override
    if len(available_backends()) > 1:
        assert key(f"data.decoder={available_backends()[1]}") != key()


def test_temporal_feature_keeps_time_order():
    class Encoder:
        num_prefix_tokens = 1

    # 2 time steps x 3 spatial tokens, time-major, after one class token.
    tokens = torch.tensor([[[9.0], [1.0], [2.0], [3.0], [10.0], [20.0], [30.0]]])
    assert pool_tokens(Encoder(), tokens, "temporal", time_steps=2).tolist() == [[2.0, 20.0]]
    assert pool_tokens(Encoder(), tokens, "mean").tolist() == [[11.0]]
    swapped = torch.cat([tokens[:, :1], tokens[:, 4:], tokens[:, 1:4]], dim=1)  # same frames, reversed order
    assert pool_tokens(Encoder(), swapped, "temporal", 2).tolist() == [[20.0, 2.0]]
    assert torch.equal(pool_tokens(Encoder(), swapped, "mean"), pool_tokens(Encoder(), tokens, "mean"))
    with pytest.raises(ConfigError, match="config key 'eval.feature' must be one of mean, temporal, cls, got 'max'"):
        load_config("configs/demo/videomae.yaml", ["eval.feature=max"])  # choices are checked as the config loads


def test_temporal_features_of_clips_average_to_the_mean_feature(synth_dir):
    config = load_config(PRESET, tiny_overrides(synth_dir) + ["eval.batch_size=4"])
    encoder = build_encoder(config.model)
    samples = read_samples(synth_dir / "val.txt")[:6]
    mean, labels = extract_features(encoder, samples, config)
    config.eval.feature = "temporal"
    temporal, same_labels = extract_features(encoder, samples, config)
    time_steps = config.data.num_frames // config.model.tubelet_size
    assert temporal.shape == (6, time_steps * mean.shape[1]) and torch.equal(labels, same_labels)
    torch.testing.assert_close(temporal.reshape(6, time_steps, -1).mean(1), mean, rtol=1e-5, atol=1e-5)


def test_knn_on_a_hand_made_set():
    train_x = torch.tensor([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
    train_y = torch.tensor([0, 0, 1, 1])
    val_x = torch.tensor([[1.0, 0.05], [0.05, 1.0]])
    result = knn_classify(train_x, train_y, val_x, torch.tensor([0, 1]), num_classes=2, k=3)
    assert result["top1"] == 100.0
    assert knn_classify(train_x, train_y, val_x, torch.tensor([1, 0]), num_classes=2, k=3)["top1"] == 0.0


def test_linear_probe_learns_a_separable_set():
    torch.manual_seed(0)
    centres = torch.randn(4, 16) * 4
    y = torch.arange(200) % 4
    x = centres[y] + torch.randn(200, 16)
    result = linear_probe(x[:160], y[:160], x[160:], y[160:], 4, EvalConfig(probe_epochs=30, probe_batch_size=64,
                                                                             probe_warmup_epochs=2))
    assert result["top1"] > 95


def test_balanced_fraction_is_balanced_and_seeded():
    labels = [c for c in range(5) for _ in range(40)]
    chosen = balanced_fraction(labels, 0.1, seed=3)
    assert Counter(labels[i] for i in chosen) == {c: 4 for c in range(5)}
    assert chosen == balanced_fraction(labels, 0.1, seed=3) != balanced_fraction(labels, 0.1, seed=4)
    assert len(set(chosen)) == len(chosen)
    assert Counter(labels[i] for i in balanced_fraction(labels, 0.001)) == {c: 1 for c in range(5)}
    assert balanced_fraction(labels, 1.0) == list(range(200))
    with pytest.raises(ConfigError, match="label_fraction"):
        balanced_fraction(labels, 0.0)


def test_topk():
    scores = torch.tensor([[0.1, 0.7, 0.2], [0.5, 0.3, 0.2]])
    assert topk_accuracy(scores, torch.tensor([1, 1]), ks=(1, 2)) == {"top1": 50.0, "top2": 100.0}


def test_multiview_positions_and_identical_views_average_to_one():
    assert evenly_spaced_starts(100, 8, 4, 1) == [35]
    assert evenly_spaced_starts(100, 8, 4, 3) == [0, 36, 71]
    assert evenly_spaced_starts(10, 8, 4, 2) == [None, None]
    assert crop_offsets(40, 32, 3) == [0, 4, 8] and crop_offsets(40, 32, 1) == [4]

    class Still:
        num_frames = 12

        def get_frames(self, indices):
            generator = torch.Generator().manual_seed(0)
            frame = torch.randint(0, 256, (1, 3, 16, 16), dtype=torch.uint8, generator=generator)
            return frame.expand(len(indices), -1, -1, -1)

    config = DataConfig(num_frames=4, sampling_rate=2, image_size=16)
    views = MultiViewClips(config, clips=2, crops=3)(Still())["video"]
    assert views.shape == (6, 3, 4, 16, 16)
    single = MultiViewClips(config)(Still())["video"]
    # a still, square video: every view is the same, so averaging scores over views equals one view
    from cmae.engine.finetune import Classifier
    from cmae.models.vit import VisionTransformer

    classifier = Classifier(VisionTransformer(embed_dim=48, depth=1, num_heads=2, patch_size=8), 3).eval()
    with torch.no_grad():
        averaged = classifier(views).softmax(-1).mean(0)
        one = classifier(single).softmax(-1)[0]
    assert torch.allclose(averaged, one, atol=1e-6)


def test_cli_commands_write_summaries(synth_dir, tiny_run, tmp_path, capsys):
    from cmae.cli import main

    main(["knn", "--checkpoint", str(tiny_run / "checkpoint-last.pt"), "--output", str(tmp_path / "k"),
          *eval_overrides(synth_dir)])
    assert "knn: top1" in capsys.readouterr().out
    assert set(json.loads((tmp_path / "k" / "summary.json").read_text())) >= {"top1", "top5"}
    with pytest.raises(SystemExit) as stop:
        main(["linprobe", "--checkpoint", str(tiny_run / "checkpoint-last.pt"), "--output", str(tmp_path / "l"),
              "eval.knn_kk=3"])
    assert stop.value.code == 2 and "unknown config key 'eval.knn_kk'" in capsys.readouterr().err
