"""`cmae prepare`: cmae list files from the official annotations of Kinetics, SSv2, UCF101,
HMDB51 and ImageNet, with a report of what does not match.

    prepare_dataset("ucf101", root, output, split=1) -> report dict
        writes output/train.txt, val.txt (`<path> <label>`), classes.txt (label order),
        report.json, and missing.txt / orphans.txt / duplicates.txt (first names) when non-empty

Labels follow each data set's conventional order, the one published checkpoints and the
official code use: Kinetics and HMDB51 sorted class names, SSv2 `labels.json`, UCF101
`classInd.txt` (minus one), ImageNet sorted synsets (torchvision's ImageFolder).
Files are found by their name stem anywhere under the root, so per-class and flat
folders both work; listed paths are absolute.
"""

from __future__ import annotations

import contextlib
import csv
import json
import os
import re
import sys
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from cmae.config import InputError
from cmae.data.decoding import IMAGE_EXTENSIONS

VIDEO_EXTENSIONS = (".mp4", ".webm", ".mkv", ".avi", ".mov", ".m4v")
EXPECTED_CLASSES = {"kinetics": (400, 600, 700), "ssv2": (174,), "ucf101": (101,), "hmdb51": (51,),
                    "imagenet": (1000,)}
SPLITS = ("train", "val")
LISTED_NAMES = 100  # names written to missing.txt / orphans.txt / duplicates.txt


@dataclass
class Annotations:
    """A data set's annotations, resolved against the files found under its root."""

    classes: list[str]
    rows: dict[str, list[tuple[str, int]]]  # split -> (file stem, label), in annotation order
    files: dict[str, list[Path]]  # stem -> the files with that stem
    unused: list[str] = field(default_factory=list)  # stems the annotations name for no split (HMDB's 0 flags)


def index_files(root: Path, extensions: tuple[str, ...]) -> dict[str, list[Path]]:
    """Stem -> sorted files with one of `extensions` anywhere under `root`."""
    found: dict[str, list[Path]] = defaultdict(list)
    for dirpath, _, names in os.walk(root):
        for name in names:
            path = Path(dirpath) / name
            if path.suffix.lower() in extensions:
                found[path.stem].append(path)
    return {stem: sorted(paths) for stem, paths in found.items()}


def find_one(root: Path, pattern: str, what: str) -> Path:
    """The single file under `root` matching the glob `pattern`; a clear error when there is none."""
    matches = sorted(root.rglob(pattern))
    if not matches:
        raise InputError(f"{root}: no {what} ({pattern}) found under the root")
    return matches[0]


@contextlib.contextmanager
def reading(where: str):
    """Name the annotation row (file:line, or file: entry) a missing field or a bad number came from."""
    try:
        yield
    except InputError:
        raise
    except (KeyError, ValueError, TypeError, AttributeError) as error:
        raise InputError(f"{where}: malformed annotation ({type(error).__name__}: {error})") from None


def _read_lines(path: Path) -> list[tuple[int, list[str]]]:
    return [(number, line.split()) for number, line in enumerate(path.read_text().splitlines(), start=1)
            if line.strip()]


def kinetics(root: Path, split: int) -> Annotations:
    """CSV files `label,youtube_id,time_start,time_end,split` (train.csv, validate.csv or val.csv);
    clips `{youtube_id}_{start:06d}_{end:06d}.mp4`, or `{youtube_id}.mp4`, flat or per class."""
    tables = {}
    for path in sorted(root.rglob("*.csv")):
        name = path.stem.lower()
        split_name = "train" if "train" in name else "val" if "val" in name else None
        if split_name is None:  # test.csv: its labels are not released for every version
            continue
        with path.open(newline="") as handle:
            reader = csv.DictReader(handle)
            if not {"label", "youtube_id", "time_start", "time_end"} <= set(reader.fieldnames or ()):
                continue
            if split_name in tables:
                raise InputError(f"{path}: a second {split_name} annotation file (the first: {tables[split_name][0]})")
            tables[split_name] = (path, list(reader))
    for split_name in SPLITS:
        if split_name not in tables:
            raise InputError(f"{root}: no Kinetics {split_name} CSV (label,youtube_id,time_start,time_end,split)")
    classes = sorted({row["label"] for row in tables["train"][1]})
    label_of = {name: index for index, name in enumerate(classes)}
    files = index_files(root, VIDEO_EXTENSIONS)
    rows: dict[str, list[tuple[str, int]]] = {}
    for split_name, (path, table) in tables.items():
        rows[split_name] = []
        for number, row in enumerate(table, start=2):
            with reading(f"{path}:{number}"):
                if row["label"] not in label_of:
                    raise InputError(f"{path}:{number}: class {row['label']!r} does not occur in the train CSV")
                stem = f"{row['youtube_id']}_{int(float(row['time_start'])):06d}_{int(float(row['time_end'])):06d}"
                if stem not in files and row["youtube_id"] in files:  # downloads named by the video id alone
                    stem = row["youtube_id"]
                rows[split_name].append((stem, label_of[row["label"]]))
    return Annotations(classes, rows, files)


