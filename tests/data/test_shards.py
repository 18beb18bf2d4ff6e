"""Tar shards: writing them (read back by the webdataset package itself), streaming them split
over ranks and workers, exact resume, and pre-training from them under torchrun."""

import io
import json
import tarfile
import warnings
from pathlib import Path

import pytest
import torch

from cmae.config import ConfigError, InputError, load_config
from cmae.data.loader import close_loader, make_loader, set_loader_epoch
from cmae.data.shards import ShardStream, deal_shards, expand_pattern, parse_size, write_shards
from cmae.data.views import build_view
from cmae.distributed import DistInfo
from cmae.methods import resolve_method
from tests.helpers import TINY_INPUT, TINY_MODEL, torchrun_pretrain


@pytest.fixture(scope="module")
def shards(synth_dir, tmp_path_factory) -> dict:
    """The 24 synthetic training clips in 8 shards of 3: whole shards for 2 or 4 readers alike."""
    return write_shards(synth_dir / "train.txt", tmp_path_factory.mktemp("shards"), parse_size("1GB"), max_samples=3)


def keys_in_order(pattern: str) -> list[str]:
    """Every sample key of the shards, in shard then member order: a sample's index in the stream."""
    keys = []
    for path in expand_pattern(pattern):
        with tarfile.open(path) as tar:
            for name in tar.getnames():
                key = name.split(".", 1)[0]
                if not keys or keys[-1] != key:
                    keys.append(key)
    return keys


def append_corrupt_member(shard: Path) -> None:
    """A last sample `zzz_corrupt` whose .mp4 is not a video."""
    with tarfile.open(shard, "a") as tar:
        for name, data in (("zzz_corrupt.mp4", b"not a video" * 50), ("zzz_corrupt.cls", b"0")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))


def test_sizes_and_patterns(tmp_path):
    assert parse_size("1GB") == 10**9 and parse_size("64MiB") == 64 * 2**20 and parse_size("2e6") == 2_000_000
    for bad in ("big", "1XB", "-1MB"):
        with pytest.raises(InputError, match="shard size"):
            parse_size(bad)
    assert [p.name for p in expand_pattern("d/shard-{000008..000011}.tar")] == [
        "shard-000008.tar", "shard-000009.tar", "shard-000010.tar", "shard-000011.tar"]


def test_shards_hold_every_file_in_webdataset_layout(synth_dir, shards):
    import webdataset

    assert shards["samples"] == 24 and shards["shards"] == 8
    expected = {}
    for line in (synth_dir / "train.txt").read_text().splitlines():
        path, label = line.rsplit(" ", 1)
        expected[(synth_dir / path).read_bytes()] = int(label)
    read = [(sample["__key__"], sample["mp4"], int(sample["cls"])) for sample in
            webdataset.WebDataset(shards["pattern"], shardshuffle=False, empty_check=False)]
    assert len(read) == 24 and len({key for key, _, _ in read}) == 24
    assert {data: label for _, data, label in read} == expected  # every file once, with its label


def test_the_deal_balances_readers_and_changes_each_epoch():
    counts = [5, 4, 4, 4, 3, 3]
    for epoch in range(3):
        dealt = deal_shards(counts, 3, seed=0, epoch=epoch)
        assert sorted(s for reader in dealt for s in reader) == list(range(6))
        assert sorted(sum(counts[s] for s in reader) for reader in dealt) == [7, 8, 8]
    assert deal_shards(counts, 3, 0, 0) != deal_shards(counts, 3, 0, 1)


def stream_config(synth_dir, workers: int):
    overrides = [*TINY_INPUT, "data.num_frames=4", f"data.num_workers={workers}", "data.shuffle_buffer=3"]
    return resolve_method(load_config("configs/demo/videomae.yaml", overrides))


@pytest.mark.parametrize("workers", [0, 2])
def test_ranks_and_workers_see_each_sample_once_and_resume_exactly(synth_dir, shards, workers):
    config = stream_config(synth_dir, workers)
    seen = []
    for rank in range(2):
        stream = ShardStream(shards["pattern"], build_view(config.data, train=True), shuffle_buffer=3)
        loader = make_loader(stream, config, DistInfo(rank, 2, rank), batch=2)
        assert len(loader) == 6  # 12 samples per rank in batches of 2
        try:
            set_loader_epoch(loader, 1)
            batches = list(loader)
            resumed = {}
            for steps in (3, 4):  # checkpoints after 3 and 4 steps of this epoch (of 6)
                set_loader_epoch(loader, 1, skip=steps * 2)
                resumed[steps] = list(loader)
        finally:
            close_loader(loader)
        seen += [i for batch in batches for i in batch["index"].tolist()]
        for steps, rest in resumed.items():  # the same samples, in the same order, with the same augmentation
            assert [b["index"].tolist() for b in rest] == [b["index"].tolist() for b in batches[steps:]], steps
            assert all(torch.equal(a["video"], b["video"]) for a, b in zip(rest, batches[steps:], strict=True))
    assert sorted(seen) == list(range(24))


