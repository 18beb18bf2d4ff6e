"""The training DataLoader: reproducible per-sample randomness, repeated samples, persistent workers.

Each sample's augmentation (crop, flip, temporal position, colour) is drawn from a seed
made of (train.seed, epoch, sample index), not from a worker's running RNG stream. A
sample therefore looks the same whatever the number of workers, whether they persist
across epochs, and where a run was interrupted: resuming mid-epoch only has to skip the
samples already consumed (`SeededSampler.set_epoch(epoch, skip=...)`).

    make_loader(dataset, config, dist_info, batch) -> DataLoader yielding collated dicts
"""

from __future__ import annotations

import contextlib
import signal

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset, default_collate

from cmae.config import Config, ConfigError
from cmae.distributed import DistInfo


def sample_seed(base: int, epoch: int, index: int) -> int:
    """A well-mixed 63-bit seed for one sample of one epoch (numpy's SeedSequence hashing)."""
    return int(np.random.SeedSequence([base, epoch, index]).generate_state(1, np.uint64)[0] >> 1)


@contextlib.contextmanager
def seeded(seed: int):
    """Run the block under `seed` on the CPU generator, then give the caller its own stream back:
    loading inline (num_workers=0) leaves the training stream (masks, drop path) where it was."""
    with torch.random.fork_rng(devices=[]):
        torch.default_generator.manual_seed(seed)  # the CPU stream only: torch.manual_seed would reseed CUDA's
        yield


class SeededSampler(DistributedSampler):
    """DistributedSampler yielding `(index, seed)` pairs; `set_epoch(epoch, skip)` drops this
    rank's first `skip` pairs of the epoch (the samples a mid-epoch checkpoint already used)."""

    def __init__(self, dataset: Dataset, dist_info: DistInfo, seed: int, shuffle: bool = True):
        super().__init__(dataset, num_replicas=dist_info.world_size, rank=dist_info.rank, shuffle=shuffle,
                         seed=seed, drop_last=shuffle)
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        super().set_epoch(epoch)
        self.skip = skip

    def __iter__(self):
        indices = list(super().__iter__())[self.skip :]
        return iter([(index, sample_seed(self.seed, self.epoch, index)) for index in indices])

    def __len__(self) -> int:
        return self.num_samples - self.skip


class SeededSamples(Dataset):
    """`dataset[index]` under `seeded(seed)` for `(index, seed)` keys."""

    def __init__(self, dataset: Dataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key: tuple[int, int]):
        index, seed = key
        with seeded(seed):
            return self.dataset[index]


def collate_samples(items: list) -> dict:
    """Collate a batch whose items may be lists of repeated samples (`data.repeat` > 1): the
    repeats of one video stay next to each other, so a batch of n videos holds n x k samples."""
    flat = [sample for item in items for sample in (item if isinstance(item, list) else [item])]
    return default_collate(flat)


def ignore_preemption_signals(worker_id: int) -> None:
    """Workers leave SIGTERM / SIGUSR1 / SIGINT to the training process: SLURM signals every process of
    a task, and a worker killed by it would crash the loader before the checkpoint is written.
    So multiprocessing's exit handler cannot terminate them either: `close_loader` must."""
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    signal.signal(signal.SIGUSR1, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C reaches the whole process group: the loop saves first


def close_loader(loader: DataLoader) -> None:
    """Stop a loader's persistent workers. They ignore SIGTERM (`ignore_preemption_signals`), so a
    loader still referenced at exit (say, from an exception's traceback) would otherwise hang the
    interpreter's final join of its child processes."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None and hasattr(iterator, "_shutdown_workers"):
        iterator._shutdown_workers()  # the one way to stop them short of dropping every reference
    loader._iterator = None


def set_loader_epoch(loader: DataLoader, epoch: int, skip: int = 0) -> None:
    """Start `epoch`, leaving out this rank's first `skip` samples (a mid-epoch resume)."""
    if isinstance(loader.dataset, IterableDataset):
        loader.dataset.set_epoch(epoch, skip)
    else:
        loader.sampler.set_epoch(epoch, skip)


def make_loader(dataset, config: Config, dist_info: DistInfo, batch: int, train: bool = True) -> DataLoader:
    """`batch` samples per step on this rank (`batch / data.repeat` videos, each giving `data.repeat`
    samples). A DistributedSampler even for one process: its (seed, epoch) permutation makes resume
    exact. Evaluation (train=False) keeps every sample once, in order, split over ranks. A streaming
    data set (tar shards) is told the ranks, workers and batch, and orders and splits itself."""
    repeat = getattr(dataset, "repeat", 1)
    if batch % repeat:
        raise ConfigError(f"data.repeat={repeat} must divide the per-process batch of {batch} samples "
                          f"(train.batch_size / processes / accum_steps)")
    workers = config.data.num_workers
    streaming = isinstance(dataset, IterableDataset)
    if streaming:
        dataset.configure(dist_info.rank, dist_info.world_size, workers, batch // repeat)
    return DataLoader(
        dataset if streaming else SeededSamples(dataset),
        batch_size=batch // repeat,
        sampler=None if streaming else SeededSampler(dataset, dist_info, config.train.seed, shuffle=train),
        num_workers=workers,
        collate_fn=collate_samples,
        drop_last=train,
        pin_memory=torch.cuda.is_available() and config.data.decode_device == "cpu",
        persistent_workers=workers > 0,
        prefetch_factor=config.data.prefetch_factor if workers > 0 else None,
        worker_init_fn=ignore_preemption_signals if workers > 0 else None,
        # CUDA decoding cannot run in forked workers
        multiprocessing_context="spawn" if workers > 0 and config.data.decode_device == "cuda" else None,
        # the loader's own generator: creating an iterator must not draw from the training stream
        generator=torch.Generator().manual_seed(config.train.seed + dist_info.rank),
    )