def ssv2(root: Path, split: int) -> Annotations:
    """labels.json (template -> index) and something-something-v2-{train,validation}.json
    (entries with id, template, label, placeholders); videos `{id}.webm`."""
    labels_path = find_one(root, "labels.json", "SSv2 labels file")
    with reading(str(labels_path)):
        templates = {name: int(index) for name, index in json.loads(labels_path.read_text()).items()}
    classes = [name for name, _ in sorted(templates.items(), key=lambda item: item[1])]
    rows = {}
    for split_name, file_split in (("train", "train"), ("val", "validation")):
        path = find_one(root, f"something-something-v2-{file_split}.json", f"SSv2 {file_split} annotations")
        rows[split_name] = []
        with reading(str(path)):
            entries = json.loads(path.read_text())
        for number, entry in enumerate(entries, start=1):
            with reading(f"{path}: entry {number}"):
                template = entry["template"].replace("[", "").replace("]", "")
                if template not in templates:
                    raise InputError(f"{path}: video {entry['id']}: template {template!r} is not in {labels_path}")
                rows[split_name].append((str(entry["id"]), templates[template]))
    return Annotations(classes, rows, index_files(root, VIDEO_EXTENSIONS))


def ucf101(root: Path, split: int) -> Annotations:
    """classInd.txt (`1 ApplyEyeMakeup`), trainlist0N.txt (`Class/v_..._gXX_cYY.avi 1`) and
    testlist0N.txt (`Class/v_..._gXX_cYY.avi`); the label is the class folder's index - 1."""
    class_file = find_one(root, "classInd.txt", "UCF101 class index")
    index_of = {}
    for number, fields in _read_lines(class_file):
        if len(fields) != 2:
            raise InputError(f"{class_file}:{number}: expected '<index> <class>', got {' '.join(fields)!r}")
        with reading(f"{class_file}:{number}"):
            index_of[fields[1]] = int(fields[0]) - 1
    classes = [name for name, _ in sorted(index_of.items(), key=lambda item: item[1])]
    rows = {}
    for split_name, prefix in (("train", "trainlist"), ("val", "testlist")):
        path = find_one(root, f"{prefix}0{split}.txt", f"UCF101 split {split} {prefix}")
        rows[split_name] = []
        for number, fields in _read_lines(path):
            folder = fields[0].split("/")[0]
            if folder not in index_of:
                raise InputError(f"{path}:{number}: class folder {folder!r} is not in {class_file}")
            with reading(f"{path}:{number}"):
                given = int(fields[1]) - 1 if len(fields) > 1 else index_of[folder]
            if given != index_of[folder]:
                raise InputError(f"{path}:{number}: label {fields[1]} disagrees with {class_file} "
                                 f"({folder} is {index_of[folder] + 1})")
            rows[split_name].append((Path(fields[0]).stem, index_of[folder]))
    return Annotations(classes, rows, index_files(root, VIDEO_EXTENSIONS))


