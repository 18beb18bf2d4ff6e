"""Views: how one decoded sample becomes the tensors a method consumes.

A view builder gets an open reader (a video, or an image as a one-frame video) and
returns a dict of float tensors `[C, T, H, W]`. `data.views` picks the builder by name;
a method states which keys it needs, and never opens a file itself.

A training view works in two steps, so that several samples of one video (`data.repeat`)
share one decoding pass: `plan(source)` draws which frames a sample needs (its temporal
position), `render(frames, plan)` draws the rest (crop, flip, colour) and builds the
tensors; `render_views` decodes the union of the plans' frames once.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torchvision import transforms as v1_transforms
from torchvision import tv_tensors
from torchvision.transforms import v2

from cmae.config import ConfigError, DataConfig


class FrameSource(Protocol):
    num_frames: int

    def get_frames(self, indices: Sequence[int]) -> torch.Tensor:  # uint8 [T, C, H, W]
        ...


@dataclass
class Plan:
    """One sample's frame indices into its video, and what else `render` needs to know."""

    indices: list[int]
    shift: int = 0  # temporal_shift: the target's offset in frames
    image: bool = False  # frame_pair: the source is an image (two augmentations of one frame)


class TrainView:
    """`plan` + `render`; calling the view renders one sample."""

    def plan(self, source: FrameSource) -> Plan:
        raise NotImplementedError

    def render(self, frames: torch.Tensor, plan: Plan) -> dict[str, torch.Tensor | int]:
        raise NotImplementedError

    def __call__(self, source: FrameSource) -> dict[str, torch.Tensor | int]:
        return render_views(self, source)[0]


def render_views(view: TrainView, source: FrameSource, count: int = 1) -> list[dict[str, torch.Tensor | int]]:
    """`count` samples of one source: every plan first, then one `get_frames` over the sorted
    union of their frames (a reader decodes it in one pass), then each sample from its frames."""
    plans = [view.plan(source) for _ in range(count)]
    wanted = sorted({index for plan in plans for index in plan.indices})
    frames = source.get_frames(wanted)
    row = {index: k for k, index in enumerate(wanted)}
    return [view.render(frames[[row[i] for i in plan.indices]], plan) for plan in plans]


def randint(low: int, high: int) -> int:
    """Uniform integer in [low, high] from torch's RNG (seeded per DataLoader worker)."""
    return int(torch.randint(low, high + 1, ()).item())


def clip_span(num_frames: int, rate: int) -> int:
    """Source frames a clip of `num_frames` at stride `rate` covers, first to last."""
    return (num_frames - 1) * rate + 1


def clip_indices(video_frames: int, num_frames: int, rate: int, start: int | None = None) -> list[int]:
    """Frame indices start + k*rate, k = 0..num_frames-1, with a random start when none is given.

    A video shorter than the clip's span is covered evenly instead (the stride shrinks),
    so a one-frame source (an image) gives num_frames copies of frame 0.
    """
    span = clip_span(num_frames, rate)
    if video_frames < span:
        return torch.linspace(0, video_frames - 1, num_frames).round().long().tolist()
    if start is None:
        start = randint(0, video_frames - span)
    return [start + k * rate for k in range(num_frames)]


def segment_indices(video_frames: int, num_frames: int, view: int | None = None, views: int = 1) -> list[int]:
    """TSN's sampling, VideoMAE's for SSv2: the video cut into `num_frames` equal segments and one
    frame taken from each, so a clip spans the whole video. Training (`view` None): a random frame
    of each segment; test view k of `views`: the frame k / views of the way into each segment (2
    views: the segments' starts and middles, as VideoMAE's SSv2 test). A video of fewer frames
    than the clip is covered evenly (VideoMAE's code repeats its first frame)."""
    if video_frames < num_frames:
        return clip_indices(video_frames, num_frames, 1)
    if view is None:
        length = video_frames // num_frames
        return [k * length + randint(0, length - 1) for k in range(num_frames)]
    tick = video_frames / num_frames
    return [min(int(tick * (k + view / views)), video_frames - 1) for k in range(num_frames)]


def dense_only(config: DataConfig, sampler: str) -> None:
    if config.temporal_sampling != "dense":
        raise ConfigError(f"data.temporal_sampling={config.temporal_sampling} is for single clips (fine-tuning, "
                          f"evaluation, data.views=clip); the {sampler} views sample densely: set it to dense")


def eval_short_side(config: DataConfig) -> int:
    """Short side of a test view before its crop: image_size / data.test_crop_ratio."""
    return round(config.image_size / config.test_crop_ratio)


def normalization(config: DataConfig) -> v2.Compose:
    """uint8 -> float in [0, 1] -> (x - mean) / std per channel: the last step of every view."""
    return v2.Compose([v2.ToDtype(torch.float32, scale=True), v2.Normalize(config.mean, config.std)])


