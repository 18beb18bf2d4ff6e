"""Data set indexes: list files in the field's formats, ImageFolder trees, tar shard patterns.

List formats (`data.list_format`, detected from the first line when "auto"):
    path_label    `path label`              VideoMAE / mmaction / SlowFast video lists
    videomae_v2   `path 0 -1`               VideoMAE V2 pre-training lists (unlabelled videos)
    rawframes     `frame_dir total label`   mmaction raw-frame lists (`data.frame_template`)
    csv           a header naming the columns `path` [, `label`] [, `total_frames`]
A relative path is taken from the list file's folder; blank lines and `#` comments are skipped.
"""

from __future__ import annotations

import csv
import random
import re
from dataclasses import dataclass
from pathlib import Path

from cmae.config import ConfigError, DataConfig, InputError
from cmae.data.decoding import IMAGE_EXTENSIONS

LIST_FORMATS = ("path_label", "videomae_v2", "rawframes", "csv")
UNLABELLED = -1  # the label of samples from a list without labels (pre-training only)
CSV_PATH_COLUMNS = ("path", "video", "video_path", "filename", "file")


@dataclass(frozen=True)
class Sample:
    path: Path
    label: int
    # a raw-frame folder: its frame count and the file name of frame k (k from frame_start)
    num_frames: int = 0
    frame_template: str = ""
    frame_start: int = 1

    @property
    def is_frame_folder(self) -> bool:
        return bool(self.frame_template)