def test_too_few_shards_for_the_readers_is_a_clear_error(synth_dir, shards):
    config = stream_config(synth_dir, 5)
    stream = ShardStream(shards["pattern"], build_view(config.data, train=True))
    with pytest.raises(ConfigError, match="8 shards cannot give each of 2 ranks x 5 loader workers whole shards"):
        make_loader(stream, config, DistInfo(0, 2, 0), batch=2)


def test_pretraining_from_shards_under_torchrun_sees_every_sample_once(synth_dir, tmp_path):
    """Two gloo processes with two loader workers each, two epochs over 4 shards of 4 clips; a fifth
    member of one shard is not a video. Each epoch the ranks together train on every clip exactly once, and the bad member
    is skipped and counted."""
    lines = (synth_dir / "train.txt").read_text().splitlines()[:16]
    (tmp_path / "train.txt").write_text("".join(f"{synth_dir / line}\n" for line in lines))
    summary = write_shards(tmp_path / "train.txt", tmp_path / "shards", parse_size("1GB"), max_samples=4)
    append_corrupt_member(tmp_path / "shards" / "shard-000002.tar")  # after its 4 clips
    keys = keys_in_order(summary["pattern"])
    good = {index for index, key in enumerate(keys) if key != "zzz_corrupt"}
    assert len(keys) == 17 and len(good) == 16
    overrides = [f"data.train={summary['pattern']}", "data.num_frames=4", "data.cache_decoded=false",
                 "data.max_failed_fraction=0.1", *TINY_INPUT, *TINY_MODEL, "train.batch_size=4", "train.epochs=2",
                 "train.warmup_epochs=1", "train.log_samples=true", "data.num_workers=2"]  # 4 readers, a shard each
    torchrun_pretrain("configs/demo/videomae.yaml", tmp_path / "run", overrides)
    by_epoch: dict[int, list[int]] = {0: [], 1: []}
    for rank in range(2):
        for line in (tmp_path / "run" / f"samples-rank{rank}.txt").read_text().splitlines():
            epoch, _, *indices = map(int, line.split())
            by_epoch[epoch] += indices
    for epoch, indices in by_epoch.items():
        assert sorted(indices) == sorted(good), epoch  # each clip once, the bad member never
    assert json.loads((tmp_path / "run" / "summary.json").read_text())["failed_files"] == 2  # once per epoch


def test_shards_are_for_pretraining_only(synth_dir, shards, tmp_path):
    with pytest.raises(ConfigError, match="data.cache_decoded does not work with tar shards"):
        from cmae.engine.pretrain import training_dataset

        training_dataset(load_config("configs/demo/videomae.yaml", [f"data.train={shards['pattern']}",
                                                                    "data.cache_decoded=true"]))
    assert Path(shards["pattern"]).parent.joinpath("index.json").is_file()


