"""Seeded synthetic *action* data set, written as real H.264 mp4 files.

Every clip shows one bright main object performing one of 8 motions (the label) over a
dark, textured, drifting background with 1-3 smaller distractors moving at random.
Appearance (shape, colours, size, background, distractors) is drawn independently
of the motion, and trajectories are parametrised around the *middle* frame with
wide start ranges, so no single frame reveals the class: the signal is the motion.

Appearance labels, one list each: the main object's shape (`*_object.txt`), its hue bin
(`*_color.txt`) and the background's pattern (`*_scene.txt`). Distractors draw their own
shape and colours, which makes the first two ambiguous on a frame, unless
`same_shape_distractors` / `same_color_distractors` give them the main object's.

That is the flat `style="shapes"` drawn here (the default, and the demo's data); `style="natural"`
(`cmae.data.synth_natural`) draws the same classes with textured objects over dead leaves, and
`style="camera"` (`cmae.data.synth_camera`) as the whole scene's motion over large shaded leaves.

Clip ``i`` of a split is rendered from ``np.random.default_rng(split_seed + i)``, so
it does not depend on how many clips are generated. Train and val use disjoint
seed streams (``seed + i`` and ``seed + 1_000_000 + i``).
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from cmae.data.shapes import (
    COLOR_CLASSES,
    MOTION_CLASSES,
    OBJECT_CLASSES,
    SCENE_CLASSES,
    SUPERSAMPLE,
    VAL_SEED_OFFSET,
    ClipParams,
    Sprite,
    draw_sprite,
    random_colors,
)
from cmae.data.synth_camera import ramp_plane, render_camera_clip, sample_camera_clip
from cmae.data.synth_natural import NATURAL_SCENE_CLASSES, render_natural_clip, sample_natural_clip

__all__ = ["COLOR_CLASSES", "MOTION_CLASSES", "OBJECT_CLASSES", "SCENE_CLASSES", "STYLES", "VAL_SEED_OFFSET",
           "ClipParams", "Sprite", "SynthSpec", "background_textures", "render_clip", "sample_clip", "scene_classes",
           "write_mp4", "write_synthetic_dataset"]
STYLES = ("camera", "natural", "shapes")


@dataclass
class SynthSpec:
    num_train: int = 400
    num_val: int = 160
    num_frames: int = 16
    size: int = 64  # square frames, size x size pixels (must be even for yuv420p)
    fps: int = 8
    seed: int = 0
    background_drift: float = 0.3  # largest background travel over a clip, as a fraction of the frame
    distractors: int = 3  # largest number of distractor objects (at least 1 when > 0)
    # distractors of the main object's shape keep the object label clean (a frame shows one shape);
    # false draws each distractor's shape at random
    same_shape_distractors: bool = False
    # distractors in the main object's colours keep the colour label clean (a frame shows one hue)
    same_color_distractors: bool = False
    object_size: tuple[float, float] = (0.11, 0.22)  # main object's mid-clip circumradius range, fraction of the frame
    # > 0: every clip's background is one of this many shared textures (train and val alike), so a background
    # no longer identifies a clip; 0: each clip draws its own. Every other draw of a clip stays the same.
    background_pool: int = 0
    # natural: textured objects over dead leaves under 1/f noise, accelerating (cmae.data.synth_natural);
    # shapes: flat bright shapes over a dark low-contrast texture (this module; the demo's data);
    # camera: the class is the scene's pan, roll or zoom (cmae.data.synth_camera; the same_* options do not apply)
    style: str = "shapes"
    crf: int = 20  # x264's constant rate factor: lower keeps more detail (and codec noise less of a target)
    # > 0: every frame lit by one screen-fixed linear ramp of random direction per clip, brightness changing by
    # light per half diagonal of the frame (1 +- light at two corners when the ramp runs diagonally): a pattern
    # that every patch's normalised target shares, which copying the visible tokens predicts (docs/results.md,
    # issue 33); 0: none, and every other draw of a clip stays the same
    light: float = 0.0
    leaf_shade: tuple[float, float] = (0.3, 0.6)  # camera: range of each leaf's own ramp strength; (0, 0): flat leaves
    # camera: every travel, turn and zoom of the camera and the objects times this (a pan of 0.25-0.45 frames at 1)
    motion_scale: float = 1.0
    # camera: > 0 gives every leaf a dark rim this fraction of a frame wide (fixed edge polarity; docs/results.md)
    leaf_outline: float = 0.0
    # shapes: > 0 adds to the background (not the objects) a screen-fixed linear grey ramp of random direction,
    # rising by up to this many levels (of 255) across the frame: a pattern every background patch's normalised
    # target shares, like `light`, but under the objects, so they stay brighter than any background and keep their
    # contrast (fixed polarity; docs/results.md, issue 33); 0: none, and every other draw stays the same
    background_light: float = 0.0
    # shapes: the range of the direction, in degrees, in which the background light rises (0: to the right, 90: down,
    # as y points down; 240-300: light from above, as outdoors); (0, 360): any direction
    background_light_angle: tuple[float, float] = (0.0, 360.0)


def scene_classes(style: str) -> tuple[str, ...]:
    """The names of the `*_scene.txt` labels: the background's pattern (shapes) or leaf shape (natural)."""
    return SCENE_CLASSES if style == "shapes" else NATURAL_SCENE_CLASSES


