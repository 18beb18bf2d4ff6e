"""Tar shards for cluster file systems: a few large files read front to back, not millions of small ones.

Layout (WebDataset's): each sample is a run of tar members sharing a key, `key.mp4` (or
.webm, .avi, .jpg, ...) and `key.cls` (the label as text; absent when unlabelled).

    write_shards(list_file, output, shard_size) -> output/shard-000000.tar ..., index.json
    ShardStream(pattern, view, ...)             -> an IterableDataset of rendered samples

Reading (`data.train=DIR/shard-{000000..000099}.tar`): every epoch the shards are shuffled
and dealt out whole to the readers (ranks x loader workers), balanced by sample count;
each reader streams its shards through a shuffle buffer of `data.shuffle_buffer` samples
(still encoded). All of it is seeded by (train.seed, epoch), and so is each sample's
augmentation (by its index), so an epoch is the same however it was interrupted.

Every reader yields the same number of samples per epoch, whole batches of them, or the
ranks would run different numbers of steps and DDP would hang: the quota is the data set
size / readers, rounded down to a batch. A reader whose shards hold more leaves the rest
for this epoch (the deal changes each epoch); one whose shards hold fewer, or lost some
to corrupt members, starts its shards over and repeats samples (a warning counts them).
Shards of equal sample counts (`--samples-per-shard`), in a number divisible by the readers,
give every sample once per epoch, but for at most a batch per reader; the loader warns at
start when the deal is uneven. Undecodable members are skipped and counted in `num_failed`
like bad files.

Mid-epoch resume is exact too: the DataLoader takes batches from its workers in turn, so
the batches a checkpoint already used are known per worker, and each worker reads and
drops those samples without decoding them (the cost: reading that part of its shards
again). A member that failed to decode took no place in a batch, so the readers mark it (in
shared memory), checkpoints keep the marks, and the resumed reader passes over it without
counting it; that assumes a corrupt member stays corrupt, which holds for bytes in a tar.

Why not the `webdataset` package: its tar reading and brace expansion are a few lines over
`tarfile`, and what is needed here beyond them (per-reader quotas that keep DDP ranks in
step, exact resume, per-sample seeds) is what its pipeline leaves to the user; its
`split_by_node` gives ranks unequal sample counts and its remedy, resampling with
`with_epoch`, gives up seeing each sample once per epoch. The shards it reads, it reads
(tests/data/test_shards.py checks that against the package itself).
"""

from __future__ import annotations

import io
import json
import os
import re
import tarfile
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import IterableDataset, get_worker_info

from cmae.config import ConfigError, InputError
from cmae.data.dataset import MAX_CONSECUTIVE_FAILURES, open_source, render, tag
from cmae.data.decoding import IMAGE_EXTENSIONS, DecodeError
from cmae.data.lists import UNLABELLED, read_list
from cmae.data.loader import sample_seed, seeded
from cmae.data.prepare import VIDEO_EXTENSIONS

