import torch

from cmae.config import DataConfig
from cmae.data.views import ClipView, build_view, clip_indices


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
        assert all(b - a == 4 for a, b in zip(idx, idx[1:]))
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
    config = DataConfig(num_frames=2, sampling_rate=1, image_size=8)
    view = build_view(config, train=False)
    source = FakeSource(2, size=12)
    assert torch.equal(view(source)["video"], view(source)["video"])
