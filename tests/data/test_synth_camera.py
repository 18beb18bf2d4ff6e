"""Tests for the camera style of the synthetic data (cmae.data.synth_camera): the scene moves as its label."""
from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from cmae.data.shapes import MOTION_CLASSES, SUPERSAMPLE
from cmae.data.synth import SynthSpec, sample_and_render, write_synthetic_dataset
from cmae.data.synth_camera import render_camera_clip, sample_camera_clip, smooth_leaves


def _track(motion: int, seed: int, size: int = 64, motion_scale: float = 1.0) -> np.ndarray:
    """[T, 2] screen position (x, y, pixels, y down) of the world point seen 16 px right of and 8 px below the
    frame's centre at frame 0: the canvas is replaced by a map of world coordinates, the objects moved away."""
    p = sample_camera_clip(motion, np.random.default_rng(seed), 8, size, distractors=0, motion_scale=motion_scale)
    side = p.texture.shape[0]
    yy, xx = np.mgrid[0:side, 0:side]
    coords = np.zeros((side, side, 3), np.uint8)
    coords[..., 0], coords[..., 1] = (xx * 255 / side).round(), (yy * 255 / side).round()
    away = dataclasses.replace(p.obj, center=np.full_like(p.obj.center, -10 * size))
    video = render_camera_clip(dataclasses.replace(p, obj=away, texture=coords)).astype(float)
    target = video[0, size // 2 + 8, size // 2 + 16, :2]
    error = ((video[..., :2] - target) ** 2).sum(-1)  # [T, H, W]
    flat = error.reshape(len(video), -1).argmin(1)
    return np.stack([flat % size, flat // size], 1).astype(float) - size / 2


@pytest.mark.parametrize("seed", [0, 1])
def test_the_scene_moves_as_its_label(seed):
    for motion, name in enumerate(MOTION_CLASSES):
        path = _track(motion, seed)
        start, end = path[0], path[-1]
        if name.startswith("move"):
            axis, sign = {"move_left": (0, -1), "move_right": (0, 1), "move_up": (1, -1), "move_down": (1, 1)}[name]
            assert sign * (end - start)[axis] > 8, (name, path)
        elif name.startswith("rotate"):  # y down: clockwise on screen is increasing atan2(y, x)
            turn = np.angle(np.exp(1j * (np.arctan2(end[1], end[0]) - np.arctan2(start[1], start[0]))))
            assert (1 if name == "rotate_cw" else -1) * turn > 0.4, (name, path)
        else:
            growth = np.hypot(*end) / np.hypot(*start)
            assert (growth > 1.15) if name == "grow" else (growth < 1 / 1.15), (name, path)


def test_leaves_cover_the_canvas_and_are_large():
    canvas = smooth_leaves(np.random.default_rng(0), 192, 64, 0)
    assert canvas.shape == (192, 192, 3) and canvas.dtype == np.uint8
    # ramps, not flat colours: neighbouring pixels differ a little almost everywhere, a lot only at edges
    step = np.abs(np.diff(canvas.astype(int), axis=1)).sum(-1)
    assert (step > 0).mean() > 0.5 and (step > 60).mean() < 0.1


def test_write_camera_style(tmp_path):
    spec = SynthSpec(num_train=8, num_val=8, num_frames=8, size=32, style="camera")
    summary = write_synthetic_dataset(tmp_path, spec)
    assert summary["counts"] == {"train": 8, "val": 8}
    labels = [int(line.split()[1]) for line in (tmp_path / "train.txt").read_text().splitlines()]
    assert labels == list(range(8))
    with pytest.raises(ValueError, match="background_pool"):
        write_synthetic_dataset(tmp_path, dataclasses.replace(spec, background_pool=2))
    _, frames = sample_and_render(spec, 0, np.random.default_rng(0), [])
    assert frames.shape == (8, 32, 32, 3) and SUPERSAMPLE == 2


def test_flat_leaves_and_a_screen_fixed_light():
    flat = smooth_leaves(np.random.default_rng(0), 192, 64, 0, shade_range=(0.0, 0.0))
    step = np.abs(np.diff(flat.astype(int), axis=1)).sum(-1)
    assert (step > 0).mean() < 0.1  # one colour per leaf: pixels change only at the edges
    spec = SynthSpec(num_frames=8, size=32, style="camera", leaf_shade=(0.0, 0.0))
    params, plain = sample_and_render(spec, 0, np.random.default_rng(3), [])
    lit_params, lit = sample_and_render(dataclasses.replace(spec, light=0.5), 0, np.random.default_rng(3), [])
    assert np.array_equal(params.bg_offset, lit_params.bg_offset)  # the light draws after every other draw
    # the ratio lit / plain is one plane, the same in every frame, of slope 0.5 per half diagonal of the frame
    ratio = (lit.astype(float) + 0.5) / (plain.astype(float) + 0.5)
    keep = (plain > 40) & (lit < 250)
    yy, xx = np.broadcast_arrays(*np.mgrid[0:32, 0:32][:, None, :, :, None], ratio)[:2]
    design = np.stack([np.ones(keep.sum()), xx[keep], yy[keep]], 1)
    fit, *_ = np.linalg.lstsq(design, ratio[keep], rcond=None)
    residual = ratio[keep] - design @ fit
    assert residual.std() < 0.05 and 0.45 < np.hypot(*fit[1:]) * 16 * np.sqrt(2) < 0.55
    with pytest.raises(ValueError, match="leaf_shade, leaf_outline and motion_scale are options"):
        write_synthetic_dataset("unused", SynthSpec(leaf_shade=(0.0, 0.0)))
    with pytest.raises(ValueError, match="light >= 0"):
        write_synthetic_dataset("unused", dataclasses.replace(spec, light=-1.0))


def test_motion_scale_multiplies_the_camera_travel():
    left = MOTION_CLASSES.index("move_left")  # the tracked point starts right of the centre: room to travel
    base, faster = (_track(left, 0, motion_scale=scale) for scale in (1.0, 2.0))
    travel, faster_travel = base[0, 0] - base[-1, 0], faster[0, 0] - faster[-1, 0]
    assert travel > 8 and 1.6 < faster_travel / travel < 2.4  # the drift (not scaled) and pixel rounding: the rest
    with pytest.raises(ValueError, match="motion_scale"):
        write_synthetic_dataset("unused", SynthSpec(style="camera", motion_scale=4.0))


def test_leaf_outline_draws_a_dark_rim_around_every_leaf():
    plain = smooth_leaves(np.random.default_rng(0), 192, 64, 0, shade_range=(0.0, 0.0)).astype(int)
    rimmed = smooth_leaves(np.random.default_rng(0), 192, 64, 0, shade_range=(0.0, 0.0), outline=0.03).astype(int)
    changed = (rimmed != plain).any(-1)
    assert 0.02 < changed.mean() < 0.5  # thin rims, not whole leaves
    assert (rimmed.sum(-1)[changed] < plain.sum(-1)[changed]).all()  # every changed pixel is darker
    assert (rimmed.sum(-1)[changed] <= 0.2 * 3 * 255 + 3).all()  # RIM_DARKNESS of a leaf colour (at most 0.8 x 255)
    edges = (np.abs(np.diff(plain, axis=1)).sum(-1) > 0)  # where two flat leaves meet
    assert (changed[:, 1:] | changed[:, :-1])[edges].mean() > 0.95  # a rim on one side of every boundary
    spec = SynthSpec(num_frames=8, size=32, style="camera")
    params, _ = sample_and_render(spec, 0, np.random.default_rng(3), [])
    rim_params, _ = sample_and_render(dataclasses.replace(spec, leaf_outline=0.02), 0, np.random.default_rng(3), [])
    assert np.array_equal(params.bg_offset, rim_params.bg_offset)  # the rim draws nothing at random
    with pytest.raises(ValueError, match="leaf_outline <= 0.1"):
        write_synthetic_dataset("unused", dataclasses.replace(spec, leaf_outline=0.5))
    with pytest.raises(ValueError, match="leaf_outline"):
        write_synthetic_dataset("unused", SynthSpec(leaf_outline=0.02))