def _integer(text: str, what: str, where: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise InputError(f"{where}: {what} {text!r} is not an integer") from None


def _is_integer(text: str) -> bool:
    return re.fullmatch(r"[+-]?\d+", text) is not None


def detect_list_format(first_line: str) -> str | None:
    """The format a list's first data line reads as, or None when it fits none."""
    if "," in first_line and first_line.split(",")[0].strip().lower() in CSV_PATH_COLUMNS:
        return "csv"
    fields = first_line.split()
    if len(fields) >= 3 and _is_integer(fields[-2]) and _is_integer(fields[-1]):
        return "videomae_v2" if fields[-1] == "-1" else "rawframes"
    if len(fields) >= 2 and _is_integer(fields[-1]):
        return "path_label"
    return None


def _parse_line(line: str, fmt: str, where: str, template: str) -> tuple[str, int, int, str]:
    """(path, label, num_frames, frame_template) of one whitespace-separated line; paths may hold spaces."""
    if fmt == "path_label":
        parts = line.rsplit(maxsplit=1)
        if len(parts) != 2:
            raise InputError(f"{where}: expected '<path> <label>', got {line!r}")
        return parts[0], _integer(parts[1], "label", where), 0, ""
    parts = line.rsplit(maxsplit=2)
    if len(parts) != 3:
        shape = "<path> 0 -1" if fmt == "videomae_v2" else "<frame_dir> <total_frames> <label>"
        raise InputError(f"{where}: expected '{shape}' ({fmt} list), got {line!r}")
    path, second, third = parts
    if fmt == "videomae_v2":
        _integer(second, "start index", where)
        if _integer(third, "total frames", where) != -1:
            raise InputError(f"{where}: a videomae_v2 line holds '<video> <start> -1'; raw-frame folders "
                             f"('<dir> <start> <total>') are not read: list them as rawframes, got {line!r}")
        return path, UNLABELLED, 0, ""
    total = _integer(second, "total_frames", where)
    if total <= 0:
        raise InputError(f"{where}: total_frames must be positive, got {total}")
    return path, _integer(third, "label", where), total, template


def _read_csv(list_file: Path, numbered: list[tuple[int, str]], template: str) -> list[tuple[str, int, int, str]]:
    """The rows (path, label, num_frames, frame_template) of a CSV list whose header names the
    columns; `numbered`: its (line number, line) pairs without blank and comment lines."""
    (header_line, header_text), *rest = numbered
    header = [name.strip().lower() for name in next(csv.reader([header_text]))]
    path_column = next((name for name in header if name in CSV_PATH_COLUMNS), None)
    if path_column is None:
        raise InputError(f"{list_file}:{header_line}: a CSV list needs a header with a path column "
                         f"({' / '.join(CSV_PATH_COLUMNS)}), got {header}")
    parsed = []
    for number, line in rest:
        row = next(csv.reader([line]))
        where = f"{list_file}:{number}"
        if len(row) != len(header):
            raise InputError(f"{where}: expected {len(header)} fields ({','.join(header)}), got {len(row)}")
        values = dict(zip(header, (value.strip() for value in row), strict=True))
        label = _integer(values["label"], "label", where) if "label" in values else UNLABELLED
        total = _integer(values["total_frames"], "total_frames", where) if "total_frames" in values else 0
        parsed.append((values[path_column], label, total, template if total else ""))
    return parsed


def read_list(list_file: str | Path, list_format: str = "auto", frame_template: str = "img_{:05d}.jpg",
              frame_start: int = 1) -> list[Sample]:
    """Parse a list file in `list_format` (see the module docstring); "auto" takes the format of
    the first data line and rejects later lines that also read as another format."""
    list_file = Path(list_file)
    if not list_file.is_file():
        raise FileNotFoundError(f"list file not found: {list_file}")
    if list_format not in ("auto", *LIST_FORMATS):
        raise ConfigError(f"data.list_format={list_format!r}; use one of auto, {', '.join(LIST_FORMATS)}")
    numbered = [(number, line.strip()) for number, line in enumerate(list_file.read_text().splitlines(), start=1)]
    numbered = [(number, line) for number, line in numbered if line and not line.startswith("#")]
    if not numbered:
        raise InputError(f"list file {list_file} has no samples")
    fmt = list_format
    if fmt == "auto":
        fmt = detect_list_format(numbered[0][1])
        if fmt is None:
            raise InputError(f"{list_file}:{numbered[0][0]}: cannot tell the list format of {numbered[0][1]!r}; "
                             f"expected '<path> <label>', '<path> 0 -1', '<frame_dir> <total_frames> <label>' "
                             "or a CSV header (set data.list_format)")
    if fmt == "csv":
        rows = _read_csv(list_file, numbered, frame_template)
    else:
        rows = []
        for number, line in numbered:
            where = f"{list_file}:{number}"
            if list_format == "auto" and (seen := detect_list_format(line)) not in (fmt, None):
                raise InputError(f"{where}: ambiguous line {line!r}: it reads as {seen} but line "
                                 f"{numbered[0][0]} as {fmt}; set data.list_format")
            rows.append(_parse_line(line, fmt, where, frame_template))
    samples = []
    for path, label, total, template in rows:
        path = Path(path)
        samples.append(Sample(path if path.is_absolute() else list_file.parent / path, label, total, template,
                              frame_start))
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


def is_shard_pattern(source: str | Path) -> bool:
    """Whether a data source names tar shards (`DIR/shard-{000000..000099}.tar`, or one .tar)."""
    return str(source).endswith(".tar")


def read_samples(source: str | Path, data: DataConfig | None = None, labelled: bool = False) -> list[Sample]:
    """A list file (in `data.list_format`) or an ImageFolder directory; `labelled`: raise when a
    sample has no label (an unlabelled pre-training list given to an evaluation)."""
    data = data or DataConfig()
    if is_shard_pattern(source):
        raise InputError(f"{source}: tar shards stream only as data.train of cmae pretrain; "
                         "give a list file or an image folder here")
    source = Path(source)
    if source.is_dir():
        return scan_image_folder(source)[0]
    samples = read_list(source, data.list_format, data.frame_template, data.frame_start)
    unlabelled = [sample for sample in samples if sample.label == UNLABELLED]
    if labelled and unlabelled:
        raise InputError(f"{source}: {len(unlabelled)} of {len(samples)} samples have no label (first: "
                         f"{unlabelled[0].path}); an evaluation needs a labelled list such as '<path> <label>'")
    return samples


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
