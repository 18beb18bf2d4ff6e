"""Data set indexes: `<path> <label>` list files and ImageFolder trees."""

from __future__ import annotations

import random
from dataclasses import dataclass
from pathlib import Path

from cmae.config import ConfigError, InputError
from cmae.data.decoding import IMAGE_EXTENSIONS


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int


def read_list(list_file: str | Path) -> list[Sample]:
    """Parse a VideoMAE/SlowFast list: one `<path> <label>` per line (last space splits, so paths
    may contain spaces); a relative path is taken from the list file's folder. Blank lines
    and `#` comments are skipped."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"list file not found: {list_file}")
    samples = []
    for number, line in enumerate(list_file.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        path, sep, label = line.rpartition(" ")
        if not sep or not path.strip():
            raise InputError(f"{list_file}:{number}: expected '<path> <label>', got {line!r}")
        try:
            label_index = int(label)
        except ValueError:
            raise InputError(f"{list_file}:{number}: label {label!r} is not an integer") from None
        path = Path(path.strip())
        samples.append(Sample(path if path.is_absolute() else list_file.parent / path, label_index))
    if not samples:
        raise InputError(f"list file {list_file} has no samples")
    return samples


def scan_image_folder(root: str | Path) -> tuple[list[Sample], list[str]]:
    """ImageFolder layout: one sub-folder per class (sorted names -> labels 0..K-1)."""
    root = Path(root)
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise InputError(f"image folder {root} has no class sub-folders")
    samples = [
        Sample(path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not samples:
        raise InputError(f"image folder {root} has no images with extensions {IMAGE_EXTENSIONS}")
    return samples, classes


def check_same_classes(train: str | Path, val: str | Path) -> None:
    """Raise ConfigError when two ImageFolder trees hold different class folders: labels are
    indices into each tree's own sorted names, so they would silently disagree. List files
    carry their labels and are not checked."""
    train, val = Path(train), Path(val)
    if not (train.is_dir() and val.is_dir()):
        return
    names = [{entry.name for entry in root.iterdir() if entry.is_dir()} for root in (train, val)]
    if names[0] != names[1]:
        raise ConfigError(f"image folders {train} and {val} hold different classes (only in train: "
                         f"{sorted(names[0] - names[1])}, only in val: {sorted(names[1] - names[0])}); "
                         "labels are positions in the sorted class names, so both need the same folders")


def read_samples(source: str | Path) -> list[Sample]:
    """A list file or an ImageFolder directory."""
    source = Path(source)
    if source.is_dir():
        return scan_image_folder(source)[0]
    return read_list(source)


def mix_samples(videos: list[Sample], images: list[Sample], image_ratio: float, seed: int = 0) -> list[Sample]:
    """Joint image + video training set in which images make up `image_ratio` of the samples.

    The image set is cycled (a seeded permutation, repeated as needed) or cut to
    round(ratio / (1 - ratio) * len(videos)) samples, as ViC-MAE replicates whole data
    sets to vary the ratio; ratio 0 simply concatenates both.
    """
    if not 0.0 <= image_ratio < 1.0:
        raise ValueError(f"data.image_ratio must lie in [0, 1), got {image_ratio}")
    if image_ratio == 0.0 or not images:
        return videos + images
    count = round(image_ratio / (1.0 - image_ratio) * len(videos))
    order = random.Random(seed).sample(range(len(images)), len(images))
    return videos + [images[order[k % len(images)]] for k in range(count)]
