"""Tests for the synthetic action data set (cmae.data.synth)."""
from __future__ import annotations

import colorsys
import dataclasses
import json
from pathlib import Path

import av
import numpy as np
import pytest

from cmae.data.synth import (
    COLOR_CLASSES,
    MOTION_CLASSES,
    OBJECT_CLASSES,
    SCENE_CLASSES,
    SynthSpec,
    background_textures,
    render_clip,
    sample_and_render,
    sample_clip,
    write_synthetic_dataset,
)

TINY = SynthSpec(num_train=16, num_val=8, num_frames=8, size=32, fps=8, seed=3)


def _read_list(path: Path) -> list[tuple[str, int]]:
    rows = []
    for line in path.read_text().splitlines():
        rel, label = line.split(" ")
        rows.append((rel, int(label)))
    return rows


def _decode(path: Path) -> np.ndarray:
    """All frames of an mp4 as uint8 [T, H, W, 3]."""
    with av.open(str(path)) as container:
        return np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])


@pytest.fixture(scope="module")
def tiny(tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("synth")
    return out, write_synthetic_dataset(out, TINY)


def test_files_and_list_formats(tiny):
    out, summary = tiny
    assert (out / "classes.txt").read_text().splitlines() == list(MOTION_CLASSES)
    assert (out / "object_classes.txt").read_text().splitlines() == list(OBJECT_CLASSES)
    assert len(MOTION_CLASSES) == 8 and len(OBJECT_CLASSES) == 5
    meta = json.loads((out / "meta.json").read_text())
    assert meta["spec"] == json.loads(json.dumps(dataclasses.asdict(TINY)))  # tuples come back as lists
    assert summary["counts"] == {"train": 16, "val": 8}

    for split, count in (("train", TINY.num_train), ("val", TINY.num_val)):
        motion = _read_list(out / f"{split}.txt")
        shapes = _read_list(out / f"{split}_object.txt")
        assert Path(summary["lists"][split]) == out / f"{split}.txt"
        assert len(motion) == len(shapes) == count
        assert [p for p, _ in motion] == [p for p, _ in shapes] == [f"videos/{split}/{i:05d}.mp4" for i in range(count)]
        assert all(0 <= y < len(MOTION_CLASSES) for _, y in motion)
        assert all(0 <= y < len(OBJECT_CLASSES) for _, y in shapes)
        for suffix, classes in (("_color", COLOR_CLASSES), ("_scene", SCENE_CLASSES)):
            labels = _read_list(out / f"{split}{suffix}.txt")
            assert [p for p, _ in labels] == [p for p, _ in motion]
            assert all(0 <= y < len(classes) for _, y in labels)
        assert all((out / p).is_file() for p, _ in motion)  # paths are relative to the list's folder
    assert {y for _, y in _read_list(out / "train.txt")} == set(range(8))
    assert not list(out.rglob("*.tmp"))  # temp files were all renamed


def test_mp4_files_are_h264(tiny):
    out, _ = tiny
    for rel, _ in _read_list(out / "train.txt")[:4] + _read_list(out / "val.txt")[:2]:
        with av.open(str(out / rel)) as container:
            stream = container.streams.video[0]
            assert stream.codec_context.name == "h264"
            frames = list(container.decode(video=0))
        assert len(frames) == TINY.num_frames
        assert all((f.width, f.height) == (TINY.size, TINY.size) for f in frames)


def test_deterministic_and_seeded(tiny, tmp_path):
    out, _ = tiny
    same = write_synthetic_dataset(tmp_path / "same", TINY)
    for name in ("train.txt", "val.txt", "train_object.txt", "val_object.txt"):
        assert (out / name).read_bytes() == Path(same["lists"][name[:-4]]).read_bytes()
    clips = [f"videos/train/{i:05d}.mp4" for i in range(0, 16, 5)] + ["videos/val/00007.mp4"]
    for rel in clips:
        np.testing.assert_array_equal(_decode(out / rel), _decode(tmp_path / "same" / rel))

    # Clip i does not depend on how many clips are generated.
    fewer = dataclasses.replace(TINY, num_train=6, num_val=2)
    write_synthetic_dataset(tmp_path / "fewer", fewer)
    for rel in ("videos/train/00005.mp4", "videos/val/00001.mp4"):
        np.testing.assert_array_equal(_decode(out / rel), _decode(tmp_path / "fewer" / rel))

    # A different seed changes the pictures; train and val are different streams.
    write_synthetic_dataset(tmp_path / "other", dataclasses.replace(TINY, num_val=1, seed=4))
    rel = "videos/train/00000.mp4"
    assert not np.array_equal(_decode(out / rel), _decode(tmp_path / "other" / rel))
    assert not np.array_equal(_decode(out / rel), _decode(out / "videos/val/00000.mp4"))


def test_rewrite_overwrites_list_files(tmp_path):
    spec = dataclasses.replace(TINY, num_train=8, num_val=2)
    write_synthetic_dataset(tmp_path, spec)
    write_synthetic_dataset(tmp_path, dataclasses.replace(spec, num_train=3))
    assert len(_read_list(tmp_path / "train.txt")) == 3
    assert len(_read_list(tmp_path / "train_object.txt")) == 3


def test_bad_spec_raises(tmp_path):
    with pytest.raises(ValueError):
        write_synthetic_dataset(tmp_path, dataclasses.replace(TINY, size=33))


def _clean_render(motion: int, seed: int, size: int = 64, frames: int = 8):
    """Render only the main object, white with a pure red marking, on black; return the
    params and per-frame object centroid [T, 2], area [T] and marking centroid [T, 2]."""
    p = sample_clip(motion, np.random.default_rng(seed), frames, size)
    obj = dataclasses.replace(p.obj, color=(255, 255, 255), mark_color=(255, 0, 0))
    video = render_clip(dataclasses.replace(p, obj=obj, distractors=[], texture=None)).astype(int)
    ys, xs = np.mgrid[0:size, 0:size]
    body = video.max(-1) > 100
    mark = (video[..., 0] > 150) & (video[..., 1] < 60)
    centroid = np.stack([[(xs * m).sum() / m.sum(), (ys * m).sum() / m.sum()] for m in body])
    mark_c = np.stack([[(xs * m).sum() / m.sum(), (ys * m).sum() / m.sum()] for m in mark])
    return p, centroid, body.sum((1, 2)), mark_c


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_motion_is_what_is_rendered(seed):
    """Measured on rendered pixels: translations move the object's centroid the right way,
    grow/shrink change its area, rotations turn the marking the right way (y points down,
    so clockwise on screen is an increasing image-space angle)."""
    expected_move = {"move_left": (0, -1), "move_right": (0, 1), "move_up": (1, -1), "move_down": (1, 1)}
    for motion, name in enumerate(MOTION_CLASSES):
        p, centroid, area, mark = _clean_render(motion, seed)
        step = np.diff(centroid, axis=0)  # [T-1, 2]
        if name in expected_move:
            axis, sign = expected_move[name]
            assert np.all(sign * step[:, axis] > 0), name
            assert sign * (centroid[-1, axis] - centroid[0, axis]) > 0.15 * 64, name
            assert np.abs(centroid[:, 1 - axis] - centroid[0, 1 - axis]).max() < 1.0, name
            continue
        assert np.abs(centroid - p.obj.center).max() < 1.5, name  # stays in place
        if name in ("grow", "shrink"):
            assert np.all((1 if name == "grow" else -1) * np.diff(area) > 0), name
            assert max(area[0], area[-1]) > 1.8 * min(area[0], area[-1]), name
        else:
            rel = mark - p.obj.center
            theta = np.unwrap(np.arctan2(rel[:, 1], rel[:, 0]))
            sign = 1 if name == "rotate_cw" else -1
            assert np.all(sign * np.diff(theta) > 0), name
            turned = p.obj.angle[-1] - p.obj.angle[0]
            assert sign * turned > 0.5 * np.pi and abs(theta[-1] - theta[0] - turned) < 0.35, name


def test_single_frame_does_not_give_away_the_class():
    """Per-frame size (grow vs shrink) and position (left vs right) ranges overlap at every
    frame index, and a good share of clips lie in the overlap; shapes do not depend on class."""
    T, n = 16, 150

    def sample(motion: int):
        return [sample_clip(motion, np.random.default_rng(10_000 * motion + s), T, 64) for s in range(n)]

    pairs = [
        (sample(MOTION_CLASSES.index("grow")), sample(MOTION_CLASSES.index("shrink")), lambda p: p.obj.radius),
        (sample(MOTION_CLASSES.index("move_right")), sample(MOTION_CLASSES.index("move_left")),
         lambda p: p.obj.center[:, 0]),
    ]
    for a_clips, b_clips, value in pairs:
        a = np.stack([value(p) for p in a_clips])  # [n, T]
        b = np.stack([value(p) for p in b_clips])
        lo, hi = np.maximum(a.min(0), b.min(0)), np.minimum(a.max(0), b.max(0))  # [T] overlap interval
        assert np.all(hi > lo)
        for x in (a, b):
            inside = ((x >= lo) & (x <= hi)).mean(0)  # [T] fraction of clips in the overlap
            assert inside.min() > 0.2
        for clips in (a_clips, b_clips):
            assert {p.obj.shape for p in clips} == set(range(len(OBJECT_CLASSES)))


def test_background_drift_and_distractors_are_options():
    rng = np.random.default_rng(0)
    plain = sample_clip(0, rng, num_frames=8, size=32, background_drift=0.0, distractors=0)
    assert plain.distractors == [] and np.allclose(plain.bg_offset, plain.bg_offset[0])
    busy = sample_clip(0, np.random.default_rng(0), num_frames=8, size=32, background_drift=0.3, distractors=3)
    assert 1 <= len(busy.distractors) <= 3 and not np.allclose(busy.bg_offset, busy.bg_offset[0])
    # a clean object label: every distractor takes the main object's shape, nothing else changes
    for seed in range(20):
        mixed = sample_clip(0, np.random.default_rng(seed), num_frames=8, size=32, distractors=3)
        clean = sample_clip(0, np.random.default_rng(seed), num_frames=8, size=32, distractors=3,
                            same_shape_distractors=True)
        assert all(d.shape == clean.obj.shape for d in clean.distractors)
        assert [d.color for d in clean.distractors] == [d.color for d in mixed.distractors]
        assert np.array_equal(clean.obj.center, mixed.obj.center)
        # a clean colour label: distractors take the main object's colours, shapes stay as drawn
        same_color = sample_clip(0, np.random.default_rng(seed), num_frames=8, size=32, distractors=3,
                                 same_color_distractors=True)
        assert all((d.color, d.mark_color, d.hue_class) == (same_color.obj.color, same_color.obj.mark_color,
                                                            same_color.obj.hue_class) for d in same_color.distractors)
        assert [d.shape for d in same_color.distractors] == [d.shape for d in mixed.distractors]
        assert same_color.obj.color == mixed.obj.color and same_color.scene == mixed.scene
        # the colour label is the body's hue bin (up to the 8-bit rounding of the colour)
        hue = colorsys.rgb_to_hsv(*(c / 255 for c in mixed.obj.color))[0] * len(COLOR_CLASSES)
        assert min(abs(hue - mixed.obj.hue_class - offset) for offset in (0.5, 0.5 + len(COLOR_CLASSES))) <= 0.52


def test_a_background_pool_shares_textures_and_keeps_every_other_draw():
    spec = SynthSpec(num_frames=8, size=32, background_pool=3)
    pool = background_textures(spec)
    assert len(pool) == 3 and background_textures(SynthSpec()) == []
    seen = set()
    for seed in range(20):
        own = sample_clip(seed % 8, np.random.default_rng(seed), num_frames=8, size=32)
        pooled = sample_clip(seed % 8, np.random.default_rng(seed), num_frames=8, size=32, texture_pool=pool)
        assert np.array_equal(own.obj.center, pooled.obj.center) and own.obj.color == pooled.obj.color
        assert np.array_equal(own.bg_offset, pooled.bg_offset) and pooled.texture.shape == own.texture.shape
        index = next(k for k, (texture, _) in enumerate(pool)
                     if np.array_equal(texture[: pooled.texture.shape[0], : pooled.texture.shape[1]], pooled.texture))
        assert pooled.scene == pool[index][1]
        seen.add(index)
        render_clip(pooled)
    assert seen == {0, 1, 2}


def test_a_background_light_brightens_the_background_under_the_objects():
    spec = SynthSpec(num_frames=8, size=32, distractors=0)
    params, plain = sample_and_render(spec, 0, np.random.default_rng(5), [])
    lit_params, lit = sample_and_render(dataclasses.replace(spec, background_light=110), 0, np.random.default_rng(5), [])
    assert np.array_equal(params.obj.center, lit_params.obj.center) and np.array_equal(params.texture, lit_params.texture)
    body = np.all(plain == np.array(params.obj.color, np.uint8), axis=-1)  # [T, H, W] the object's own pixels
    assert body.any() and np.all(lit[body] == plain[body])  # the object keeps its colour
    # elsewhere the frames differ by one grey plane, the same in every frame although the texture drifts
    added = lit.astype(float) - plain.astype(float)
    black = dataclasses.replace(params.obj, color=(0, 0, 0), mark_color=(0, 0, 0))
    background = np.all(render_clip(dataclasses.replace(params, obj=black)) == plain, -1)  # the object never drew here
    assert np.abs(added[..., 0] - added[..., 2])[background].max() <= 1
    yy, xx = np.broadcast_arrays(*np.mgrid[0:32, 0:32][:, None], added[..., 0])[:2]
    design = np.stack([np.ones(background.sum()), xx[background], yy[background]], 1)
    fit, *_ = np.linalg.lstsq(design, added[..., 0][background], rcond=None)
    assert np.abs(added[..., 0][background] - design @ fit).max() <= 1.5  # a linear ramp, up to rounding
    assert abs(np.hypot(*fit[1:]) * 32 * np.sqrt(2) - 110) < 3  # of 110 levels per diagonal of the frame
    # light from above (rising towards -y, as y points down): the same draws, the ramp turned to 270 degrees
    from_above = dataclasses.replace(spec, background_light=110, background_light_angle=(270, 270))
    above_params, above = sample_and_render(from_above, 0, np.random.default_rng(5), [])
    assert np.array_equal(above_params.texture, params.texture)
    gain = above.astype(float) - plain.astype(float)
    top, bottom = gain[:, :8, :, 0][background[:, :8]], gain[:, -8:, :, 0][background[:, -8:]]
    assert top.mean() > bottom.mean() + 50  # about 80 levels apart: 110 / sqrt(2) over 3/4 of the frame
    with pytest.raises(ValueError, match="background_light_angle low <= high"):
        write_synthetic_dataset("unused", dataclasses.replace(spec, background_light_angle=(300, 240)))
    with pytest.raises(ValueError, match="background_light are options of the shapes style"):
        write_synthetic_dataset("unused", SynthSpec(style="camera", background_light=10))
    with pytest.raises(ValueError, match="background_light <= 255"):
        write_synthetic_dataset("unused", dataclasses.replace(spec, background_light=300))