def sample_and_render(spec: SynthSpec, motion: int, rng: np.random.Generator,
                      pool: list[tuple[np.ndarray, int]]) -> tuple[ClipParams, np.ndarray]:
    """One clip of `spec`'s style: its parameters and its frames [T, size, size, 3] uint8."""
    args = (motion, rng, spec.num_frames, spec.size, spec.background_drift, spec.distractors,
            spec.same_shape_distractors, tuple(spec.object_size), spec.same_color_distractors)
    if spec.style == "camera":
        params = sample_camera_clip(motion, rng, spec.num_frames, spec.size, spec.distractors, tuple(spec.object_size),
                                    tuple(spec.leaf_shade), spec.motion_scale, spec.leaf_outline)
        frames = render_camera_clip(params)
    elif spec.style == "natural":
        params = sample_natural_clip(*args)
        frames = render_natural_clip(params)
    else:
        params = sample_clip(*args, pool)
        if spec.background_light:  # drawn last: every other draw of the clip stays the same
            params.light = background_ramp(spec.size, spec.background_light,
                                           rng.uniform(*np.deg2rad(spec.background_light_angle)))
        frames = render_clip(params)
    return params, light_frames(frames, spec.light, rng) if spec.light else frames


def light_frames(frames: np.ndarray, light: float, rng: np.random.Generator) -> np.ndarray:
    """`frames` [T, H, W, 3] uint8 times one screen-fixed ramp along a random direction, 1 at the frame's centre
    and 1 +- light half a diagonal away: the same for every frame, so it does not move with the scene."""
    shade = 1 + light * diagonal_ramp(frames.shape[1], rng.uniform(0, 2 * np.pi))  # frames are square
    return np.clip(frames * shade[None, ..., None], 0, 255).astype(np.uint8)


def diagonal_ramp(side: int, angle: float) -> np.ndarray:
    """`[side, side]` a linear ramp rising along direction `angle` (radians, y down), -1 to 1 from corner to corner
    along a diagonal."""
    return ramp_plane(side, angle) / np.sqrt(2)


def background_ramp(size: int, levels: float, angle: float) -> np.ndarray:
    """`[2 size, 2 size]` (supersampled) grey levels of a screen-fixed linear ramp rising along direction `angle`,
    within 0..`levels` (the whole range when it runs along a diagonal)."""
    return levels * (diagonal_ramp(size * SUPERSAMPLE, angle) + 1) / 2


