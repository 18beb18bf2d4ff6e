"""`cmae prepare` on miniature replicas of each data set's official layout and annotation files,
with short real videos (H.264 mp4, VP9 webm, MPEG-4 avi), then pre-training and a linear probe
on the lists it writes."""

import json
from pathlib import Path

import av
import numpy as np
import pytest
from PIL import Image

from cmae.cli import main
from cmae.data.decoding import open_video
from tests.helpers import TINY_INPUT, TINY_MODEL

CODECS = {".mp4": "libx264", ".webm": "libvpx-vp9", ".avi": "mpeg4"}


def write_clip(path: Path, size: tuple[int, int] = (40, 32), frames: int = 8) -> Path:
    """A short clip of moving noise in the codec its extension is known for."""
    path.parent.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(abs(hash(path.name)) % 2**32)
    texture = rng.integers(0, 256, (size[1], size[0] + frames, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream(CODECS[path.suffix], rate=10)
        stream.width, stream.height, stream.pix_fmt = *size, "yuv420p"
        for k in range(frames):
            container.mux(stream.encode(av.VideoFrame.from_ndarray(texture[:, k : k + size[0]].copy(), format="rgb24")))
        container.mux(stream.encode())
    return path


def read_rows(path: Path) -> dict[str, int]:
    """{file stem: label} of a written list."""
    rows = [line.rsplit(" ", 1) for line in path.read_text().splitlines()]
    assert all(Path(file).is_absolute() for file, _ in rows)
    return {Path(file).stem: int(label) for file, label in rows}


def prepare(*args: str) -> None:
    main(["prepare", *args])


def kinetics_replica(root: Path) -> dict:
    """Kinetics-400 as the CVDF download lays it out: annotations/{train,validate}.csv, clips
    `{youtube_id}_{start:06d}_{end:06d}.mp4`, train per class, val flat; one row's clip is missing."""
    train = [("zumba", "zz0", 10, 20), ("abseiling", "ab0", 0, 10), ("air drumming", "ad0", 5, 15),
             ("zumba", "zz1", 30, 40), ("abseiling", "ab1", 1, 11), ("air drumming", "ad1", 7, 17)]
    val = [("air drumming", "ad9", 0, 10), ("zumba", "zz9", 12, 22), ("abseiling", "ab9", 3, 13)]
    for name, rows in (("train", train), ("validate", val)):
        lines = ["label,youtube_id,time_start,time_end,split"]
        lines += [f'"{label}",{vid},{start},{end},{name}' for label, vid, start, end in rows]
        (root / "annotations").mkdir(parents=True, exist_ok=True)
        (root / "annotations" / f"{name}.csv").write_text("\n".join(lines) + "\n")
        for label, vid, start, end in rows:
            if vid != "ad1":  # listed, never downloaded
                folder = root / "train" / label if name == "train" else root / "val"
                write_clip(folder / f"{vid}_{start:06d}_{end:06d}.mp4")
    write_clip(root / "val" / "stray_000000_000010.mp4")  # a clip no row names
    return {"classes": ["abseiling", "air drumming", "zumba"],
            "train": {"zz0_000010_000020": 2, "ab0_000000_000010": 0, "ad0_000005_000015": 1,
                      "zz1_000030_000040": 2, "ab1_000001_000011": 0},
            "val": {"ad9_000000_000010": 1, "zz9_000012_000022": 2, "ab9_000003_000013": 0},
            "missing": 1, "orphans": 1}


def ssv2_replica(root: Path) -> dict:
    """labels.json, something-something-v2-{train,validation}.json, {id}.webm (VP9)."""
    labels = {"Holding something": "0", "Pushing something from left to right": "1",
              "Putting something on a surface": "2"}
    (root / "labels").mkdir(parents=True)
    (root / "labels" / "labels.json").write_text(json.dumps(labels))
    entries = {"train": [("101", "Pushing [something] from left to right", "pushing pen from left to right",
                          ["pen"]),
                         ("102", "Holding [something]", "holding cup", ["cup"]),
                         ("103", "Putting [something] on a surface", "putting a box on a surface", ["a box"]),
                         ("104", "Holding [something]", "holding phone", ["phone"])],
               "validation": [("201", "Putting [something] on a surface", "putting key on a surface", ["key"]),
                              ("202", "Pushing [something] from left to right", "pushing mug from left to right",
                               ["mug"])]}
    for split, rows in entries.items():
        (root / "labels" / f"something-something-v2-{split}.json").write_text(json.dumps(
            [{"id": vid, "template": template, "label": label, "placeholders": things}
             for vid, template, label, things in rows]))
        for vid, *_ in rows:
            write_clip(root / "20bn-something-something-v2" / f"{vid}.webm")
    return {"classes": list(labels), "train": {"101": 1, "102": 0, "103": 2, "104": 0},
            "val": {"201": 2, "202": 1}, "missing": 0, "orphans": 0}


def ucf101_replica(root: Path, size: tuple[int, int] = (40, 32)) -> dict:
    """ucfTrainTestlist/{classInd,trainlist01,testlist01}.txt and UCF-101/{Class}/v_*.avi, with
    the real set's quirk: class folder HandstandPushups, files v_HandStandPushups_*."""
    lists = root / "ucfTrainTestlist"
    lists.mkdir(parents=True)
    (lists / "classInd.txt").write_text("1 ApplyEyeMakeup\n2 Archery\n3 HandstandPushups\n")
    train = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g08_c01.avi 1", "Archery/v_Archery_g08_c02.avi 2",
             "HandstandPushups/v_HandStandPushups_g08_c01.avi 3", "Archery/v_Archery_g09_c01.avi 2"]
    test = ["ApplyEyeMakeup/v_ApplyEyeMakeup_g01_c01.avi", "HandstandPushups/v_HandStandPushups_g01_c03.avi"]
    (lists / "trainlist01.txt").write_text("\r\n".join(train) + "\r\n")  # the official files end lines with CRLF
    (lists / "testlist01.txt").write_text("\r\n".join(test) + "\r\n")
    for line in train + test:
        write_clip(root / "UCF-101" / line.split()[0], size)
    return {"classes": ["ApplyEyeMakeup", "Archery", "HandstandPushups"],
            "train": {"v_ApplyEyeMakeup_g08_c01": 0, "v_Archery_g08_c02": 1, "v_HandStandPushups_g08_c01": 2,
                      "v_Archery_g09_c01": 1},
            "val": {"v_ApplyEyeMakeup_g01_c01": 0, "v_HandStandPushups_g01_c03": 2}, "missing": 0, "orphans": 0}


def hmdb51_replica(root: Path) -> dict:
    """testTrainMulti_7030_splits/{class}_test_split1.txt with flags 1 (train), 2 (test), 0 (unused)."""
    flags = {"brush_hair": [("April_09_brush_hair_u_nm_np1_ba_goo_0.avi", 1),
                            ("Blonde_brush_hair_f_nm_np2_le_med_1.avi", 2), ("Brushing_hair_u_cm_np1_fr_goo_2.avi", 0)],
             "cartwheel": [("Acrobacias_cartwheel_f_cm_np1_ba_med_0.avi", 2),
                           ("Bodenturnen_cartwheel_f_cm_np1_le_med_1.avi", 1), ("Cartwheel_f_cm_np1_ri_bad_2.avi", 1)]}
    splits = root / "testTrainMulti_7030_splits"
    splits.mkdir(parents=True)
    for name, rows in flags.items():
        (splits / f"{name}_test_split1.txt").write_text("".join(f"{video} {flag} \n" for video, flag in rows))
        for video, _ in rows:
            write_clip(root / "hmdb51_org" / name / video)
    return {"classes": ["brush_hair", "cartwheel"],
            "train": {"April_09_brush_hair_u_nm_np1_ba_goo_0": 0, "Bodenturnen_cartwheel_f_cm_np1_le_med_1": 1,
                      "Cartwheel_f_cm_np1_ri_bad_2": 1},
            "val": {"Blonde_brush_hair_f_nm_np2_le_med_1": 0, "Acrobacias_cartwheel_f_cm_np1_ba_med_0": 1},
            "missing": 0, "orphans": 0, "unused_rows": 1}


def imagenet_replica(root: Path) -> dict:
    """train/{synset}/*.JPEG, a flat val/ folder and Kaggle's LOC_val_solution.csv."""
    synsets = ["n01440764", "n01443537", "n01484850"]
    for label, synset in enumerate(synsets):
        for k in range(2):
            (root / "train" / synset).mkdir(parents=True, exist_ok=True)
            Image.new("RGB", (40, 36), (80 * label, 40 * k, 90)).save(root / "train" / synset / f"{synset}_{k}.JPEG")
    (root / "val").mkdir()
    truth = {"ILSVRC2012_val_00000001": "n01484850", "ILSVRC2012_val_00000002": "n01440764",
             "ILSVRC2012_val_00000003": "n01443537"}
    for image in truth:
        Image.new("RGB", (36, 40), (9, 9, 9)).save(root / "val" / f"{image}.JPEG")
    (root / "LOC_val_solution.csv").write_text("ImageId,PredictionString\n" + "".join(
        f"{image},{synset} 10 20 30 40 {synset} 5 5 9 9\n" for image, synset in truth.items()))
    return {"classes": synsets,
            "train": {f"{s}_{k}": label for label, s in enumerate(synsets) for k in range(2)},
            "val": {"ILSVRC2012_val_00000001": 2, "ILSVRC2012_val_00000002": 0, "ILSVRC2012_val_00000003": 1},
            "missing": 0, "orphans": 0}


REPLICAS = {"kinetics": kinetics_replica, "ssv2": ssv2_replica, "ucf101": ucf101_replica, "hmdb51": hmdb51_replica,
            "imagenet": imagenet_replica}


@pytest.mark.parametrize("dataset", list(REPLICAS))
def test_prepare_writes_the_official_labels(tmp_path, capsys, dataset):
    expected = REPLICAS[dataset](tmp_path / "root")
    prepare(dataset, "--root", str(tmp_path / "root"), "--output", str(tmp_path / "lists"))
    out = tmp_path / "lists"
    assert read_rows(out / "train.txt") == expected["train"]
    assert read_rows(out / "val.txt") == expected["val"]
    assert (out / "classes.txt").read_text().splitlines() == expected["classes"]
    report = json.loads((out / "report.json").read_text())
    for key in ("missing", "orphans", "unused_rows"):
        assert report.get(key, 0) == expected.get(key, 0), key
    assert report["duplicates"] == 0
    if expected["missing"]:
        assert (out / "missing.txt").read_text() == "train: ad1_000007_000017\n"
    # a miniature set never has the real class count: the command says so, loudly
    assert f"WARNING: {len(expected['classes'])} classes found in the {dataset} annotations" in capsys.readouterr().err


def test_pretrain_and_linprobe_run_on_prepared_lists(tmp_path):
    """The lists of each video replica (H.264, VP9 webm, MPEG-4 avi) through pre-training and a
    linear probe; ImageNet's through a probe of a random image encoder."""
    tiny = [*TINY_INPUT, *TINY_MODEL, "data.num_frames=4", "train.batch_size=2", "train.epochs=1",
            "train.warmup_epochs=0", "eval.probe_epochs=2", "eval.batch_size=4"]
    for dataset in ("kinetics", "ssv2", "ucf101", "hmdb51"):
        REPLICAS[dataset](tmp_path / dataset)
        lists, run = tmp_path / f"{dataset}-lists", tmp_path / f"{dataset}-run"
        prepare(dataset, "--root", str(tmp_path / dataset), "--output", str(lists))
        data = [f"data.train={lists / 'train.txt'}", f"data.val={lists / 'val.txt'}"]
        main(["pretrain", "--config", "configs/demo/videomae.yaml", "--output", str(run), *tiny, *data])
        main(["linprobe", "--checkpoint", str(run / "checkpoint-last.pt"), "--output", str(run / "probe"), *data])
        assert json.loads((run / "probe" / "summary.json").read_text())["top1"] >= 0
    imagenet_replica(tmp_path / "imagenet")
    prepare("imagenet", "--root", str(tmp_path / "imagenet"), "--output", str(tmp_path / "in-lists"))
    main(["linprobe", "--checkpoint", "random", "--config", "configs/demo/mae.yaml", "--output",
          str(tmp_path / "in-probe"), *tiny, "data.num_frames=1", "model.tubelet_size=1",
          f"data.train={tmp_path / 'in-lists' / 'train.txt'}", f"data.val={tmp_path / 'in-lists' / 'val.txt'}"])
    assert json.loads((tmp_path / "in-probe" / "summary.json").read_text())["top1"] >= 0


def test_resize_counts_a_truncated_file_and_resumes(tmp_path, capsys):
    ucf101_replica(tmp_path / "root", size=(128, 96))
    broken = tmp_path / "root" / "UCF-101" / "Archery" / "v_Archery_g08_c02.avi"
    broken.write_bytes(broken.read_bytes()[:300])
    args = ["ucf101", "--root", str(tmp_path / "root"), "--output", str(tmp_path / "out"), "--resize", "64",
            "--workers", "2"]
    prepare(*args)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {key: report["resize"][key] for key in ("done", "skipped", "failed")} == {"done": 5, "skipped": 0, "failed": 1}
    assert "v_Archery_g08_c02.avi" in (tmp_path / "out" / "failed.txt").read_text()
    rows = read_rows(tmp_path / "out" / "train.txt") | read_rows(tmp_path / "out" / "val.txt")
    assert len(rows) == 5 and "v_Archery_g08_c02" not in rows
    for line in (tmp_path / "out" / "train.txt").read_text().splitlines():
        path = Path(line.rsplit(" ", 1)[0])
        assert path.is_relative_to(tmp_path / "out" / "videos") and path.suffix == ".mp4"
        with open_video(path) as reader:
            assert tuple(reader.get_frames([0]).shape[2:]) == (64, 86)  # 96x128 -> short side 64, even width
    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "out" / "videos").rglob("*.mp4")}
    prepare(*args)
    report = json.loads((tmp_path / "out" / "report.json").read_text())
    assert {key: report["resize"][key] for key in ("done", "skipped", "failed")} == {"done": 0, "skipped": 5, "failed": 1}
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    assert "resize failures 1" in capsys.readouterr().out


