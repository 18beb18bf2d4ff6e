"""The camera style of `cmae synth` (`SynthSpec.style="camera"`): the label is how the whole scene moves.

The same 8 motion classes as the other styles, read as the scene's motion on screen: the camera pans
(the content moves left, right, up or down), rolls (the content turns clockwise or anticlockwise) or
zooms (it grows or shrinks), with a random acceleration and a small drift that no class owns. Objects
move on their own, at random, over it: the main object's shape and hue are the object and colour
labels, the leaves' shape the scene label.

Why the scene and not one object: under VideoMAE's tube masks a masked patch is hidden at every time
step, and what makes it predictable is the content that moved through it, seen elsewhere: the scene's
motion is what every patch's reconstruction needs (and so what every token, mean-pooled, carries), not
the concern of the few patches one object covers. The scene is drawn to be predictable at the scale of
a patch (Baradad et al. 2021's dead leaves, with Yu, Chen, Gandelsman 2024's accelerating motion): few,
large leaves, each a smooth colour ramp, so a patch's normalised pixels are a ramp or an edge that its
neighbours and its motion determine, and not noise (`benchmarks/synth_targets.py`).
"""
from __future__ import annotations

import colorsys

import numpy as np
from PIL import Image, ImageDraw

from cmae.data.shapes import COLOR_CLASSES, MOTION_CLASSES, OBJECT_CLASSES, SUPERSAMPLE, ClipParams
from cmae.data.synth_natural import (
    LEAF_OUTLINES,
    NATURAL_SCENE_CLASSES,
    TexturedSprite,
    drift_path,
    paste_sprite,
    profile,
)

_CANVAS = 3.0  # the world canvas' side in frames: room for the widest pan, zoom-out and roll
_RAMP_SIDE = 64
# Leaf radii as fractions of a frame's side. Measured (docs/results.md): with (0.1, 0.67) a patch's normalised
# target correlates 0.08 with its neighbour's, with these 0.24 (0.006 in the shapes style)
LEAF_RADII = (0.25, 1.2)
LEAF_SHADE = (0.3, 0.6)
RIM_DARKNESS = 0.2  # a leaf's outline (`outline` > 0): its own colour times this, darker than any leaf


def ramp_plane(side: int, angle: float) -> np.ndarray:
    """`[side, side]` each pixel centre's position along direction `angle`, with x and y in -1..1 across the image."""
    yy, xx = (np.mgrid[0:side, 0:side] + 0.5) / side * 2 - 1
    return xx * np.cos(angle) + yy * np.sin(angle)


def ramp(rng: np.random.Generator, side: int, rgb: np.ndarray, strength: tuple[float, float]) -> np.ndarray:
    """`[side, side, 3]` float image: colour `rgb` (0-255) times a linear ramp of random direction that
    changes brightness by a factor drawn from `strength` from the image's centre to its edge."""
    a = rng.uniform(0, 2 * np.pi)
    shade = 1 + rng.uniform(*strength) * ramp_plane(side, a)
    return shade[..., None] * rgb


def _leaf_color(rng: np.random.Generator) -> np.ndarray:
    """[3] float RGB (0-255) of any hue, moderate saturation and brightness."""
    return 255 * np.asarray(colorsys.hsv_to_rgb(rng.random(), rng.uniform(0.15, 0.8), rng.uniform(0.2, 0.8)),
                            np.float32)


