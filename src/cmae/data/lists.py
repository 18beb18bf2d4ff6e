"""Data set indexes: `<path> <label>` list files and ImageFolder trees."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

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
            raise ValueError(f"{list_file}:{number}: expected '<path> <label>', got {line!r}")
        try:
            label_index = int(label)
        except ValueError:
            raise ValueError(f"{list_file}:{number}: label {label!r} is not an integer") from None
        path = Path(path.strip())
        samples.append(Sample(path if path.is_absolute() else list_file.parent / path, label_index))
    if not samples:
        raise ValueError(f"list file {list_file} has no samples")
    return samples


def scan_image_folder(root: str | Path) -> tuple[list[Sample], list[str]]:
    """ImageFolder layout: one sub-folder per class (sorted names -> labels 0..K-1)."""
    root = Path(root)
    classes = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
    if not classes:
        raise ValueError(f"image folder {root} has no class sub-folders")
    samples = [
        Sample(path, label)
        for label, name in enumerate(classes)
        for path in sorted((root / name).rglob("*"))
        if path.suffix.lower() in IMAGE_EXTENSIONS
    ]
    if not samples:
        raise ValueError(f"image folder {root} has no images with extensions {IMAGE_EXTENSIONS}")
    return samples, classes


def read_samples(source: str | Path) -> list[Sample]:
    """A list file or an ImageFolder directory."""
    source = Path(source)
    if source.is_dir():
        return scan_image_folder(source)[0]
    return read_list(source)