@pytest.mark.parametrize("dataset, annotation, row, message", [
    ("ucf101", "ucfTrainTestlist/trainlist01.txt", "Archery/v_Archery_g10_c01.avi 3\r\n",
     "trainlist01.txt:5: label 3 disagrees with"),
    ("kinetics", "annotations/train.csv", "zumba,zz5,soon,40,train\n",
     "train.csv:8: malformed annotation (ValueError: could not convert string to float: 'soon')"),
])
def test_bad_annotation_rows_are_named(tmp_path, capsys, dataset, annotation, row, message):
    REPLICAS[dataset](tmp_path / "root")
    with (tmp_path / "root" / annotation).open("a") as handle:
        handle.write(row)
    with pytest.raises(SystemExit) as stop:
        prepare(dataset, "--root", str(tmp_path / "root"), "--output", str(tmp_path / "out"))
    assert stop.value.code == 2
    assert message in capsys.readouterr().err


def test_a_missing_split_file_is_named(tmp_path, capsys):
    ucf101_replica(tmp_path / "root")
    with pytest.raises(SystemExit):
        prepare("ucf101", "--root", str(tmp_path / "root"), "--output", str(tmp_path / "out"), "--split", "2")
    assert "no UCF101 split 2 trainlist (trainlist02.txt) found" in capsys.readouterr().err


