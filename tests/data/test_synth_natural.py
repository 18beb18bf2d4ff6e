"""Tests for the natural style of the synthetic data (cmae.data.synth_natural)."""
from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest

from cmae.data.synth import MOTION_CLASSES, SynthSpec, write_synthetic_dataset
from cmae.data.synth_natural import (
    NATURAL_SCENE_CLASSES,
    dead_leaves,
    pink_noise,
    profile,
    render_natural_clip,
    sample_natural_clip,
)


def _object_only(motion: int, seed: int, size: int = 64, frames: int = 8):
    """The main object alone, white with a pure red marking on black: params, centroid [T, 2], area [T] and
    marking centroid [T, 2] measured on the rendered pixels."""
    p = sample_natural_clip(motion, np.random.default_rng(seed), frames, size)
    white = np.full_like(p.obj.texture, 255)
    obj = dataclasses.replace(p.obj, texture=white, mark_color=(255, 0, 0))
    video = render_natural_clip(dataclasses.replace(p, obj=obj, distractors=[], texture=np.zeros_like(p.texture)))
    video = video.astype(int)
    ys, xs = np.mgrid[0:size, 0:size]
    body = video.max(-1) > 100
    mark = (video[..., 0] > 150) & (video[..., 1] < 60)

    def centroid(masks):
        return np.stack([[(xs * m).sum() / m.sum(), (ys * m).sum() / m.sum()] for m in masks])

    return p, centroid(body), body.sum((1, 2)), centroid(mark)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_motion_is_what_is_rendered(seed):
    """On rendered pixels: translations move the object the class's way all along (acceleration never reverses
    it) with little sideways drift; the other classes drift little, grow/shrink change the area monotonically,
    rotations turn the marking the class's way (y points down: clockwise is an increasing angle)."""
    moves = {"move_left": (0, -1), "move_right": (0, 1), "move_up": (1, -1), "move_down": (1, 1)}
    for motion, name in enumerate(MOTION_CLASSES):
        p, centroid, area, mark = _object_only(motion, seed)
        if name in moves:
            axis, sign = moves[name]
            assert np.all(sign * np.diff(centroid[:, axis]) > 0), name
            assert sign * (centroid[-1, axis] - centroid[0, axis]) > 0.15 * 64, name
            assert np.ptp(centroid[:, 1 - axis]) < 0.1 * 64, name
            continue
        assert np.ptp(centroid, axis=0).max() < 0.1 * 64, name
        if name in ("grow", "shrink"):
            assert np.all((1 if name == "grow" else -1) * np.diff(area) > 0), name
            assert max(area[0], area[-1]) > 1.8 * min(area[0], area[-1]), name
        else:
            rel = mark - centroid
            theta = np.unwrap(np.arctan2(rel[:, 1], rel[:, 0]))
            assert np.all((1 if name == "rotate_cw" else -1) * np.diff(theta) > 0), name


def test_accelerated_profiles_are_monotone_and_centred():
    tc = np.linspace(-0.5, 0.5, 1001)
    for a in (-0.9, 0.0, 0.5, 0.9):
        x = profile(tc, a)
        assert np.all(np.diff(x) > 0) and abs(x.mean()) < 1e-3
    assert not np.allclose(np.diff(profile(tc, 0.8), 2), 0)  # it accelerates


def test_contrast_polarity_is_random():
    """The object is brighter than its surroundings in some clips and darker in others: a moving edge's sign of
    change does not tell the direction."""
    brighter = []
    for seed in range(40):
        p = sample_natural_clip(seed % 8, np.random.default_rng(seed), 8, 64)
        brighter.append(np.mean(p.obj.color) > p.texture.mean())
    assert 0.2 < np.mean(brighter) < 0.8


def test_textures_have_natural_statistics():
    rng = np.random.default_rng(0)
    noise = pink_noise(rng, 128)
    assert abs(noise.mean()) < 1e-6 and abs(noise.std() - 1) < 1e-6
    power = np.abs(np.fft.fft2(noise)) ** 2
    assert power[1:4, 1:4].mean() > 50 * power[30:40, 30:40].mean()  # most energy at low frequencies
    leaves = dead_leaves(rng, 128, 0)
    assert leaves.shape == (128, 128, 3) and leaves.dtype == np.uint8
    assert leaves.std() > 25  # full contrast, not a flat background


def test_the_writer_writes_the_natural_style(tmp_path):
    spec = SynthSpec(num_train=8, num_val=2, num_frames=8, size=32, style="natural")
    summary = write_synthetic_dataset(tmp_path, spec)
    assert summary["scene_classes"] == list(NATURAL_SCENE_CLASSES)
    assert (tmp_path / "scene_classes.txt").read_text().splitlines() == list(NATURAL_SCENE_CLASSES)
    assert json.loads((tmp_path / "meta.json").read_text())["spec"]["style"] == "natural"
    scenes = {int(line.split()[1]) for line in (tmp_path / "train_scene.txt").read_text().splitlines()}
    assert scenes <= set(range(len(NATURAL_SCENE_CLASSES)))


@pytest.mark.parametrize("bad", [{"style": "cartoon"}, {"style": "natural", "background_pool": 3}])
def test_a_bad_style_is_refused_by_name(tmp_path, bad):
    with pytest.raises(ValueError, match="style|background_pool"):
        write_synthetic_dataset(tmp_path, SynthSpec(num_train=1, num_val=1, num_frames=4, size=16, **bad))