def hmdb51(root: Path, split: int) -> Annotations:
    """Per-class `{class}_test_split{N}.txt` with `video.avi F` lines: F = 1 train, 2 test, 0 unused."""
    split_files = sorted(root.rglob(f"*_test_split{split}.txt"))
    if not split_files:
        raise InputError(f"{root}: no HMDB51 split files (*_test_split{split}.txt) under the root")
    classes = sorted(path.name[: -len(f"_test_split{split}.txt")] for path in split_files)
    rows: dict[str, list[tuple[str, int]]] = {"train": [], "val": []}
    unused: list[str] = []
    for path in split_files:
        label = classes.index(path.name[: -len(f"_test_split{split}.txt")])
        for number, fields in _read_lines(path):
            if len(fields) != 2 or fields[1] not in ("0", "1", "2"):
                raise InputError(f"{path}:{number}: expected '<video> <0|1|2>', got {' '.join(fields)!r}")
            if fields[1] == "0":
                unused.append(Path(fields[0]).stem)
                continue
            rows["train" if fields[1] == "1" else "val"].append((Path(fields[0]).stem, label))
    return Annotations(classes, rows, index_files(root, VIDEO_EXTENSIONS), unused)


def imagenet(root: Path, split: int, val_labels: Path | None = None) -> Annotations:
    """train/{synset}/*.JPEG, and val/ as the same tree or flat with a ground-truth file:
    Kaggle's LOC_val_solution.csv (ImageId,PredictionString) or `<file> <synset|index>` lines."""
    train, val = root / "train", root / "val"
    for folder in (train, val):
        if not folder.is_dir():
            raise InputError(f"{folder}: no such folder (ImageNet needs train/ and val/ under the root)")
    classes = sorted(entry.name for entry in train.iterdir() if entry.is_dir())
    label_of = {name: index for index, name in enumerate(classes)}
    rows = {"train": _tree_rows(train, label_of)}
    if any(entry.is_dir() for entry in val.iterdir()):
        rows["val"] = _tree_rows(val, label_of)
    else:
        rows["val"] = _imagenet_val_rows(val_labels or find_one(root, "LOC_val_solution.csv", "ground-truth file "
                                         "for the flat val folder (or give --val-labels)"), label_of)
    return Annotations(classes, rows, index_files(root, IMAGE_EXTENSIONS))


def _tree_rows(folder: Path, label_of: dict[str, int]) -> list[tuple[str, int]]:
    """(image stem, label) of a class-folder tree, labelled by the train tree's class order."""
    return [(path.stem, label_of[path.parent.name]) for path in sorted(folder.rglob("*"))
            if path.suffix.lower() in IMAGE_EXTENSIONS and path.parent.name in label_of]


def _imagenet_val_rows(path: Path, label_of: dict[str, int]) -> list[tuple[str, int]]:
    """(image stem, label) from a ground-truth file of the flat val folder."""
    rows = []
    text = path.read_text().splitlines()
    if text and text[0].startswith("ImageId,PredictionString"):  # Kaggle: the first box's synset
        for number, line in enumerate(text[1:], start=2):
            with reading(f"{path}:{number}"):
                image, boxes = line.split(",", 1)
            synset = boxes.split()[0] if boxes.split() else ""
            if synset not in label_of:
                raise InputError(f"{path}:{number}: synset {synset!r} is not a class folder of train/")
            rows.append((image, label_of[synset]))
        return rows
    for number, fields in _read_lines(path):
        if len(fields) != 2:
            raise InputError(f"{path}:{number}: expected '<file> <synset or sorted-synset index>', got "
                             f"{' '.join(fields)!r} (the devkit's ILSVRC2012_validation_ground_truth.txt "
                             "holds ILSVRC ids without file names: use LOC_val_solution.csv)")
        name, label = fields
        if re.fullmatch(r"\d+", label):
            index = int(label)
            if not 0 <= index < len(label_of):
                raise InputError(f"{path}:{number}: label {index} is outside 0..{len(label_of) - 1}")
        elif label in label_of:
            index = label_of[label]
        else:
            raise InputError(f"{path}:{number}: synset {label!r} is not a class folder of train/")
        rows.append((Path(name).stem, index))
    return rows


READERS: dict[str, Callable[..., Annotations]] = {
    "kinetics": kinetics, "ssv2": ssv2, "ucf101": ucf101, "hmdb51": hmdb51, "imagenet": imagenet}