def smooth_leaves(rng: np.random.Generator, side: int, frame: int, leaf: int,
                  radii_range: tuple[float, float] = LEAF_RADII,
                  shade_range: tuple[float, float] = LEAF_SHADE, outline: float = 0.0) -> np.ndarray:
    """A dead-leaves canvas `[side, side, 3]` uint8 of large leaves of outline `leaf` (radii in `radii_range`
    times a `frame`'s side, density ~ r**-3), each a colour ramp of random hue and brightness whose strength
    (brightness change from the leaf's centre to its edge) is drawn from `shade_range`; (0, 0): flat leaves.
    `outline` > 0: each leaf has a dark rim this fraction of a frame wide (its colour times RIM_DARKNESS), so every
    visible leaf boundary is a dark line whatever the colours on its two sides: a moving edge's temporal change
    has one sign on its leading side (fixed polarity; random leaf colours give each edge a random one)."""
    lo, hi = frame * radii_range[0], frame * radii_range[1]
    mean_area = np.pi * 2 * lo ** 2 * np.log(hi / lo) / (1 - (lo / hi) ** 2)  # E[pi r^2] under r**-3
    count = int(3 * (side + 2 * hi) ** 2 / mean_area)  # about three layers of leaves at every point
    radii = (lo ** -2 - rng.random(count) * (lo ** -2 - hi ** -2)) ** -0.5
    centres, angles = rng.uniform(-hi, side + hi, (count, 2)), rng.uniform(0, 2 * np.pi, count)
    canvas = ramp(rng, side, _leaf_color(rng), shade_range).astype(np.float32)  # under every leaf
    for r, (cx, cy), a in zip(radii, centres, angles, strict=True):
        x0, y0 = max(int(cx - r), 0), max(int(cy - r), 0)  # the leaf's bounding box, cut to the canvas
        x1, y1 = min(int(cx + r) + 2, side), min(int(cy + r) + 2, side)
        if x1 <= x0 or y1 <= y0:
            continue
        rot = np.array([[np.cos(a), -np.sin(a)], [np.sin(a), np.cos(a)]])
        mask = Image.new("L", (x1 - x0, y1 - y0))
        points = [tuple(p) for p in LEAF_OUTLINES[leaf] @ rot.T * r + (cx - x0, cy - y0)]
        ImageDraw.Draw(mask).polygon(points, fill=255)
        inside = np.asarray(mask) > 0
        yy, xx = np.nonzero(inside)
        d = rng.uniform(0, 2 * np.pi)
        shade = 1 + rng.uniform(*shade_range) * ((xx + x0 - cx) * np.cos(d) + (yy + y0 - cy) * np.sin(d)) / r
        color = _leaf_color(rng)
        canvas[y0:y1, x0:x1][inside] = shade[:, None] * color
        if outline > 0:  # the rim: the polygon's outline, inside the leaf (no draws: outline 0 leaves clips as before)
            rim = Image.new("L", mask.size)
            ImageDraw.Draw(rim).polygon(points, outline=255, width=max(1, round(2 * outline * frame)))
            canvas[y0:y1, x0:x1][inside & (np.asarray(rim) > 0)] = RIM_DARKNESS * color
    return np.clip(canvas, 0, 255).astype(np.uint8)


def _sprite(rng: np.random.Generator, L: float, tc: np.ndarray, size: tuple[float, float],
            motion_scale: float = 1.0) -> TexturedSprite:
    """A ramp-shaded object of random shape and saturated hue that moves, turns and scales at random (its travel
    and turn times `motion_scale`)."""
    h, s, v = rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.35, 0.9)
    texture = np.clip(ramp(rng, _RAMP_SIDE, 255 * np.asarray(colorsys.hsv_to_rgb(h, s, v)), (0.3, 0.6)), 0, 255)
    mark = tuple(round(255 * c) for c in colorsys.hsv_to_rgb((h + 0.5) % 1, 1.0, 0.12 if v > 0.6 else 0.95))
    direction = rng.uniform(0, 2 * np.pi)
    travel = rng.uniform(0, 0.4 * L) * motion_scale * profile(tc, rng.uniform(-0.9, 0.9))
    path = rng.uniform(0.2, 0.8, 2) * L + travel[:, None] * np.array([np.cos(direction), np.sin(direction)])
    radius = rng.uniform(*size) * L * rng.uniform(0.8, 1.25) ** (2 * tc)
    angle = rng.uniform(0, 2 * np.pi) + rng.uniform(-1, 1) * np.pi * motion_scale * profile(tc, rng.uniform(-0.8, 0.8))
    body = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))
    return TexturedSprite(int(rng.integers(len(OBJECT_CLASSES))), body, mark, path, angle, radius,
                          int(h * len(COLOR_CLASSES)) % len(COLOR_CLASSES), texture.astype(np.uint8))


