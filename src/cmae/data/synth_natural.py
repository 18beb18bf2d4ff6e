"""The naturalistic style of `cmae synth` (`SynthSpec.style="natural"`, `cmae synth --style natural`).

The same 8 motion classes as the flat style (`cmae.data.synth`, still the default), drawn the way
the published anchors say generated video teaches: Baradad et al. 2021 (dead-leaves images with 1/f texture
teach where flat shapes do not) and Yu, Chen, Gandelsman 2024 (moving, transforming and
*accelerating* shapes, then textures). Every pixel carries structure, so that per-patch
normalised targets are the scene and not the codec's noise (`benchmarks/synth_targets.py`
measures both styles):

- the background is a dead-leaves image (leaves of one shape family, the scene label, with
  power-law radii, weakly saturated colours of any brightness) under 1/f noise, seen by a camera
  that pans with a random velocity *and acceleration*, independent of the class;
- the main object and 1-3 smaller distractors are shapes filled with their own 1/f texture in a
  saturated hue (the colour label) of random brightness, so an edge's contrast polarity is
  random and a moving edge's sign of change does not give the direction away to a linear map
  of two frames (the motion has to be matched, as in natural video);
- the main object's motion (the label) has a random acceleration and a small drift that no
  class owns: only its direction of travel, turn or growth, read across frames, is the class.

Measured (docs/results.md, "What the demo data's targets are made of"): codec noise is 8 % of the
channel-normalised target here against 46 % in the flat style, and a random encoder no longer
reads the motion (chance); but the demo's `videomae` does not learn it either at the demo's
budget (loss 0.993 after 300 steps, motion at chance): not yet the demo's data.
"""
from __future__ import annotations

import colorsys
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw

from cmae.data.shapes import (
    COLOR_CLASSES,
    MOTION_CLASSES,
    OBJECT_CLASSES,
    SHAPE_OUTLINES,
    SUPERSAMPLE,
    ClipParams,
    Sprite,
    draw_marking,
    sprite_outline,
    sprite_pose,
)

# The background's leaf shapes: the scene label of the natural style.
NATURAL_SCENE_CLASSES: tuple[str, ...] = ("discs", "squares", "triangles")
LEAF_OUTLINES = (SHAPE_OUTLINES["circle"], SHAPE_OUTLINES["square"], SHAPE_OUTLINES["triangle"])
_TEXTURE_SIDE = 96  # a sprite's texture, pixels, covering [-TEXTURE_EXTENT, TEXTURE_EXTENT]^2 of its unit frame
_TEXTURE_EXTENT = 1.2


@dataclass
class TexturedSprite(Sprite):
    """A sprite filled with its own texture `[K, K, 3]` uint8 (drawn in its unit frame)."""
    texture: np.ndarray | None = None


def pink_noise(rng: np.random.Generator, side: int, exponent: float = 1.0) -> np.ndarray:
    """`[side, side]` float noise of amplitude spectrum 1/f**exponent (1: natural images'), zero mean, unit std."""
    f = np.hypot(*np.meshgrid(np.fft.fftfreq(side), np.fft.fftfreq(side), indexing="ij"))
    spectrum = np.fft.fft2(rng.standard_normal((side, side))) / np.maximum(f, 1.0 / side) ** exponent
    x = np.fft.ifft2(spectrum).real
    return (x - x.mean()) / (x.std() + 1e-12)