MEDIA_EXTENSIONS = tuple(ext.lstrip(".") for ext in (*VIDEO_EXTENSIONS, *IMAGE_EXTENSIONS))
INDEX_NAME = "index.json"
_UNITS = {"": 1, "B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12,
          "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_size(text: str) -> int:
    """Bytes in "1GB", "500MB", "64MiB" or "1e9"."""
    match = re.fullmatch(r"\s*([0-9.eE+]+)\s*([A-Za-z]*)\s*", str(text))
    if not match or match.group(2).upper() not in _UNITS:
        raise InputError(f"shard size {text!r}: expected a number of bytes such as 1GB, 500MB or 64MiB")
    try:
        size = int(float(match.group(1)) * _UNITS[match.group(2).upper()])
    except ValueError:
        raise InputError(f"shard size {text!r}: {match.group(1)!r} is not a number") from None
    if size <= 0:
        raise InputError(f"shard size {text!r} must be positive")
    return size


def expand_pattern(pattern: str) -> list[Path]:
    """`DIR/shard-{000000..000099}.tar` -> the 100 paths (numeric brace ranges keep their width)."""
    match = re.search(r"\{(\d+)\.\.(\d+)\}", pattern)
    if not match:
        return [Path(pattern)]
    first, last = match.group(1), match.group(2)
    head, tail = pattern[: match.start()], pattern[match.end() :]
    return [path for number in range(int(first), int(last) + 1)
            for path in expand_pattern(f"{head}{number:0{len(first)}d}{tail}")]


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size, info.mode, info.mtime = len(data), 0o644, 0  # no owner or time: the same bytes every run
    tar.addfile(info, io.BytesIO(data))


def write_shards(list_file: str | Path, output: str | Path, shard_size: int, list_format: str = "auto",
                 seed: int = 0, max_samples: int = 0) -> dict:
    """Pack the files of a list into tar shards of about `shard_size` bytes (and at most `max_samples`
    samples, when > 0: equal counts deal out evenly over readers), in a seeded random order: a list
    sorted by class would otherwise put one class in each shard, which no shuffle buffer mixes back.
    Files that cannot be read are skipped and counted. Writes index.json (samples and bytes per
    shard) next to the shards; returns its summary."""
    samples = read_list(list_file, list_format)
    if any(sample.is_frame_folder for sample in samples):
        raise InputError(f"{list_file}: raw-frame folders cannot be packed into shards; list video or image files")
    output = Path(output)
    output.mkdir(parents=True, exist_ok=True)
    order = np.random.default_rng(seed).permutation(len(samples))
    shards, skipped, tar, current = [], [], None, None

    def close() -> None:
        tar.close()
        os.replace(current["partial"], output / current["name"])
        current["file_bytes"] = (output / current["name"]).stat().st_size  # tells a shard changed since
        shards.append({key: current[key] for key in ("name", "samples", "bytes", "file_bytes")})

    for position, index in enumerate(order):
        sample = samples[index]
        try:
            data = sample.path.read_bytes()
        except OSError as error:
            skipped.append(f"{sample.path}\t{error.strerror or error}")
            continue
        full = current is not None and (current["bytes"] + len(data) > shard_size
                                        or 0 < max_samples <= current["samples"])
        if tar is not None and full:
            close()
            tar = None
        if tar is None:
            name = f"shard-{len(shards):06d}.tar"
            current = {"name": name, "partial": output / f"{name}.part", "samples": 0, "bytes": 0}
            tar = tarfile.open(current["partial"], "w", format=tarfile.GNU_FORMAT)
        key = f"{position:08d}_{re.sub(r'[^A-Za-z0-9_-]', '_', sample.path.stem)}"  # no dots: they split keys
        _add_member(tar, f"{key}{sample.path.suffix.lower()}", data)
        if sample.label != UNLABELLED:
            _add_member(tar, f"{key}.cls", str(sample.label).encode())
        current["samples"] += 1
        current["bytes"] += len(data)
    if tar is not None:
        close()
    if not shards:
        raise InputError(f"{list_file}: none of its {len(samples)} files could be read")
    summary = {"samples": sum(s["samples"] for s in shards), "shards": len(shards),
               "bytes": sum(s["bytes"] for s in shards), "skipped": len(skipped),
               "pattern": str(output / f"shard-{{000000..{len(shards) - 1:06d}}}.tar"), "files": shards}
    (output / INDEX_NAME).write_text(json.dumps(summary, indent=1) + "\n")
    if skipped:
        (output / "skipped.txt").write_text("".join(f"{line}\n" for line in skipped))
        warnings.warn(f"{len(skipped)} files of {list_file} could not be read (see {output / 'skipped.txt'})",
                      stacklevel=2)
    return summary


def split_key(name: str) -> tuple[str, str]:
    """WebDataset's rule: the key is the path up to the first dot of the base name, the rest the extension."""
    folder, _, base = name.rpartition("/")
    stem, _, extension = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), extension.lower()


def read_samples_of(shard: Path) -> Iterator[tuple[str, dict[str, bytes]]]:
    """(key, {extension: bytes}) of each sample of a shard, reading it front to back. A shard
    that breaks off (a truncated copy) ends with a warning naming it."""
    key, members = None, {}
    try:
        with tarfile.open(shard, "r|") as tar:
            for info in tar:
                if not info.isfile():
                    continue
                member_key, extension = split_key(info.name)
                if member_key != key and members:
                    yield key, members
                    members = {}
                key = member_key
                members[extension] = tar.extractfile(info).read()
    except (tarfile.TarError, OSError) as error:
        warnings.warn(f"{shard}: cannot read past {key or 'the start'} ({error}); the rest of the shard is skipped",
                      stacklevel=2)
    if members:
        yield key, members


def count_samples(shard: Path) -> int:
    """Samples (keys with a media member) in a shard, from its headers alone."""
    keys = set()
    try:
        with tarfile.open(shard, "r:") as tar:  # seekable: the member data is skipped, not read
            for info in tar:
                key, extension = split_key(info.name)
                if info.isfile() and extension in MEDIA_EXTENSIONS:
                    keys.add(key)
    except (tarfile.TarError, OSError) as error:
        raise InputError(f"{shard}: not a readable tar shard ({error}); copy it again or leave it out") from None
    return len(keys)