def test_resuming_mid_epoch_from_shards_matches_an_uninterrupted_run(shards, tmp_path):
    """One process, two loader workers (4 shards each), 6 steps per epoch; resumed from the
    checkpoint after step 3, three steps into epoch 1: the first batch after it is worker 1's.
    Shard 0 ends in a corrupt member, worker 0's fifth of epoch 1 (before the checkpoint): the
    resumed run passes over it by the checkpoint's failure marks, and counts it once per epoch."""
    from cmae.engine.pretrain import pretrain

    pattern = Path(shards["pattern"])
    for path in pattern.parent.glob("shard-*.tar"):
        (tmp_path / path.name).write_bytes(path.read_bytes())
    append_corrupt_member(tmp_path / "shard-000000.tar")
    overrides = [f"data.train={tmp_path / pattern.name}", "data.num_frames=4", "data.cache_decoded=false", *TINY_INPUT,
                 *TINY_MODEL, "data.num_workers=2", "train.batch_size=4", "train.epochs=2", "train.warmup_epochs=1",
                 "train.save_every_steps=1", "train.keep_checkpoints=12", "train.log_samples=true"]
    config = load_config("configs/demo/videomae.yaml", overrides)
    pretrain(config, tmp_path / "full")
    pretrain(config, tmp_path / "resumed", resume=tmp_path / "full" / "checkpoint-step0000003.pt")
    a = torch.load(tmp_path / "full" / "checkpoint-last.pt", weights_only=True)
    b = torch.load(tmp_path / "resumed" / "checkpoint-last.pt", weights_only=True)
    assert a["step"] == b["step"] == 12
    for name, value in a["model"].items():
        assert torch.allclose(value, b["model"][name], atol=1e-6), name
    full = (tmp_path / "full" / "samples-rank0.txt").read_text().splitlines()
    assert (tmp_path / "resumed" / "samples-rank0.txt").read_text().splitlines() == full[3:]
    assert a["failed_samples"] == b["failed_samples"] == [3]  # shard 0's fourth member
    for run in ("full", "resumed"):
        assert json.loads((tmp_path / run / "summary.json").read_text())["failed_files"] == 2


def test_a_brace_pattern_the_shell_expanded_is_refused():
    with pytest.raises(ConfigError, match="the shell expanded a brace pattern; quote it"):
        load_config("configs/demo/videomae.yaml", ["data.train=d/shard-000000.tar", "data.train=d/shard-000001.tar"])


def test_an_uneven_deal_is_announced(synth_dir, shards):
    """8 equal shards over 3 readers: two hold 9 samples, one 6, for a quota of 8 (whole batches of 2)."""
    config = stream_config(synth_dir, 3)
    stream = ShardStream(shards["pattern"], build_view(config.data, train=True))
    with pytest.warns(UserWarning, match="they hold 6-9 samples for a quota of 8, so each epoch repeats about 2 "
                                         "samples and leaves out 2"):
        make_loader(stream, config, DistInfo(0, 1, 0), batch=2)


def test_a_reader_short_of_its_quota_resumes_past_its_repeats(synth_dir, tmp_path):
    """Shards of 5 and 1 samples over two ranks: the second rank's reader repeats its one sample
    to fill a quota of 3; resumed two samples in, it passes over two repeats and yields the third."""
    lines = (synth_dir / "train.txt").read_text().splitlines()[:6]
    (tmp_path / "six.txt").write_text("".join(f"{synth_dir / line}\n" for line in lines))
    summary = write_shards(tmp_path / "six.txt", tmp_path / "shards", parse_size("1GB"), max_samples=5)
    config = stream_config(synth_dir, 0)
    for rank in range(2):
        stream = ShardStream(summary["pattern"], build_view(config.data, train=True))
        loader = make_loader(stream, config, DistInfo(rank, 2, rank), batch=1)
        set_loader_epoch(loader, 0, skip=2)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the short reader's repeats
            assert len(list(loader)) == 1


def test_unreadable_shards_and_indexes_are_named(shards, tmp_path):
    for path in expand_pattern(shards["pattern"])[:2]:
        (tmp_path / path.name).write_bytes(path.read_bytes())
    (tmp_path / "index.json").write_text("{not json")
    with pytest.warns(UserWarning, match="index.json is unreadable"):
        assert ShardStream(str(tmp_path / "shard-{000000..000001}.tar"), view=None).counts == [3, 3]
    (tmp_path / "shard-000001.tar").write_bytes(b"\0" * 100 + b"garbage" * 100)
    with pytest.raises(InputError, match="shard-000001.tar: not a readable tar shard"):
        ShardStream(str(tmp_path / "shard-{000000..000001}.tar"), view=None)


def test_the_command_writes_shards_and_says_how_to_train_on_them(synth_dir, tmp_path, capsys):
    from cmae.cli import main

    main(["prepare", "shards", "--list", str(synth_dir / "val.txt"), "--output", str(tmp_path / "s"),
          "--shard-size", "10kB", "--samples-per-shard", "3"])
    index = json.loads((tmp_path / "s" / "index.json").read_text())
    assert index["samples"] == 8 and [f["samples"] for f in index["files"]] == [3, 3, 2]
    assert all(f["bytes"] <= 10_000 for f in index["files"])
    assert f"'data.train={tmp_path / 's'}/shard-{{000000..000002}}.tar' (quoted)" in capsys.readouterr().out