class EraseClip:
    """VideoMAE's fine-tuning random erasing (its random_erasing.py as its data sets call it: 'cube'
    mode, 'pixel' fill, one box): with probability p a normalised `Video` `[T, C, H, W]` loses one
    box of 2-33 % of the frame area (aspect 0.3-3.3), at the same place in every frame, filled with
    fresh N(0, 1) noise per frame and pixel; up to 100 draws for a box that fits."""

    def __init__(self, p: float):
        self.p = p

    def __call__(self, video: torch.Tensor) -> torch.Tensor:
        if float(torch.rand(())) >= self.p:
            return video
        frames = video.as_subclass(torch.Tensor).clone()
        height, width = frames.shape[-2:]
        for _ in range(100):
            area = height * width * float(torch.empty(()).uniform_(0.02, 1 / 3))
            aspect = math.exp(float(torch.empty(()).uniform_(math.log(0.3), math.log(1 / 0.3))))
            h, w = round(math.sqrt(area * aspect)), round(math.sqrt(area / aspect))
            if h < height and w < width:
                top, left = randint(0, height - h), randint(0, width - w)
                frames[..., top:top + h, left:left + w] = torch.randn(*frames.shape[:2], h, w)
                return tv_tensors.wrap(frames, like=video)
        return video


def spatial_transform(config: DataConfig, train: bool, randaug: tuple[int, int] | None = None,
                      erase: float = 0.0) -> v2.Compose:
    """Crop/flip drawn once per call and applied to every frame of a `Video`, then normalise.

    Train: random resized crop (scale `data.crop_scale`), horizontal flip and, for
    fine-tuning, RandAugment (num_ops, magnitude), one draw per clip, and after normalising,
    random erasing of the clip with probability `erase`. Eval: resize the short side (to
    `eval_short_side`) and centre-crop.
    """
    size = config.image_size
    if train:
        geometric = [v2.RandomResizedCrop(size, scale=tuple(config.crop_scale), ratio=tuple(config.crop_ratio))]
        if config.hflip:
            geometric.append(v2.RandomHorizontalFlip())
        if randaug is not None and randaug[0] > 0:
            # 11 bins: magnitude m is m/10 of each op's range, as timm's rand-m9 (torchvision's default
            # 31 bins would make m9 less than a third as strong).
            geometric.append(v2.RandAugment(num_ops=randaug[0], magnitude=randaug[1], num_magnitude_bins=11))
    else:
        geometric = [v2.Resize(eval_short_side(config)), v2.CenterCrop(size)]
    erasing = [EraseClip(erase)] if train and erase > 0 else []
    return v2.Compose([*geometric, normalization(config), *erasing])


def as_clip(video: torch.Tensor) -> torch.Tensor:
    """A (transformed) `Video` `[T, C, H, W]` -> plain clip tensor `[C, T, H, W]`."""
    return video.as_subclass(torch.Tensor).permute(1, 0, 2, 3).contiguous()


def to_clip(frames: torch.Tensor, transform: Callable) -> torch.Tensor:
    """uint8 frames `[T, C, H, W]` -> transformed float clip `[C, T, H, W]`."""
    return as_clip(transform(tv_tensors.Video(frames)))


class ClipView(TrainView):
    """One clip of `num_frames` frames at `sampling_rate` -> {"video": [C, T, H, W]}."""

    def __init__(self, config: DataConfig, train: bool = True, randaug: tuple[int, int] | None = None,
                 erase: float = 0.0):
        self.num_frames = config.num_frames
        self.rate = config.sampling_rate
        self.segments = config.temporal_sampling == "segment"
        self.transform = spatial_transform(config, train, randaug, erase)

    def plan(self, source: FrameSource) -> Plan:
        if self.segments:
            return Plan(segment_indices(source.num_frames, self.num_frames))
        return Plan(clip_indices(source.num_frames, self.num_frames, self.rate))

    def render(self, frames: torch.Tensor, plan: Plan) -> dict[str, torch.Tensor]:
        return {"video": to_clip(frames, self.transform)}


