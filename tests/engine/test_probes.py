"""Probes on frozen features: the attentive probe, many settings trained together, the choice
made on the selection split with data.val read only for the winner."""

import copy
import json

import pytest
import torch

from cmae.config import ConfigError, EvalConfig, load_config
from cmae.engine.probes import (
    AttentiveProbe,
    CrossAttention,
    ProbeSetting,
    grid_settings,
    make_heads,
    normalize,
    probe_scores,
    topk_accuracy,
    train_probes,
)


def test_attentive_probe_finds_the_one_token_that_carries_the_class():
    """The class sits in one token at a random position among noise: a mean pool dilutes it 16 times,
    the attentive probe's query finds it."""
    torch.manual_seed(0)
    n, tokens, dim = 400, 16, 16
    y = torch.arange(n) % 4
    x = torch.randn(n, tokens, dim)
    x[torch.arange(n), torch.randint(0, tokens, (n,)), :] = torch.eye(dim)[y] * 6 + 3  # a marked token
    cfg = EvalConfig(attn_epochs=30, attn_batch_size=32, attn_heads=2, probe_warmup_epochs=1)
    heads = make_heads("attentive", 1, dim, 4, cfg)
    train_probes(heads, [ProbeSetting(3e-3, 0.01)], x[:300], y[:300], "attentive", cfg)
    assert probe_scores(heads[0], x[300:].half()).shape == (100, 4)  # cached grids are fp16
    assert topk_accuracy(probe_scores(heads[0], x[300:]), y[300:])["top1"] > 90


def test_cross_attention_from_the_query_side_equals_the_textbook_one():
    torch.manual_seed(2)
    cross = CrossAttention(16, num_heads=4)
    for parameter in cross.parameters():
        torch.nn.init.normal_(parameter)  # a non-trivial norm affine and biases too
    queries, tokens = torch.randn(3, 2, 16), torch.randn(3, 10, 16)
    x = cross.norm(tokens)
    q = cross.q(queries).reshape(3, 2, 4, 4).transpose(1, 2)
    k, v = (layer(x).reshape(3, 10, 4, 4).transpose(1, 2) for layer in (cross.k, cross.v))
    expected = cross.proj(torch.nn.functional.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(3, 2, 16))
    torch.testing.assert_close(cross(queries, normalize(tokens)), expected, rtol=1e-4, atol=1e-4)


def test_settings_trained_together_equal_each_trained_alone():
    torch.manual_seed(1)
    x, y = torch.randn(64, 6, 8), torch.arange(64) % 3
    cfg = EvalConfig(attn_epochs=2, attn_batch_size=16, attn_heads=2, attn_depth=2, attn_queries=2)
    settings = [ProbeSetting(1e-3, 0.0), ProbeSetting(1e-2, 0.1)]
    heads = make_heads("attentive", 2, 8, 3, cfg)
    alone = [copy.deepcopy(head) for head in heads]
    train_probes(heads, settings, x, y, "attentive", cfg)
    for head, setting in zip(alone, settings, strict=True):
        train_probes([head], [setting], x, y, "attentive", cfg)
    for together, single in zip(heads, alone, strict=True):
        for a, b in zip(together.parameters(), single.parameters(), strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)
    assert not torch.equal(heads[0].linear.weight, heads[1].linear.weight)


def test_grid_settings_and_their_checks():
    assert grid_settings("linear", EvalConfig(probe_grid=[[0.1, 0.01, 0.001], [0.0, 1e-4]])) == [
        ProbeSetting(lr, wd) for lr in (0.1, 0.01, 0.001) for wd in (0.0, 1e-4)]
    assert grid_settings("attentive", EvalConfig()) == [ProbeSetting(1e-3, 0.01)]
    with pytest.raises(ConfigError, match="set eval.select_fraction"):
        load_config(None, ["eval.probe_grid=[[0.1, 0.01], [0]]"])
    with pytest.raises(ConfigError, match=r"eval.probe_grid must be \[\[lr, ...\], \[weight_decay, ...\]\]"):
        load_config(None, ["eval.probe_grid=[[0.1, 0.01]]", "eval.select_fraction=0.2"])
    assert isinstance(AttentiveProbe(8, 2, heads=2), torch.nn.Module)


