"""The training loader: repeated samples per decode, and per-sample seeds that make resume exact."""

import pytest
import torch

from cmae.config import ConfigError, load_config
from cmae.data.dataset import VideoDataset
from cmae.data.decoding import open_video
from cmae.data.lists import read_samples
from cmae.data.loader import make_loader
from cmae.data.views import build_view, render_views
from cmae.distributed import DistInfo
from tests.helpers import tiny_overrides


def dataset_and_config(synth_dir, **extra):
    config = load_config("configs/demo/cmae_v.yaml", tiny_overrides(synth_dir, **extra))
    data = config.data
    dataset = VideoDataset(config.data.train, build_view(data, train=True), repeat=data.repeat)
    return dataset, config


def samples(loader, epoch: int, skip: int = 0) -> list[torch.Tensor]:
    loader.sampler.set_epoch(epoch, skip=skip)
    return [clip for batch in loader for clip in batch["video"]]


def test_repeat_gives_differently_augmented_samples_from_one_decode(synth_dir):
    dataset, config = dataset_and_config(synth_dir, **{"data.repeat": 4})
    item = dataset[3]
    assert len(item) == 4 and dataset.decodes == 1
    assert {one["index"] for one in item} == {3} and {one["label"] for one in item} == {item[0]["label"]}
    for a in range(4):  # own crop, flip, temporal position and target shift per repeat
        for b in range(a + 1, 4):
            assert not torch.equal(item[a]["video"], item[b]["video"])
    loader = make_loader(dataset, config, DistInfo(), batch=8)  # 8 samples = 2 videos x 4
    batches = list(loader)
    assert batches[0]["video"].shape[0] == 8 and len(batches) == len(dataset) // 2
    assert batches[0]["index"].tolist()[:4] == [batches[0]["index"][0].item()] * 4
    sample_count = sum(len(b["video"]) for b in batches)
    assert dataset.decodes == 1 + sample_count // 4  # one decode per 4 samples (+ the item above)


class CountingReader:
    """A real video reader that counts its decoding passes (`get_frames` calls)."""

    def __init__(self, path):
        self.reader = open_video(path)
        self.num_frames, self.passes, self.frames = self.reader.num_frames, 0, 0

    def get_frames(self, indices):
        self.passes, self.frames = self.passes + 1, self.frames + len(indices)
        return self.reader.get_frames(indices)


def test_repeats_share_one_decoding_pass(synth_dir):
    _, config = dataset_and_config(synth_dir, **{"data.num_frames": 2, "data.sampling_rate": 2, "data.max_shift": 1})
    reader = CountingReader(read_samples(config.data.train)[0].path)
    torch.manual_seed(0)
    items = render_views(build_view(config.data, train=True), reader, count=4)
    assert reader.passes == 1 and len(items) == 4
    torch.manual_seed(0)  # the plans drawn again: the pass decoded each frame of their union once
    view = build_view(config.data, train=True)
    plans = [view.plan(reader) for _ in range(4)]
    assert reader.frames == len({i for plan in plans for i in plan.indices}) < sum(len(p.indices) for p in plans)
    assert [item["shift"] for item in items] == [plan.shift for plan in plans]


def test_repeat_must_divide_the_batch(synth_dir):
    dataset, config = dataset_and_config(synth_dir, **{"data.repeat": 3})
    with pytest.raises(ConfigError, match="data.repeat=3 must divide the per-process batch of 8"):
        make_loader(dataset, config, DistInfo(), batch=8)


def test_a_sample_depends_on_seed_epoch_and_index_only(synth_dir):
    dataset, config = dataset_and_config(synth_dir)
    inline = make_loader(dataset, config, DistInfo(), batch=4)
    config.data.num_workers = 2
    workers = make_loader(dataset, config, DistInfo(), batch=4)  # persistent across epochs
    assert workers.persistent_workers and not inline.persistent_workers
    rng = torch.get_rng_state()
    first = samples(inline, epoch=0)
    assert torch.equal(torch.get_rng_state(), rng)  # inline loading leaves the training stream alone
    for epoch in (0, 1, 0):
        ours = samples(workers, epoch)
        expected = first if epoch == 0 else samples(inline, 1)
        assert all(torch.equal(a, b) for a, b in zip(ours, expected, strict=True))
    # a mid-epoch resume skips the consumed samples and sees the same rest
    rest = samples(workers, epoch=0, skip=8)
    assert all(torch.equal(a, b) for a, b in zip(rest, first[8:], strict=True))
    assert not torch.equal(first[0], samples(inline, epoch=1)[0])