def color_augmentation(image_size: int) -> v2.Compose:
    """CMAE's target-view colour recipe, drawn once per clip: jitter (0.4, 0.4, 0.4, 0.1)
    with p 0.8, grayscale p 0.2, Gaussian blur sigma in [0.1, 2] with p 0.5 (kernel ~10 %
    of the image side, BYOL's 23 px at 224)."""
    kernel = max(3, int(0.1 * image_size) // 2 * 2 + 1)
    return v2.Compose([
        v2.RandomApply([v2.ColorJitter(0.4, 0.4, 0.4, 0.1)], p=0.8),
        v2.RandomGrayscale(p=0.2),
        v2.RandomApply([v2.GaussianBlur(kernel, sigma=(0.1, 2.0))], p=0.5),
    ])


def shifted_box(box: tuple[int, int, int, int], max_shift: int, height: int, width: int) -> tuple[int, int, int, int]:
    """CMAE's pixel shift: move a (top, left, h, w) crop by up to `max_shift` px, kept inside the frame."""
    top, left, h, w = box
    top = min(max(top + randint(-max_shift, max_shift), 0), height - h)
    left = min(max(left + randint(-max_shift, max_shift), 0), width - w)
    return top, left, h, w


class TemporalShiftViews(TrainView):
    """CMAE-V's temporal shift (§3) -> {"video": online, "target": target, "shift": delta}.

    The online clip has frames t1 + k*r, the target t1 + k*r + delta with delta ~ U{0..p}
    (`data.max_shift`); t1 leaves room for the largest delta when the video is long enough,
    otherwise target frames are clamped at the video's last frame. Both share one random resized
    crop and flip (optionally CMAE's pixel shift moves the target's crop by up to
    `data.pixel_shift` px); colour augmentation, the same for all its frames, goes to the
    target only. Clips are `[C, T, H, W]`.
    """

    def __init__(self, config: DataConfig, train: bool = True):
        dense_only(config, "temporal_shift")
        self.num_frames, self.rate = config.num_frames, config.sampling_rate
        self.max_shift, self.pixel_shift = config.max_shift, config.pixel_shift
        self.size, self.hflip = config.image_size, config.hflip
        self.crop = v1_transforms.RandomResizedCrop(config.image_size, tuple(config.crop_scale), tuple(config.crop_ratio))
        self.color = color_augmentation(config.image_size) if config.target_color else v2.Identity()
        self.normalize = normalization(config)

    def crop_and_flip(self, frames: torch.Tensor, box: tuple[int, int, int, int], flip: bool) -> torch.Tensor:
        video = v2.functional.resized_crop(tv_tensors.Video(frames), *box, [self.size, self.size], antialias=True)
        return v2.functional.horizontal_flip(video) if flip else video

    def plan(self, source: FrameSource) -> Plan:
        # Leave room for the largest shift when the video has it, so the target is not
        # clamped onto repeated last frames; shorter videos clamp.
        room = source.num_frames - clip_span(self.num_frames, self.rate) - self.max_shift
        online = clip_indices(source.num_frames, self.num_frames, self.rate, randint(0, room) if room >= 0 else None)
        shift = randint(0, self.max_shift)
        target = [min(index + shift, source.num_frames - 1) for index in online]
        return Plan(online + target, shift=shift)  # one decode for both clips

    def render(self, frames: torch.Tensor, plan: Plan) -> dict[str, torch.Tensor | int]:
        online_frames, target_frames = frames[: self.num_frames], frames[self.num_frames :]
        box = self.crop.get_params(online_frames, self.crop.scale, self.crop.ratio)
        target_box = shifted_box(box, self.pixel_shift, *frames.shape[-2:]) if self.pixel_shift else box
        flip = self.hflip and randint(0, 1) == 1
        online_clip = self.normalize(self.crop_and_flip(online_frames, box, flip))
        target_clip = self.normalize(self.color(self.crop_and_flip(target_frames, target_box, flip)))
        return {"video": as_clip(online_clip), "target": as_clip(target_clip), "shift": plan.shift}


def frame_pair_indices(num_frames: int, sampling: str, gap: int) -> tuple[int, int]:
    """Two frame indices of a video, ViC-MAE §5.4.

    distant: split the video into 2 equal segments and draw one frame from each.
    continuous: a start i, then a second frame in (i, i + gap] (gap 0: the same frame).
    """
    if sampling == "distant":
        middle = max(1, num_frames // 2)
        return randint(0, middle - 1), randint(min(middle, num_frames - 1), num_frames - 1)
    first = randint(0, max(0, num_frames - 1 - gap))  # continuous
    second = first + randint(1, gap) if gap > 0 else first
    return first, min(second, num_frames - 1)


class FramePairViews(TrainView):
    """ViC-MAE's views -> {"view1": [C, 1, H, W], "view2": [C, 1, H, W]}.

    A video gives two frames (`data.pair_sampling`), each with its own random resized
    crop and flip (colour too with `data.video_color`); an image gives two independent
    strong augmentations (crop, flip, colour jitter, grayscale, blur; solarisation on the
    second with `data.solarize`, as in the released code).
    """

    def __init__(self, config: DataConfig, train: bool = True):
        dense_only(config, "frame_pair")
        # One draw at construction: it used to reject a bad sampling name here (the config does now);
        # kept because it advances the RNG, and every seeded run's augmentations follow from it.
        frame_pair_indices(2, config.pair_sampling, config.frame_gap)
        self.sampling, self.gap = config.pair_sampling, config.frame_gap
        spatial = [v2.RandomResizedCrop(config.image_size, scale=tuple(config.crop_scale), ratio=tuple(config.crop_ratio))]
        if config.hflip:
            spatial.append(v2.RandomHorizontalFlip())
        color = [color_augmentation(config.image_size)]
        normalize = [normalization(config)]
        solarize = [v2.RandomSolarize(threshold=128, p=0.2)] if config.solarize else []
        self.video_transform = v2.Compose(spatial + (color if config.video_color else []) + normalize)
        self.image_transforms = (v2.Compose(spatial + color + normalize),
                                 v2.Compose(spatial + color + solarize + normalize))

    def plan(self, source: FrameSource) -> Plan:
        if getattr(source, "is_image", False):
            return Plan([0], image=True)
        return Plan(list(frame_pair_indices(source.num_frames, self.sampling, self.gap)))

    def render(self, frames: torch.Tensor, plan: Plan) -> dict[str, torch.Tensor]:
        if plan.image:
            return {"view1": to_clip(frames, self.image_transforms[0]), "view2": to_clip(frames, self.image_transforms[1])}
        return {"view1": to_clip(frames[:1], self.video_transform), "view2": to_clip(frames[1:], self.video_transform)}


def evenly_spaced_starts(video_frames: int, num_frames: int, rate: int, clips: int) -> list[int | None]:
    """Start frames of `clips` test clips spread evenly over the video (the centre one for 1 clip);
    None where the video is shorter than a clip (`clip_indices` then covers it evenly)."""
    room = video_frames - clip_span(num_frames, rate)
    if room < 0:
        return [None] * clips
    if clips == 1:
        return [room // 2]
    return [round(k * room / (clips - 1)) for k in range(clips)]


def crop_offsets(length: int, size: int, crops: int) -> list[int]:
    """Offsets of `crops` windows of `size` along an axis of `length`: centre for 1, else evenly spread
    (3 crops = start, centre, end, as VideoMAE's three-crop test)."""
    if crops == 1:
        return [(length - size) // 2]
    return [round(k * (length - size) / (crops - 1)) for k in range(crops)]


class MultiViewClips:
    """Deterministic test views -> {"video": [V, C, T, H, W]}, V = clips x crops.

    `eval.clips` temporal clips spread over the video (with `data.temporal_sampling=segment`,
    each a frame from every segment, at its own offset into the segments), each resized (short side to
    `eval_short_side`: `data.image_size` unless `data.test_crop_ratio` < 1) and cut into
    `eval.crops` square crops of `data.image_size` along the long side (centred on the short side). Scores
    or features of the V views are averaged by the evaluation code.
    """

    def __init__(self, config: DataConfig, clips: int = 1, crops: int = 1):
        if clips < 1 or crops < 1:
            raise ConfigError(f"eval.clips and eval.crops must be >= 1, got {clips} and {crops}")
        self.config, self.clips, self.crops = config, clips, crops
        self.normalize = normalization(config)

    def __call__(self, source: FrameSource) -> dict[str, torch.Tensor]:
        cfg, size = self.config, self.config.image_size
        if cfg.temporal_sampling == "segment":
            clips = [segment_indices(source.num_frames, cfg.num_frames, k, self.clips) for k in range(self.clips)]
        else:
            clips = [clip_indices(source.num_frames, cfg.num_frames, cfg.sampling_rate, start=start) for start in
                     evenly_spaced_starts(source.num_frames, cfg.num_frames, cfg.sampling_rate, self.clips)]
        views = []
        for indices in clips:
            video = v2.functional.resize(tv_tensors.Video(source.get_frames(indices)), eval_short_side(cfg), antialias=True)
            height, width = video.shape[-2:]
            for offset in crop_offsets(max(height, width), size, self.crops):
                top, left = (offset, (width - size) // 2) if height > width else ((height - size) // 2, offset)
                views.append(as_clip(self.normalize(v2.functional.crop(video, top, left, size, size))))
        return {"video": torch.stack(views)}


VIEWS: dict[str, Callable[[DataConfig, bool], Callable[[FrameSource], dict[str, torch.Tensor]]]] = {
    "clip": ClipView,
    "temporal_shift": TemporalShiftViews,
    "frame_pair": FramePairViews,
}


def build_view(config: DataConfig, train: bool = True) -> Callable[[FrameSource], dict[str, torch.Tensor]]:
    if config.views not in VIEWS:  # auto: the data does not know the method; its registry resolves it
        raise ConfigError(f"data.views={config.views} names no view sampler: resolve it for the method with "
                          "cmae.methods.resolve_method(config) (pretrain and build_method do)")
    return VIEWS[config.views](config, train)