def shard_counts(paths: list[Path]) -> list[int]:
    """Samples per shard: from the index.json `write_shards` left beside them where it lists the
    shard at its current size, else counted from the tar headers (a shard rewritten or appended to)."""
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such shard (data.train names {len(paths)} shards)")
    index_file = paths[0].parent / INDEX_NAME
    known = {}
    if index_file.is_file():
        try:
            known = {entry["name"]: entry for entry in json.loads(index_file.read_text()).get("files", [])}
        except (ValueError, KeyError, TypeError, AttributeError) as error:
            warnings.warn(f"{index_file} is unreadable ({error}); counting the shards' samples instead", stacklevel=2)
    counts = []
    for path in paths:
        entry = known.get(path.name)
        unchanged = entry is not None and path.stat().st_size == entry.get("file_bytes")
        counts.append(entry["samples"] if unchanged else count_samples(path))
    return counts


def deal_shards(counts: list[int], readers: int, seed: int, epoch: int) -> list[list[int]]:
    """Shard indices per reader for one epoch: a seeded shuffle, then each shard, largest first,
    to the reader holding the fewest samples so far. Every rank computes the same deal."""
    order = np.random.default_rng([seed, epoch]).permutation(len(counts)).tolist()
    dealt: list[list[int]] = [[] for _ in range(readers)]
    totals = [0] * readers
    for shard in sorted(order, key=lambda s: -counts[s]):  # stable: equal counts keep the shuffled order
        reader = totals.index(min(totals))
        dealt[reader].append(shard)
        totals[reader] += counts[shard]
    return dealt