def dead_leaves(rng: np.random.Generator, side: int, leaf: int) -> np.ndarray:
    """A dead-leaves image `[side, side, 3]` uint8: leaves of outline `leaf` (NATURAL_SCENE_CLASSES), radii
    with density ~ r**-3 (scale invariant), colours of any hue and brightness and low saturation (the objects'
    hues stay theirs), each leaf at a random angle, under weak 1/f luminance noise."""
    lo, hi = side / 20, side / 2.5
    count = 400  # scale invariant: covers the canvas about four times over at any side
    radii = (lo ** -2 - rng.random(count) * (lo ** -2 - hi ** -2)) ** -0.5  # inverse CDF of r**-3 on [lo, hi]
    centres, angles = rng.uniform(-hi, side + hi, (count, 2)), rng.uniform(0, 2 * np.pi, count)
    # HSV -> RGB for every leaf at once (PIL's conversion): any hue and brightness, low saturation
    hsv = np.stack([rng.random(count + 1), rng.uniform(0, 0.35, count + 1), rng.uniform(0.08, 0.92, count + 1)], -1)
    colors = np.asarray(Image.fromarray((255 * hsv).round().astype(np.uint8)[None], "HSV").convert("RGB"))[0]
    rot = np.stack([np.stack([np.cos(angles), -np.sin(angles)], -1), np.stack([np.sin(angles), np.cos(angles)], -1)], -2)
    outlines = np.einsum("pk,njk->npj", LEAF_OUTLINES[leaf], rot) * radii[:, None, None] + centres[:, None]
    image = Image.new("RGB", (side, side), tuple(colors[-1].tolist()))
    draw = ImageDraw.Draw(image)
    for outline, color in zip(outlines.reshape(count, -1).tolist(), colors[:-1].tolist(), strict=True):
        draw.polygon(outline, fill=tuple(color))  # drawn back to front: the last leaves lie on top
    shade = 1 + 0.15 * pink_noise(rng, side, 1.5)[..., None]
    return np.clip(np.asarray(image, np.float32) * shade, 0, 255).astype(np.uint8)


def object_colors(rng: np.random.Generator) -> tuple[np.ndarray, tuple[int, int, int], int, tuple[int, int, int]]:
    """A sprite's textured body: 1/f luminance around a random brightness in a saturated random hue.
    Returns (texture [K, K, 3] uint8, mean body colour, hue bin, marking colour)."""
    h, s, v = rng.random(), rng.uniform(0.6, 1.0), rng.uniform(0.35, 0.9)
    value = np.clip(v + 0.15 * pink_noise(rng, _TEXTURE_SIDE, 1.5), 0.05, 1.0)[..., None]
    texture = (255 * value * np.asarray(colorsys.hsv_to_rgb(h, s, 1.0))).round().astype(np.uint8)
    body = tuple(round(255 * c) for c in colorsys.hsv_to_rgb(h, s, v))
    # The marking contrasts with the body whatever its brightness: rotation stays visible.
    mark = tuple(round(255 * c) for c in colorsys.hsv_to_rgb((h + 0.5) % 1, 1.0, 0.12 if v > 0.6 else 0.95))
    return texture, body, int(h * len(COLOR_CLASSES)) % len(COLOR_CLASSES), mark


def profile(tc: np.ndarray, acceleration: float) -> np.ndarray:
    """`tc + a (tc^2 - 1/12)`: travel over normalised time tc in [-0.5, 0.5] with a constant acceleration,
    mean zero over the clip and monotone for |a| < 1 (so the direction of travel never reverses)."""
    return tc + acceleration * (tc ** 2 - 1 / 12)


def drift_path(rng: np.random.Generator, reach: float, tc: np.ndarray) -> np.ndarray:
    """[T, 2] an accelerating path of random direction that travels at most about `reach` pixels."""
    direction = rng.uniform(0, 2 * np.pi)
    path = rng.uniform(0, reach) * profile(tc, rng.uniform(-0.9, 0.9))
    return path[:, None] * np.array([np.cos(direction), np.sin(direction)])