def sample_camera_clip(motion: int, rng: np.random.Generator, num_frames: int = 16, size: int = 64,
                       distractors: int = 3, object_size: tuple[float, float] = (0.11, 0.22),
                       leaf_shade: tuple[float, float] = LEAF_SHADE, motion_scale: float = 1.0,
                       leaf_outline: float = 0.0) -> ClipParams:
    """Draw one clip whose scene moves as class `motion` (no rendering); every travel, turn and zoom of the camera
    and the objects (not the small drift) is `motion_scale` times the drawn one. `bg_offset` holds the camera per
    frame as rows (x, y, zoom, roll): the world point at the frame's centre, its magnification, its angle."""
    T, L = num_frames, float(size)
    tc = np.arange(T) / (T - 1) - 0.5
    name, accel = MOTION_CLASSES[motion], rng.uniform(-0.8, 0.8)
    course = motion_scale * profile(tc, accel)  # [T] the class's travel over the clip, mean zero
    side = int(_CANVAS * size)
    centre = side / 2 + rng.uniform(-0.05, 0.05, 2) * L
    drift = drift_path(rng, 0.06 * L, tc)
    pan = drift  # [T, 2] the content's travel on screen, pixels
    camera = np.zeros((T, 4))
    camera[:, 2], camera[:, 3] = 1.0, rng.uniform(0, 2 * np.pi)
    if name.startswith("move"):
        axis, sign = {"move_left": (0, -1), "move_right": (0, 1), "move_up": (1, -1), "move_down": (1, 1)}[name]
        pan[:, axis] += sign * rng.uniform(0.25, 0.45) * L * course
    elif name.startswith("rotate"):  # content turning clockwise = the camera rolling anticlockwise
        camera[:, 3] -= (1 if name == "rotate_cw" else -1) * rng.uniform(0.3, 0.6) * np.pi * course
    else:
        camera[:, 2] = rng.uniform(1.4, 1.8) ** ((1 if name == "grow" else -1) * course)
    # content moving by `pan` on screen = the camera's centre moving by -R(roll) pan / zoom in the world
    cos, sin = np.cos(camera[:, 3]), np.sin(camera[:, 3])
    camera[:, 0] = centre[0] - (cos * pan[:, 0] - sin * pan[:, 1]) / camera[:, 2]
    camera[:, 1] = centre[1] - (sin * pan[:, 0] + cos * pan[:, 1]) / camera[:, 2]
    scene = int(rng.integers(len(NATURAL_SCENE_CLASSES)))
    canvas = smooth_leaves(rng, side * SUPERSAMPLE, size * SUPERSAMPLE, scene, shade_range=leaf_shade,
                           outline=leaf_outline)
    obj = _sprite(rng, L, tc, object_size, motion_scale)
    sprites = [_sprite(rng, L, tc, (0.05, 0.09), motion_scale) for _ in range(int(rng.integers(0, distractors + 1)))]
    return ClipParams(motion, size, obj, sprites, canvas, camera, scene)


def render_camera_clip(params: ClipParams) -> np.ndarray:
    """Render a camera-style clip to uint8 frames [T, size, size, 3]."""
    n, big = params.size, params.size * SUPERSAMPLE
    canvas = Image.fromarray(params.texture)
    frames = np.empty((params.num_frames, n, n, 3), np.uint8)
    for t, (x, y, zoom, roll) in enumerate(params.bg_offset):
        # output pixel p -> world w = c + R(roll) (p - big/2) / zoom (PIL's AFFINE takes that inverse map)
        m = np.array([[np.cos(roll), -np.sin(roll)], [np.sin(roll), np.cos(roll)]]) / zoom
        offset = np.array([x, y]) * SUPERSAMPLE - m @ np.full(2, big / 2)
        image = canvas.transform((big, big), Image.AFFINE, (m[0, 0], m[0, 1], offset[0], m[1, 0], m[1, 1], offset[1]),
                                 resample=Image.BILINEAR)
        for sprite in [*params.distractors, params.obj]:
            paste_sprite(image, sprite, t)
        frames[t] = np.asarray(image.resize((n, n), Image.BOX))
    return frames
