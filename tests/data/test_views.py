import pytest
import torch

from cmae.config import ConfigError, DataConfig
from cmae.data.views import ClipView, EraseClip, MultiViewClips, build_view, clip_indices, segment_indices


class FakeSource:
    """Frames whose pixels equal their index, to check sampling and per-clip transforms."""

    def __init__(self, num_frames: int, size: int = 16):
        self.num_frames = num_frames
        self.size = size

    def get_frames(self, indices):
        frames = torch.zeros(len(indices), 3, self.size, self.size, dtype=torch.uint8)
        for k, index in enumerate(indices):
            frames[k] = index
        frames[:, 0, :, : self.size // 2] = 255  # left half of the red channel marks orientation
        return frames


def test_clip_indices_stride_and_range():
    torch.manual_seed(0)
    for _ in range(50):
        idx = clip_indices(40, 8, 4)
        assert len(idx) == 8 and idx[0] >= 0 and idx[-1] < 40
        assert all(b - a == 4 for a, b in zip(idx, idx[1:], strict=False))
    assert clip_indices(40, 4, 2, start=3) == [3, 5, 7, 9]


def test_short_videos_and_images_are_covered_evenly():
    assert clip_indices(5, 4, 4) == [0, 1, 3, 4]
    assert clip_indices(1, 4, 4) == [0, 0, 0, 0]


def test_clip_view_applies_one_crop_and_flip_to_every_frame():
    config = DataConfig(num_frames=4, sampling_rate=2, image_size=8, mean=[0, 0, 0], std=[1, 1, 1])
    view = ClipView(config, train=True)
    torch.manual_seed(1)
    flips = set()
    for _ in range(20):
        clip = view(FakeSource(30))["video"]
        assert clip.shape == (3, 4, 8, 8) and clip.dtype == torch.float32
        red = clip[0]  # [T, H, W]
        # the orientation mark (left/right half) is identical in every frame
        assert torch.equal(red == 1.0, (red == 1.0)[:1].expand_as(red))
        flips.add(bool(red[0, 0, 0] == 1.0))
        # green channel carries the frame index: strided by 2
        index = (clip[1, :, 0, 0] * 255).round()
        assert (index.diff() == 2).all()
    assert flips == {True, False}


def test_eval_view_is_deterministic_centre_crop():
    config = DataConfig(num_frames=2, sampling_rate=1, image_size=8, views="clip")  # auto needs a method to follow
    view = build_view(config, train=False)
    source = FakeSource(2, size=12)
    assert torch.equal(view(source)["video"], view(source)["video"])


def shift_config(**kw):
    values = dict(num_frames=4, sampling_rate=2, image_size=8, max_shift=3, mean=[0, 0, 0], std=[1, 1, 1])
    return DataConfig(**{**values, **kw})


def test_temporal_shift_stays_within_bound_and_shares_the_crop():
    from cmae.data.views import TemporalShiftViews

    view = TemporalShiftViews(shift_config(target_color=False))
    torch.manual_seed(0)
    shifts = set()
    for _ in range(60):
        out = view(FakeSource(30))
        online = (out["video"][1, :, 0, 0] * 255).round()  # frame indices from the green channel
        target = (out["target"][1, :, 0, 0] * 255).round()
        assert torch.equal(target, online + out["shift"])  # the start leaves room: never clamped
        shifts.add(out["shift"])
        # same crop and flip: the orientation mark agrees
        assert torch.equal(out["video"][0] == 1.0, out["target"][0] == 1.0)
    assert shifts == {0, 1, 2, 3}


def test_temporal_shift_clamps_at_the_end_and_p0_gives_identical_clips():
    from cmae.data.views import TemporalShiftViews

    torch.manual_seed(0)
    out = TemporalShiftViews(shift_config(max_shift=0, target_color=False))(FakeSource(30))
    assert out["shift"] == 0 and torch.equal(out["video"], out["target"])
    out = TemporalShiftViews(shift_config(max_shift=50, target_color=False))(FakeSource(7))
    assert (out["target"][1, :, 0, 0] * 255).round().max() <= 6


def test_colour_goes_to_the_target_only_and_is_the_same_for_all_frames():
    from cmae.data.views import TemporalShiftViews

    class Still(FakeSource):
        def get_frames(self, indices):
            generator = torch.Generator().manual_seed(7)
            frame = torch.randint(0, 256, (1, 3, self.size, self.size), dtype=torch.uint8, generator=generator)
            return frame.expand(len(indices), -1, -1, -1).clone()

    view = TemporalShiftViews(shift_config(max_shift=0))
    torch.manual_seed(3)
    changed = 0
    for _ in range(10):
        out = view(Still(30))
        online, target = out["video"], out["target"]
        assert torch.equal(online, online[:, :1].expand_as(online))  # untouched still clip
        assert torch.allclose(target, target[:, :1].expand_as(target))  # one colour draw per clip
        changed += not torch.allclose(online, target)
    assert changed >= 5


def test_pixel_shift_moves_the_target_crop():
    from cmae.data.views import TemporalShiftViews

    view = TemporalShiftViews(shift_config(max_shift=0, target_color=False, pixel_shift=3, crop_scale=[0.2, 0.3],
                                           hflip=False))

    class Ramp(FakeSource):
        def get_frames(self, indices):
            ramp = torch.arange(self.size, dtype=torch.uint8) * 8
            return ramp.expand(len(indices), 3, self.size, self.size).clone()

    torch.manual_seed(0)
    assert any(not torch.equal(o["video"], o["target"]) for o in (view(Ramp(30, size=32)) for _ in range(10)))


def test_distant_and_continuous_pair_sampling():
    from cmae.data.views import frame_pair_indices

    torch.manual_seed(0)
    for _ in range(200):
        first, second = frame_pair_indices(31, "distant", 0)
        assert 0 <= first < 15 <= second < 31  # one frame from each half
        first, second = frame_pair_indices(31, "continuous", 3)
        assert first < second <= first + 3
    for _ in range(20):
        first, second = frame_pair_indices(20, "continuous", 0)
        assert first == second


def test_frame_pair_views_for_videos_and_images():
    from cmae.data.views import FramePairViews

    config = DataConfig(num_frames=1, image_size=8, views="frame_pair", pair_sampling="continuous", frame_gap=0,
                        crop_scale=[1.0, 1.0], crop_ratio=[1.0, 1.0], hflip=False, mean=[0, 0, 0], std=[1, 1, 1])
    out = FramePairViews(config)(FakeSource(30))
    assert out["view1"].shape == out["view2"].shape == (3, 1, 8, 8)
    assert torch.equal(out["view1"], out["view2"])  # gap 0, no random crop or flip: the same frame

    class Image1(FakeSource):
        is_image = True

    torch.manual_seed(0)
    outs = [FramePairViews(config)(Image1(1)) for _ in range(5)]
    assert any(not torch.allclose(o["view1"], o["view2"]) for o in outs)  # colour recipe on images


def test_test_crop_ratio_resizes_before_the_centre_crop():
    from cmae.data.views import MultiViewClips, spatial_transform

    class Ramp(FakeSource):
        def get_frames(self, indices):  # pixel value = 10 x column
            return (torch.arange(self.size) * 10).to(torch.uint8).expand(len(indices), 3, self.size, self.size).clone()

    config = DataConfig(num_frames=2, sampling_rate=1, image_size=8, mean=[0, 0, 0], std=[1, 1, 1], test_crop_ratio=0.5)
    columns = (MultiViewClips(config)(Ramp(4))["video"][0, 0, 0, 0] * 255).round()
    assert columns.tolist() == [10.0 * x for x in range(4, 12)]  # 16 px short side kept, centre 8 cut
    frame = (spatial_transform(config, train=False)(Ramp(1).get_frames([0])) * 255).round()
    assert torch.equal(frame[0, 0, 0], columns)
    whole = MultiViewClips(DataConfig(**{**config.__dict__, "test_crop_ratio": 1.0}))(Ramp(4))["video"]
    assert whole.shape[-1] == 8 and (whole[0, 0, 0, 0] * 255).round()[0] < 40  # resized to 8: all columns in view



def test_random_erasing_puts_one_box_of_noise_in_every_frame_after_normalising():
    config = DataConfig(num_frames=8, sampling_rate=1, image_size=16, mean=[0, 0, 0], std=[1, 1, 1])
    erased_clips = 0
    for seed in range(20):
        torch.manual_seed(seed)
        plain = ClipView(config, train=True)(FakeSource(8))["video"]
        torch.manual_seed(seed)  # the same crop and flip: erasing draws its numbers last
        erased = ClipView(config, train=True, erase=0.5)(FakeSource(8))["video"]
        changed = (erased != plain).any(0)  # [T, H, W]
        if not changed.any():
            continue
        erased_clips += 1
        rows, cols = changed.any(0).any(1).nonzero().flatten(), changed.any(0).any(0).nonzero().flatten()
        height, width = int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)
        assert 0.02 * 256 * 0.8 <= height * width <= 256 / 3 * 1.2  # 2-33 % of the frame, as rounded
        ys, xs = slice(int(rows[0]), int(rows[0]) + height), slice(int(cols[0]), int(cols[0]) + width)
        assert changed[:, ys, xs].float().mean() > 0.95  # one box, the same place in every frame
        noise = erased[:, :, ys, xs]  # [C, T, h, w]: N(0, 1) drawn afresh for every frame (VideoMAE's 'cube' erasing)
        assert noise.std() > 0.5 and not torch.equal(noise[:, 0], noise[:, 1])
    assert 4 <= erased_clips <= 16  # p = 0.5 per clip
    torch.manual_seed(3)
    plain = ClipView(config, train=True)(FakeSource(8))["video"]
    torch.manual_seed(3)
    assert torch.equal(ClipView(config, train=True, erase=0.0)(FakeSource(8))["video"], plain)
    assert not any(isinstance(t, EraseClip) for t in ClipView(config, train=False, erase=1.0).transform.transforms)


