import math

import pytest

from cmae.engine.schedule import cosine_with_warmup, param_groups, set_group_rates
from cmae.models.vit import VisionTransformer


def test_warmup_then_cosine():
    assert cosine_with_warmup(0, 100, 10, 1.0) == 0.0
    assert cosine_with_warmup(5, 100, 10, 1.0) == pytest.approx(0.5)
    assert cosine_with_warmup(10, 100, 10, 1.0) == pytest.approx(1.0)
    assert cosine_with_warmup(55, 100, 10, 1.0, 0.1) == pytest.approx(0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5)))
    assert cosine_with_warmup(100, 100, 10, 1.0, 0.1) == pytest.approx(0.1)


def test_no_decay_for_norms_biases_and_tokens():
    vit = VisionTransformer(embed_dim=48, depth=1, num_heads=2, patch_size=8, cls_token=True)
    vit.blocks[0].norm1.weight.requires_grad_(False)  # frozen parameters are left out
    decay, no_decay = param_groups(vit, 0.05)
    names = {id(p): n for n, p in vit.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    assert decay["weight_decay"] == 0.05 and no_decay["weight_decay"] == 0.0
    assert decayed == {"patch_embed.proj.weight", "blocks.0.attn.qkv.weight", "blocks.0.attn.proj.weight",
                       "blocks.0.mlp.fc1.weight", "blocks.0.mlp.fc2.weight"}
    skipped = {names[id(p)] for p in no_decay["params"]}
    assert "cls_token" in skipped and "norm.weight" in skipped and "blocks.0.norm1.weight" not in skipped


def test_warmup_start_and_weight_decay_schedule():
    assert cosine_with_warmup(0, 100, 10, 1.0, start=0.1) == pytest.approx(0.1)
    assert cosine_with_warmup(5, 100, 10, 1.0, start=0.1) == pytest.approx(0.55)
    assert cosine_with_warmup(10, 100, 10, 1.0, start=0.1) == pytest.approx(1.0)
    groups = [{"weight_decay": 0.05, "lr_scale": 0.5}, {"weight_decay": 0.0}]
    set_group_rates(groups, 2.0, cosine_with_warmup(50, 100, 0, 0.05, 0.2))
    assert groups[0]["lr"] == 1.0 and groups[1]["lr"] == 2.0
    assert groups[0]["weight_decay"] == pytest.approx(0.125) and groups[1]["weight_decay"] == 0.0  # no-decay stays
    set_group_rates(groups, 2.0)  # no schedule: weight decay untouched
    assert groups[0]["weight_decay"] == pytest.approx(0.125)
