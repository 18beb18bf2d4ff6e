import os

import pytest
import torch
from PIL import Image

from cmae.config import DataConfig
from cmae.data.dataset import FrameFolderSource, VideoDataset
from cmae.data.lists import read_samples
from cmae.data.views import ClipView


def make_view():
    return ClipView(DataConfig(num_frames=4, sampling_rate=1, image_size=32), train=True)


def test_videos_and_images_mix_in_one_list(synth_dir, tmp_path):
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    first_video = (synth_dir / "train.txt").read_text().splitlines()[0].rsplit(" ", 1)[0]
    (tmp_path / "list.txt").write_text(f"{synth_dir / first_video} 2\nred.png 5\n")
    dataset = VideoDataset(tmp_path / "list.txt", make_view())
    video, image = dataset[0], dataset[1]
    assert video["video"].shape == image["video"].shape == (3, 4, 32, 32)
    assert (video["label"], image["label"]) == (2, 5)
    # an image is a still clip: every frame the same
    assert torch.equal(image["video"], image["video"][:, :1].expand_as(image["video"]))
    batch = torch.utils.data.default_collate([video, image])
    assert batch["video"].shape == (2, 3, 4, 32, 32) and batch["num_failed"].tolist() == [0, 0]


def test_corrupt_file_is_replaced_and_counted(synth_dir, tmp_path):
    (tmp_path / "bad.mp4").write_bytes(os.urandom(500))
    first_video = (synth_dir / "train.txt").read_text().splitlines()[0].rsplit(" ", 1)[0]
    (tmp_path / "list.txt").write_text(f"bad.mp4 1\nmissing.mp4 1\n{synth_dir / first_video} 3\n")
    dataset = VideoDataset(tmp_path / "list.txt", make_view())
    with pytest.warns(UserWarning, match=r"bad.mp4") as record:
        item = dataset[0]
    assert any("missing.mp4" in str(w.message) for w in record)
    assert item["num_failed"] == 2 and item["index"] == 2 and item["label"] == 3


def test_all_corrupt_is_a_clear_error(tmp_path):
    (tmp_path / "bad.mp4").write_bytes(b"nope")
    (tmp_path / "list.txt").write_text("bad.mp4 0\n")
    with pytest.warns(UserWarning), pytest.raises(RuntimeError, match="could not be decoded"):
        VideoDataset(tmp_path / "list.txt", make_view())[0]


def test_a_bug_in_a_view_is_not_mistaken_for_a_corrupt_file(synth_dir):
    def broken_view(source):
        raise IndexError("a sampling bug")

    dataset = VideoDataset(synth_dir / "train.txt", broken_view)
    with pytest.raises(IndexError, match="a sampling bug"):
        dataset[0]


def test_cache_decoded_decodes_each_video_once(synth_dir, tmp_path):
    import shutil

    first_video = (synth_dir / "train.txt").read_text().splitlines()[0].rsplit(" ", 1)[0]
    shutil.copy(synth_dir / first_video, tmp_path / "clip.mp4")
    Image.new("RGB", (40, 30), (200, 10, 10)).save(tmp_path / "red.png")
    (tmp_path / "list.txt").write_text("clip.mp4 1\nred.png 2\n")
    view = ClipView(DataConfig(num_frames=4, sampling_rate=1, image_size=32), train=False)
    plain, cached = VideoDataset(tmp_path / "list.txt", view), VideoDataset(tmp_path / "list.txt", view, cache_decoded=True)

    def clip(dataset, index):
        torch.manual_seed(index)  # the clip's start frame is drawn at random
        return dataset[index]["video"]

    first = [clip(cached, 0), clip(cached, 1)]
    assert torch.equal(first[0], clip(plain, 0)) and torch.equal(first[1], clip(plain, 1))
    (tmp_path / "clip.mp4").unlink()  # served from memory from now on
    (tmp_path / "red.png").unlink()
    assert torch.equal(clip(cached, 0), first[0]) and torch.equal(clip(cached, 1), first[1])
    with pytest.warns(UserWarning, match="clip.mp4"), pytest.raises(RuntimeError):
        plain[0]  # without the cache the file is gone


def test_raw_frame_folders_read_through_the_template(tmp_path):
    for name, count in (("walk", 6), ("run", 5)):
        (tmp_path / "frames" / name).mkdir(parents=True)
        for k in range(1, count + 1):  # mmaction numbers frames from 1
            Image.new("RGB", (40, 32), (10 * k, 0, 0)).save(tmp_path / "frames" / name / f"img_{k:05d}.png")
    (tmp_path / "frames.txt").write_text("frames/walk 6 1\nframes/run 5 0\n")
    dataset = VideoDataset(read_samples(tmp_path / "frames.txt", DataConfig(frame_template="img_{:05d}.png")),
                           make_view())
    clip = dataset[1]
    assert clip["video"].shape == (3, 4, 32, 32) and clip["label"] == 0
    source = FrameFolderSource(dataset.samples[0])
    assert source.get_frames([5, 0, 5])[:, 0, 0, 0].tolist() == [60, 10, 60]  # frame i is img_{i + 1}
    (tmp_path / "frames" / "run" / "img_00003.png").unlink()
    with pytest.warns(UserWarning, match=r"img_00003.png"):
        assert dataset[1]["num_failed"] == 1  # a missing frame skips the folder like a corrupt video