class ShardStream(IterableDataset):
    """Rendered samples from tar shards; see the module docstring. `configure` (the loader) sets
    the readers and batch size, `set_epoch` the epoch and the samples of it to skip on this rank."""

    def __init__(self, pattern: str, view: Callable, backend: str = "auto", device: str = "cpu", repeat: int = 1,
                 seed: int = 0, shuffle_buffer: int = 100):
        self.paths = expand_pattern(pattern)
        self.counts = shard_counts(self.paths)
        self.offsets = np.concatenate([[0], np.cumsum(self.counts)]).tolist()  # a sample's index = offset + position
        self.view, self.backend, self.device, self.repeat = view, backend, device, repeat
        self.seed, self.shuffle_buffer = seed, max(1, shuffle_buffer)
        self.rank, self.world_size, self.workers, self.batch = 0, 1, 1, 1
        # epoch and skip, in shared memory: persistent loader workers read what the trainer set
        self.state = torch.zeros(2, dtype=torch.long).share_memory_()
        # the members that failed to decode, by index, marked by the workers and kept in checkpoints
        self.failed_marks = torch.zeros(self.offsets[-1], dtype=torch.bool).share_memory_()

    @property
    def readers(self) -> int:
        return self.world_size * self.workers

    def configure(self, rank: int, world_size: int, workers: int, batch: int) -> None:
        self.rank, self.world_size, self.workers, self.batch = rank, world_size, max(1, workers), batch
        if len(self.paths) < self.readers:
            raise ConfigError(f"{len(self.paths)} shards cannot give each of {world_size} ranks x {self.workers} "
                              "loader workers whole shards; write smaller shards (--shard-size) or lower "
                              "data.num_workers")
        if self.quota == 0:
            raise ConfigError(f"{sum(self.counts)} samples in {len(self.paths)} shards give {self.readers} readers "
                              f"less than a batch of {batch} each; lower train.batch_size or data.num_workers")
        held = sorted(sum(self.counts[s] for s in shards) for shards in deal_shards(self.counts, self.readers, self.seed, 0))
        repeated = sum(max(0, self.quota - n) for n in held)
        if rank == 0 and (repeated or held[-1] - self.quota >= batch):
            warnings.warn(f"{len(self.paths)} shards of {min(self.counts)}-{max(self.counts)} samples deal unevenly to "
                          f"{self.readers} readers ({world_size} ranks x {self.workers} workers): they hold "
                          f"{held[0]}-{held[-1]} samples for a quota of {self.quota}, so each epoch repeats about "
                          f"{repeated} samples and leaves out {sum(max(0, n - self.quota) for n in held)}; for every "
                          "sample once, write equal shards in a multiple of ranks x workers", stacklevel=2)

    @property
    def quota(self) -> int:
        """Samples each reader yields per epoch: an equal share, in whole batches."""
        return sum(self.counts) // self.readers // self.batch * self.batch

    def __len__(self) -> int:
        return self.quota * self.workers  # per rank

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        self.state[0], self.state[1] = epoch, skip

    def failed_samples(self) -> list[int]:
        """The indices of the members that failed to decode so far (for the checkpoint)."""
        return self.failed_marks.nonzero().flatten().tolist()

    def mark_failed(self, indices: list[int]) -> None:
        """Restore a checkpoint's failed members, so a mid-epoch resume passes over them uncounted."""
        if indices and max(indices) >= len(self.failed_marks):
            raise ConfigError(f"the checkpoint names failed shard member {max(indices)}, but the shards hold "
                              f"{len(self.failed_marks)} samples: they changed since it was saved; resume from a "
                              "checkpoint saved at an epoch's end")
        self.failed_marks[torch.as_tensor(indices, dtype=torch.long)] = True

    def _resumed_position(self, worker: int) -> tuple[int, int]:
        """(the logical worker this loader worker continues, its samples to pass over). The loader
        takes one batch from each worker in turn, so of an epoch's first n batches logical worker
        w made those numbered w, w + W, ...; a new loader iterator starts at worker 0, so after a
        resume at batch n loader worker i continues logical worker (i + n) mod W."""
        batches = int(self.state[1]) // self.batch
        logical = (worker + batches) % self.workers
        return logical, max(0, (batches - logical + self.workers - 1) // self.workers) * self.batch

    def _shuffled(self, shards: list[int], rng: np.random.Generator) -> Iterator[tuple[int, str, dict]]:
        """(index, key, members) of the shards' samples through a shuffle buffer."""
        buffer: list[tuple[int, str, dict]] = []
        for shard in shards:
            for position, (key, members) in enumerate(read_samples_of(self.paths[shard])):
                buffer.append((self.offsets[shard] + position, key, members))
                if len(buffer) >= self.shuffle_buffer:
                    yield buffer.pop(int(rng.integers(len(buffer))))
        while buffer:
            yield buffer.pop(int(rng.integers(len(buffer))))

    def _decode(self, key: str, members: dict[str, bytes]):
        """The rendered sample of one key's members; DecodeError when there is no usable media member."""
        extension = next((ext for ext in MEDIA_EXTENSIONS if ext in members), None)
        if extension is None:
            raise DecodeError(f"{key}: no video or image member (has {sorted(members)})")
        source = open_source(Path(f"{key}.{extension}"), self.backend, self.device, members[extension])
        return render(self.view, source, self.repeat)

    def __iter__(self):
        info = get_worker_info()
        worker, skip = self._resumed_position(info.id if info is not None else 0)
        reader = self.rank * self.workers + worker
        epoch = int(self.state[0])
        shards = deal_shards(self.counts, self.readers, self.seed, epoch)[reader]
        rng = np.random.default_rng([self.seed, epoch, reader])
        left, failed, passes = self.quota, 0, 0
        while left > 0:
            progress = 0
            for index, key, members in self._shuffled(shards, rng):
                if left == 0:
                    break
                if skip > 0:  # already trained on before the checkpoint: not decoded
                    if not self.failed_marks[index]:  # a member that failed then took no place in a batch
                        skip, left, progress = skip - 1, left - 1, progress + 1
                    continue
                try:
                    with seeded(sample_seed(self.seed, epoch, index)):
                        item = self._decode(key, members)
                    label = int(members["cls"]) if "cls" in members else UNLABELLED
                except (DecodeError, ValueError) as error:
                    failed += 1
                    self.failed_marks[index] = True
                    warnings.warn(f"skipping undecodable shard member ({error})", stacklevel=2)
                    if failed >= MAX_CONSECUTIVE_FAILURES:
                        raise RuntimeError(f"{failed} consecutive members of {self.paths[shards[0]].parent} could "
                                           "not be decoded; check the shards and data.decoder") from error
                    continue
                yield tag(item, label, index, failed)
                failed, left, progress = 0, left - 1, progress + 1
            passes += 1
            if left and not progress and passes > 1:
                raise RuntimeError(f"reader {reader}: shards {[self.paths[s].name for s in shards]} gave no sample")
            if left:
                warnings.warn(f"reader {reader} of epoch {epoch}: its shards hold fewer samples than its quota "
                              f"of {self.quota}; repeating {left}", stacklevel=2)