def _texture(rng: np.random.Generator, side: int) -> tuple[np.ndarray, int]:
    """Random background [side, side, 3] uint8 (at supersampled resolution): smooth noise,
    stripes or checker (the returned SCENE_CLASSES index), plus some smooth noise, mapped
    between two low-contrast colours."""
    yy, xx = np.mgrid[0:side, 0:side] / SUPERSAMPLE  # in output pixels
    kind = rng.integers(3)
    cells = int(rng.integers(3, 9))
    noise = np.asarray(Image.fromarray(rng.random((cells, cells)).astype(np.float32), "F")
                       .resize((side, side), Image.BICUBIC))
    if kind == 0:
        pattern = noise
    elif kind == 1:
        phi, period = rng.uniform(0, np.pi), rng.uniform(5, 14)
        pattern = 0.5 + 0.5 * np.sin(2 * np.pi * (xx * np.cos(phi) + yy * np.sin(phi)) / period)
    else:
        period = rng.uniform(4, 10)
        pattern = ((xx // period + yy // period) % 2).astype(np.float32)
    tex = np.clip(0.7 * pattern + 0.3 * noise, 0, 1)[..., None]
    # Dark (at most 102 of 255) and of bounded contrast, so the bright objects stand out.
    c1 = rng.uniform(0, 102, 3)
    c2 = np.clip(c1 + rng.uniform(-36, 36, 3), 0, 102)
    return (c1 + (c2 - c1) * tex).astype(np.uint8), int(kind)


def sample_clip(motion: int, rng: np.random.Generator, num_frames: int = 16, size: int = 64,
                background_drift: float = 0.3, distractors: int = 3,
                same_shape_distractors: bool = False,
                object_size: tuple[float, float] = (0.11, 0.22),
                same_color_distractors: bool = False,
                texture_pool: list[tuple[np.ndarray, int]] | None = None) -> ClipParams:
    """Draw the random parameters of one clip of class ``motion`` (no rendering). With a
    `texture_pool` (`background_textures`) the background is one of its textures, chosen last."""
    T, L = num_frames, float(size)
    tc = np.arange(T) / (T - 1) - 0.5  # [T] time in [-0.5, 0.5], 0 at the middle frame
    name = MOTION_CLASSES[motion]

    # Background drifts in a random direction with a random speed, independent of the class.
    direction = rng.uniform(0, 2 * np.pi)
    drift = rng.uniform(1 / 6, 1.0) * background_drift * L * np.array([np.cos(direction), np.sin(direction)])
    margin = int(np.ceil(np.abs(drift).max())) + 1
    texture, scene = _texture(rng, (size + 2 * margin) * SUPERSAMPLE)
    bg_offset = margin + drift * tc[:, None]

    # Main object: mid-clip radius and centre are class-independent; the motion spreads the
    # frame-0 values of the classes in opposite directions but the ranges still overlap.
    r_mid = rng.uniform(*object_size) * L
    radius = np.full(T, r_mid)
    angle = np.full(T, rng.uniform(0, 2 * np.pi))
    center = np.tile(rng.uniform(0.3, 0.7, 2) * L, (T, 1))
    if name.startswith("move"):
        travel = rng.uniform(0.25, 0.45) * L  # total displacement over the clip
        axis, sign = {"move_left": (0, -1), "move_right": (0, 1), "move_up": (1, -1), "move_down": (1, 1)}[name]
        mid = rng.uniform(travel / 2 + 0.12 * L, L - travel / 2 - 0.12 * L)  # keeps the centre in frame
        center[:, axis] = mid + sign * travel * tc
    elif name.startswith("rotate"):
        turn = rng.uniform(0.6, 1.2) * np.pi  # total; << pi per frame, so the direction is unambiguous
        angle = angle + (1 if name == "rotate_cw" else -1) * turn * tc
    else:
        factor = rng.uniform(1.4, 1.8)  # ratio of last to first radius
        radius = r_mid * factor ** ((1 if name == "grow" else -1) * tc)
    body, mark, hue_class = random_colors(rng)
    obj = Sprite(int(rng.integers(len(OBJECT_CLASSES))), body, mark, center, angle, radius, hue_class)

    # Distractors: smaller than the main object ever gets, random translation/rotation/scaling.
    sprites = []
    for _ in range(int(rng.integers(1, distractors + 1)) if distractors > 0 else 0):
        mid, travel = rng.uniform(0.1, 0.9, 2) * L, rng.uniform(-0.4, 0.4, 2) * L
        r = rng.uniform(0.035, 0.06) * L * rng.uniform(0.8, 1.25) ** (2 * tc)
        ang = rng.uniform(0, 2 * np.pi) + rng.uniform(-1.2, 1.2) * np.pi * tc
        body, mark, hue_class = random_colors(rng)
        shape = int(rng.integers(len(OBJECT_CLASSES)))  # drawn either way: the other draws stay the same
        if same_color_distractors:
            body, mark, hue_class = obj.color, obj.mark_color, obj.hue_class
        sprites.append(Sprite(obj.shape if same_shape_distractors else shape, body, mark,
                              mid + travel * tc[:, None], ang, r, hue_class))

    if texture_pool:  # a shared texture, cut to this clip's size (pool textures have the largest margin)
        pooled, scene = texture_pool[int(rng.integers(len(texture_pool)))]
        texture = pooled[: texture.shape[0], : texture.shape[1]]
    return ClipParams(motion, size, obj, sprites, texture, bg_offset, scene)


POOL_SEED_OFFSET = 7_000_000


def background_textures(spec: SynthSpec) -> list[tuple[np.ndarray, int]]:
    """The `spec.background_pool` shared backgrounds (texture, scene index), each as large as the
    largest drift needs; empty when the pool is off."""
    margin = int(np.ceil(spec.background_drift * spec.size)) + 1
    return [_texture(np.random.default_rng(spec.seed + POOL_SEED_OFFSET + k), (spec.size + 2 * margin) * SUPERSAMPLE)
            for k in range(spec.background_pool)]


def render_clip(params: ClipParams) -> np.ndarray:
    """Render a clip to uint8 frames [T, size, size, 3]. A ``None`` texture gives a black background."""
    n, big = params.size, params.size * SUPERSAMPLE
    frames = np.empty((params.num_frames, n, n, 3), np.uint8)
    for t in range(params.num_frames):
        if params.texture is None:
            img = Image.new("RGB", (big, big))
        else:
            x0, y0 = np.round(params.bg_offset[t] * SUPERSAMPLE).astype(int)
            img = Image.fromarray(params.texture[y0:y0 + big, x0:x0 + big])
        if params.light is not None:  # under the sprites: they keep their colours
            img = Image.fromarray(np.clip(np.asarray(img) + params.light[..., None], 0, 255).astype(np.uint8))
        draw = ImageDraw.Draw(img)
        for sprite in [*params.distractors, params.obj]:  # main object last: never occluded
            draw_sprite(draw, sprite, t)
        frames[t] = np.asarray(img.resize((n, n), Image.BOX))
    return frames


def write_mp4(path: str | Path, frames: np.ndarray, fps: int, crf: int = 20) -> None:
    """Encode frames [T, H, W, 3] uint8 as H.264/yuv420p; written to a temp name, then renamed."""
    import av  # here, not at the top: rendering alone (e.g. benchmarks/gpu_check.py) runs without PyAV

    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with av.open(str(tmp), "w", format="mp4") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = frames.shape[2], frames.shape[1], "yuv420p"
        # Short GOP (cheap seeking), no B-frames, one thread. mbtree off: with it, x264 encoded
        # identical tiny (32x32) clips differently from run to run (~1 in 6 files) in testing.
        stream.options = {"crf": str(crf), "preset": "fast",
                          "x264-params": "keyint=8:min-keyint=8:scenecut=0:bframes=0:threads=1:mbtree=0"}
        for t, rgb in enumerate(frames):
            frame = av.VideoFrame.from_ndarray(rgb, format="rgb24")
            frame.pts = t
            container.mux(stream.encode(frame))
        container.mux(stream.encode())
    os.replace(tmp, path)


def _write_text(path: Path, lines: list[str]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(line + "\n" for line in lines))
    os.replace(tmp, path)


def write_synthetic_dataset(out_dir: str | Path, spec: SynthSpec | None = None, progress: bool = False) -> dict:
    """Writes out_dir/videos/{train,val}/NNNNN.mp4 and the list files; returns a summary dict
    (counts per split, class names, paths of list files). Existing files are overwritten."""
    spec = SynthSpec() if spec is None else spec
    if spec.size % 2 or spec.size < 16 or spec.num_frames < 4:
        raise ValueError(f"need an even size >= 16 and num_frames >= 4, got {spec}")
    if spec.style not in STYLES:
        raise ValueError(f"unknown synthetic style {spec.style!r}; choose one of {', '.join(STYLES)}")
    if spec.style != "shapes" and (spec.background_pool or spec.background_light):
        raise ValueError("background_pool and background_light are options of the shapes style only")
    if not 0 <= spec.background_light <= 255:
        raise ValueError(f"need 0 <= background_light <= 255 (grey levels), got {spec.background_light}")
    low, high = spec.background_light_angle
    if not 0 <= high - low <= 360:
        raise ValueError(f"need background_light_angle low <= high <= low + 360 (degrees), got {(low, high)}")
    if spec.light < 0 or not 0 <= spec.leaf_shade[0] <= spec.leaf_shade[1]:
        raise ValueError(f"need light >= 0 and 0 <= leaf_shade low <= high, got light={spec.light}, "
                         f"leaf_shade={spec.leaf_shade}")
    if spec.style != "camera" and (tuple(spec.leaf_shade) != SynthSpec.leaf_shade or spec.motion_scale != 1.0
                                   or spec.leaf_outline):
        raise ValueError("leaf_shade, leaf_outline and motion_scale are options of the camera style only")
    if not 0 <= spec.leaf_outline <= 0.1:
        raise ValueError(f"need 0 <= leaf_outline <= 0.1 (a fraction of the frame), got {spec.leaf_outline}")
    if not 0 < spec.motion_scale <= 3:  # the world canvas has room for 3x the widest pan (past 2, the widest
        # zoom-outs of a turned frame can reach its corners)
        raise ValueError(f"need 0 < motion_scale <= 3, got {spec.motion_scale}")
    scenes = scene_classes(spec.style)
    out = Path(out_dir)
    splits = {"train": (spec.num_train, spec.seed), "val": (spec.num_val, spec.seed + VAL_SEED_OFFSET)}
    summary: dict = {"out_dir": str(out), "motion_classes": list(MOTION_CLASSES),
                     "object_classes": list(OBJECT_CLASSES), "color_classes": list(COLOR_CLASSES),
                     "scene_classes": list(scenes), "counts": {}, "lists": {}}
    total = spec.num_train + spec.num_val
    bar = None
    if progress:
        from tqdm import tqdm
        bar = tqdm(total=total, desc="synth", unit="clip")
    pool = background_textures(spec)
    for split, (count, split_seed) in splits.items():
        (out / "videos" / split).mkdir(parents=True, exist_ok=True)
        lines: dict[str, list[str]] = {"": [], "_object": [], "_color": [], "_scene": []}
        for i in range(count):
            params, frames = sample_and_render(spec, i % len(MOTION_CLASSES), np.random.default_rng(split_seed + i), pool)
            rel = f"videos/{split}/{i:05d}.mp4"
            write_mp4(out / rel, frames, spec.fps, spec.crf)
            for suffix, label in (("", params.motion), ("_object", params.obj.shape),
                                  ("_color", params.obj.hue_class), ("_scene", params.scene)):
                lines[suffix].append(f"{rel} {label}")
            if bar is not None:
                bar.update()
        for suffix, split_lines in lines.items():
            _write_text(out / f"{split}{suffix}.txt", split_lines)
            summary["lists"][split + suffix] = str(out / f"{split}{suffix}.txt")
        summary["counts"][split] = count
    if bar is not None:
        bar.close()
    _write_text(out / "classes.txt", list(MOTION_CLASSES))
    _write_text(out / "object_classes.txt", list(OBJECT_CLASSES))
    _write_text(out / "color_classes.txt", list(COLOR_CLASSES))
    _write_text(out / "scene_classes.txt", list(scenes))
    meta = {"spec": asdict(spec), "val_seed_offset": VAL_SEED_OFFSET, "codec": "h264", "pix_fmt": "yuv420p",
            "counts": summary["counts"], "motion_classes": list(MOTION_CLASSES),
            "object_classes": list(OBJECT_CLASSES), "color_classes": list(COLOR_CLASSES),
            "scene_classes": list(scenes), "lists": {k: Path(v).name for k, v in summary["lists"].items()},
            "labels": ("<path> <label>; motion class index in train/val.txt, shape index in *_object.txt, "
                       "main object's hue bin in *_color.txt, background pattern index in *_scene.txt")}
    _write_text(out / "meta.json", [json.dumps(meta, indent=2)])
    return summary