def _write_names(path: Path, names: list[str]) -> None:
    if names:
        path.write_text("".join(f"{name}\n" for name in names[:LISTED_NAMES]))
    elif path.exists():
        path.unlink()


def resolve(annotations: Annotations) -> tuple[dict[str, list[tuple[Path, int]]], dict[str, list[str]]]:
    """Each split's (file, label) rows, and the names that did not match: annotation rows without
    a file (`missing`), files without a row (`orphans`), stems listed twice or found twice on disk
    (`duplicates`; the first row and the first file in sorted order are kept)."""
    listed: dict[str, list[tuple[Path, int]]] = {split: [] for split in annotations.rows}
    problems: dict[str, list[str]] = {"missing": [], "orphans": [], "duplicates": []}
    seen: dict[str, str] = dict.fromkeys(annotations.unused, "no split")
    for split, rows in annotations.rows.items():
        for stem, label in rows:
            if stem in seen:
                problems["duplicates"].append(f"{stem} (listed in {seen[stem]} and {split})")
                continue
            seen[stem] = split
            if stem not in annotations.files:
                problems["missing"].append(f"{split}: {stem}")
                continue
            listed[split].append((annotations.files[stem][0], label))
    for stem, paths in annotations.files.items():
        if stem not in seen:
            problems["orphans"].extend(str(path) for path in paths)
        elif len(paths) > 1:
            problems["duplicates"].append(f"{stem} (files: {', '.join(map(str, paths))})")
    return listed, problems


def write_list(path: Path, rows: list[tuple[Path, int]]) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(f"{file} {label}\n" for file, label in rows))
    os.replace(tmp, path)


def prepare_dataset(name: str, root: str | Path, output: str | Path, split: int = 1,
                    val_labels: str | Path | None = None, resize: Callable | None = None) -> dict:
    """Write the lists of data set `name` (a key of READERS) found under `root` to `output`.
    `resize(rows, root, output) -> (rows, summary)`: re-encode the listed videos first (`--resize`)."""
    root, output = Path(root).resolve(), Path(output)
    if not root.is_dir():
        raise FileNotFoundError(f"data set root not found: {root}")
    if split not in (1, 2, 3) or (split != 1 and name not in ("ucf101", "hmdb51")):
        raise InputError(f"--split {split}: UCF101 and HMDB51 have splits 1, 2 and 3; the others only 1")
    if resize is not None and name == "imagenet":
        raise InputError("--resize re-encodes videos; ImageNet's images are read as they are")
    extra = {"val_labels": Path(val_labels)} if name == "imagenet" and val_labels else {}
    annotations = READERS[name](root, split, **extra)
    output = output.resolve()  # an output inside the root (its resized copies) is not part of the data set
    annotations.files = {stem: kept for stem, paths in annotations.files.items()
                         if (kept := [path for path in paths if not path.is_relative_to(output)])}
    listed, problems = resolve(annotations)
    output.mkdir(parents=True, exist_ok=True)
    report = {"dataset": name, "root": str(root), "split": split, "classes": len(annotations.classes),
              "expected_classes": list(EXPECTED_CLASSES[name]),
              **{f"{split_name}_rows": len(rows) for split_name, rows in annotations.rows.items()},
              **{key: len(names) for key, names in problems.items()}, "unused_rows": len(annotations.unused)}
    if resize is not None:
        listed, report["resize"] = resize(listed, root, output)
    for split_name, rows in listed.items():
        write_list(output / f"{split_name}.txt", rows)
        report[f"{split_name}_listed"] = len(rows)
        report[f"{split_name}_labels_seen"] = len({label for _, label in rows})
    (output / "classes.txt").write_text("".join(f"{name}\n" for name in annotations.classes))
    for key, names in problems.items():
        _write_names(output / f"{key}.txt", names)
    (output / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    if len(annotations.classes) not in EXPECTED_CLASSES[name]:
        expected = " or ".join(map(str, EXPECTED_CLASSES[name]))
        print(f"WARNING: {len(annotations.classes)} classes found in the {name} annotations under {root}, but "
              f"{name} has {expected}: an incomplete download, or the wrong annotation files?", file=sys.stderr)
    return report