def test_segment_sampling_takes_a_frame_from_each_segment():
    torch.manual_seed(0)
    seen = set()
    for _ in range(50):  # 40 frames in 8 segments of 5: one random frame of each
        indices = segment_indices(40, 8)
        assert [i // 5 for i in indices] == list(range(8))
        seen.update(i % 5 for i in indices)
    assert seen == set(range(5))
    # VideoMAE's SSv2 test: 2 views, the segments' starts and middles (int(tick * x), int(tick / 2 + tick * x))
    tick = 45 / 8
    assert segment_indices(45, 8, view=0, views=2) == [int(tick * x) for x in range(8)]
    assert segment_indices(45, 8, view=1, views=2) == [int(tick / 2 + tick * x) for x in range(8)]
    assert segment_indices(5, 8) == clip_indices(5, 8, 1)  # shorter than the clip: covered evenly


def test_segment_sampling_in_the_training_and_test_views():
    config = DataConfig(num_frames=4, sampling_rate=2, image_size=8, mean=[0, 0, 0], std=[1, 1, 1],
                        temporal_sampling="segment")
    torch.manual_seed(0)
    index = (ClipView(config, train=True)(FakeSource(40))["video"][1, :, 0, 0] * 255).round().long()
    assert (index // 10).tolist() == [0, 1, 2, 3]  # the whole video, not 4 frames at stride 2
    views = MultiViewClips(config, clips=2, crops=1)(FakeSource(40))["video"]  # [V, C, T, H, W]
    assert (views[:, 1, :, 0, 0] * 255).round().long().tolist() == [[0, 10, 20, 30], [5, 15, 25, 35]]
    with pytest.raises(ConfigError, match="data.temporal_sampling=segment is for single clips"):
        build_view(DataConfig(views="temporal_shift", temporal_sampling="segment"))