def test_duplicates_are_reported_and_listed_once(tmp_path):
    kinetics_replica(tmp_path / "root")
    with (tmp_path / "root" / "annotations" / "validate.csv").open("a") as handle:
        handle.write("zumba,zz0,10,20,validate\n")  # a training clip also in validation: a leak
    write_clip(tmp_path / "root" / "train" / "copies" / "ab0_000000_000010.mp4")  # one clip twice on disk
    prepare("kinetics", "--root", str(tmp_path / "root"), "--output", str(tmp_path / "out"))
    assert json.loads((tmp_path / "out" / "report.json").read_text())["duplicates"] == 2
    assert "zz0_000010_000020" not in read_rows(tmp_path / "out" / "val.txt")
    text = (tmp_path / "out" / "duplicates.txt").read_text()
    assert "zz0_000010_000020 (listed in train and val)" in text and "ab0_000000_000010 (files: " in text


def test_an_output_inside_the_root_is_not_read_as_data(tmp_path):
    kinetics_replica(tmp_path / "k400")
    args = ["kinetics", "--root", str(tmp_path / "k400"), "--output", str(tmp_path / "k400" / "lists"),
            "--resize", "16", "--workers", "1"]
    prepare(*args)
    first = (tmp_path / "k400" / "lists" / "train.txt").read_text()
    prepare(*args)  # its resized copies now lie under the root
    report = json.loads((tmp_path / "k400" / "lists" / "report.json").read_text())
    assert (report["duplicates"], report["orphans"], report["resize"]["skipped"]) == (0, 1, 8)
    assert (tmp_path / "k400" / "lists" / "train.txt").read_text() == first


def test_check_names_a_listed_file_that_does_not_decode(tmp_path, capsys):
    ucf101_replica(tmp_path / "root")
    bad = tmp_path / "root" / "UCF-101" / "Archery" / "v_Archery_g09_c01.avi"
    bad.write_bytes(bad.read_bytes()[:300])  # truncated mid-stream
    with pytest.raises(SystemExit) as stop:
        prepare("ucf101", "--root", str(tmp_path / "root"), "--output", str(tmp_path / "out"), "--check")
    assert stop.value.code == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[-1] == "1 of 6 files do not decode" and lines[-2].startswith(str(bad)), lines[-3:]