def test_attnprobe_grid_reads_data_val_only_for_the_chosen_setting(synth_dir, tiny_run, tmp_path, monkeypatch):
    import cmae.engine.evaluate as evaluate

    val_size = len((synth_dir / "val.txt").read_text().split("\n")) - 1
    events = []
    original_scores, original_features = evaluate.probe_scores, evaluate.cached_features
    monkeypatch.setattr(evaluate, "probe_scores", lambda head, x: events.append(("score", id(head), len(x)))
                        or original_scores(head, x))
    monkeypatch.setattr(evaluate, "cached_features", lambda encoder, source, *args: events.append(("read", source))
                        or original_features(encoder, source, *args))
    overrides = [f"data.train={synth_dir / 'train.txt'}", f"data.val={synth_dir / 'val.txt'}", "eval.batch_size=8",
                 "eval.attn_epochs=2", "eval.attn_heads=2", "eval.probe_grid=[[0.001, 0.0003, 0.0001], [0, 0.05]]",
                 "eval.select_fraction=0.25"]
    summary = evaluate.frozen_evaluation("attnprobe", tiny_run / "checkpoint-last.pt", tmp_path / "ap",
                                         overrides=overrides)
    val_read = events.index(("read", str(synth_dir / "val.txt")))
    scored = [event for event in events if event[0] == "score"]
    assert len(scored) == 7 and events[val_read + 1:] == [scored[-1]]  # 6 selection scores, then val for one
    assert scored[-1][2] == val_size and all(event[2] == summary["num_select"] for event in scored[:-1])
    assert scored[-1][1] == scored[summary["chosen"]["index"]][1]  # the head scored on val is the chosen one
    written = json.loads((tmp_path / "ap" / "summary.json").read_text())
    assert len(written["grid"]) == 6 and all(row["select_top1"] is not None for row in written["grid"])
    assert written["chosen"]["select_top1"] == max(row["select_top1"] for row in written["grid"])
    assert 0 <= written["top1"] <= written["top5"] <= 100 and written["probe"] == "attentive"
    assert list((tiny_run / "features").glob("*.pt"))  # token grids cached too


def test_cmae_attnprobe_writes_a_summary(synth_dir, tiny_run, tmp_path, capsys):
    from cmae.cli import main

    main(["attnprobe", "--checkpoint", str(tiny_run / "checkpoint-last.pt"), "--output", str(tmp_path / "a"),
          f"data.train={synth_dir / 'train.txt'}", f"data.val={synth_dir / 'val.txt'}", "eval.attn_epochs=1",
          "eval.attn_heads=2", "eval.batch_size=8", "eval.clips=2"])
    assert "attnprobe: top1" in capsys.readouterr().out
    summary = json.loads((tmp_path / "a" / "summary.json").read_text())
    assert {"top1", "top5"} <= set(summary) and summary["views"] == 2 and summary["chosen"]["select_top1"] is None


def test_probe_augment_runs_the_encoder_on_augmented_clips_each_epoch(synth_dir, tiny_run, tmp_path, monkeypatch):
    import cmae.engine.evaluate as evaluate

    views = []
    original = evaluate.feature_batches

    def spy(encoder, samples, config, device, readout=None, view=None):
        views.append((type(view).__name__, len(samples)))
        return original(encoder, samples, config, device, readout, view)

    monkeypatch.setattr(evaluate, "feature_batches", spy)
    overrides = [f"data.train={synth_dir / 'train.txt'}", f"data.val={synth_dir / 'val.txt'}", "eval.batch_size=8",
                 "eval.probe_epochs=3", "eval.probe_augment=true", "eval.select_fraction=0.25", "eval.cache=false"]
    summary = evaluate.frozen_evaluation("linprobe", tiny_run / "checkpoint-last.pt", tmp_path / "lp",
                                         overrides=overrides)
    augmented = [count for name, count in views if name == "ClipView"]
    assert augmented == [24 - summary["num_select"]] * 3  # the fit part, once per probe epoch
    assert summary["chosen"]["select_top1"] is not None and 0 <= summary["top1"] <= 100