def sample_natural_clip(motion: int, rng: np.random.Generator, num_frames: int = 16, size: int = 64,
                        background_drift: float = 0.3, distractors: int = 3, same_shape_distractors: bool = False,
                        object_size: tuple[float, float] = (0.11, 0.22),
                        same_color_distractors: bool = False) -> ClipParams:
    """Draw one clip of class `motion` (no rendering); `sample_clip`'s arguments, without a texture pool."""
    T, L = num_frames, float(size)
    tc = np.arange(T) / (T - 1) - 0.5
    name = MOTION_CLASSES[motion]

    camera = drift_path(rng, background_drift * L, tc)  # the camera pans, accelerating, whatever the class
    margin = int(np.ceil(np.abs(camera).max())) + 1
    scene = int(rng.integers(len(NATURAL_SCENE_CLASSES)))
    background = dead_leaves(rng, (size + 2 * margin) * SUPERSAMPLE, scene)

    r_mid, accel = rng.uniform(*object_size) * L, rng.uniform(-0.8, 0.8)
    radius, angle = np.full(T, r_mid), np.full(T, rng.uniform(0, 2 * np.pi))
    center = rng.uniform(0.3, 0.7, 2) * L + drift_path(rng, 0.08 * L, tc)  # a small drift no class owns
    if name.startswith("move"):
        travel = rng.uniform(0.25, 0.45) * L
        axis, sign = {"move_left": (0, -1), "move_right": (0, 1), "move_up": (1, -1), "move_down": (1, 1)}[name]
        reach = travel * (0.5 + abs(accel) / 6) + 0.12 * L
        center[:, axis] = rng.uniform(reach, L - reach) + sign * travel * profile(tc, accel)
    elif name.startswith("rotate"):
        angle = angle + (1 if name == "rotate_cw" else -1) * rng.uniform(0.6, 1.2) * np.pi * profile(tc, accel)
    else:
        radius = r_mid * rng.uniform(1.4, 1.8) ** ((1 if name == "grow" else -1) * profile(tc, accel))
    texture, body, hue, mark = object_colors(rng)
    obj = TexturedSprite(int(rng.integers(len(OBJECT_CLASSES))), body, mark, center, angle, radius, hue, texture)

    sprites = []
    for _ in range(int(rng.integers(1, distractors + 1)) if distractors > 0 else 0):
        path = rng.uniform(0.1, 0.9, 2) * L + drift_path(rng, 0.5 * L, tc)
        r = rng.uniform(0.035, 0.06) * L * rng.uniform(0.8, 1.25) ** (2 * tc)
        ang = rng.uniform(0, 2 * np.pi) + rng.uniform(-1.2, 1.2) * np.pi * profile(tc, rng.uniform(-0.8, 0.8))
        d_texture, d_body, d_hue, d_mark = object_colors(rng)
        shape = int(rng.integers(len(OBJECT_CLASSES)))
        if same_color_distractors:  # the object's hue and saturation, a texture of its own
            d_texture, d_body, d_hue, d_mark = _tinted_like(obj, rng), obj.color, obj.hue_class, obj.mark_color
        sprites.append(TexturedSprite(obj.shape if same_shape_distractors else shape, d_body, d_mark, path, ang, r,
                                      d_hue, d_texture))
    return ClipParams(motion, size, obj, sprites, background, margin + camera, scene)


def _tinted_like(obj: TexturedSprite, rng: np.random.Generator) -> np.ndarray:
    """A fresh 1/f texture in `obj`'s colour (its mean body colour modulated like `object_colors`')."""
    value = np.clip(1 + 0.3 * pink_noise(rng, _TEXTURE_SIDE, 1.5), 0.1, 2.0)[..., None]
    return np.clip(value * np.asarray(obj.color, np.float32), 0, 255).round().astype(np.uint8)


def paste_sprite(image: Image.Image, s: TexturedSprite, t: int) -> None:
    """Draw `s` at frame t: its texture mapped through its pose, cut by its outline, then its marking."""
    big = image.size[0]
    c, rot, r = sprite_pose(s, t)
    mask = Image.new("L", image.size)
    ImageDraw.Draw(mask).polygon(sprite_outline(s, c, rot, r), fill=255)
    # output pixel p -> unit frame q = rot^T (p - c) / r -> texture pixel q * K / (2 extent) + K / 2
    k = s.texture.shape[0]
    inverse = rot.T * (k / (2 * _TEXTURE_EXTENT * r))
    offset = k / 2 - inverse @ c
    layer = Image.fromarray(s.texture).transform(
        (big, big), Image.AFFINE, (inverse[0, 0], inverse[0, 1], offset[0], inverse[1, 0], inverse[1, 1], offset[1]),
        resample=Image.BILINEAR)
    image.paste(layer, (0, 0), mask)
    draw_marking(ImageDraw.Draw(image), s, c, rot, r)


def render_natural_clip(params: ClipParams) -> np.ndarray:
    """Render a natural-style clip to uint8 frames [T, size, size, 3]."""
    n, big = params.size, params.size * SUPERSAMPLE
    frames = np.empty((params.num_frames, n, n, 3), np.uint8)
    for t in range(params.num_frames):
        x0, y0 = np.round(params.bg_offset[t] * SUPERSAMPLE).astype(int)
        image = Image.fromarray(params.texture[y0:y0 + big, x0:x0 + big])
        for sprite in [*params.distractors, params.obj]:  # main object last: never occluded
            paste_sprite(image, sprite, t)
        frames[t] = np.asarray(image.resize((n, n), Image.BOX))
    return frames
