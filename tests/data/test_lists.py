import re
from pathlib import Path

import pytest
from PIL import Image

from cmae.config import InputError
from cmae.data.lists import UNLABELLED, read_list, read_samples, scan_image_folder


def test_list_paths_are_relative_to_the_list(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.txt").write_text("a.mp4 3\n\n# comment\nmy clip.mp4 1\n/abs/b.mp4 0\n")
    samples = read_list(tmp_path / "sub" / "list.txt")
    assert [(s.path, s.label) for s in samples] == [
        (tmp_path / "sub" / "a.mp4", 3), (tmp_path / "sub" / "my clip.mp4", 1), (Path("/abs/b.mp4"), 0)]


def test_each_list_format_reads_its_fields(tmp_path):
    (tmp_path / "v2.txt").write_text("a.mp4 0 -1\n/abs/b c.mp4 0 -1\n")
    (tmp_path / "frames.txt").write_text("clips/x 30 2\nclips/y 12 0\n")
    (tmp_path / "list.csv").write_text("path,label,total_frames\nclips/x,2,30\n\"clips/a, b\",1,8\n")
    (tmp_path / "videos.csv").write_text("video,label\na.mp4,4\n")
    (tmp_path / "tabs.txt").write_text("a.mp4\t4\n")
    rows = {name: [(s.path, s.label, s.num_frames, s.frame_template) for s in read_list(tmp_path / name)]
            for name in ("v2.txt", "frames.txt", "list.csv", "videos.csv", "tabs.txt")}
    assert rows["v2.txt"] == [(tmp_path / "a.mp4", UNLABELLED, 0, ""), (Path("/abs/b c.mp4"), UNLABELLED, 0, "")]
    assert rows["frames.txt"] == [(tmp_path / "clips/x", 2, 30, "img_{:05d}.jpg"),
                                  (tmp_path / "clips/y", 0, 12, "img_{:05d}.jpg")]
    assert rows["list.csv"] == [(tmp_path / "clips/x", 2, 30, "img_{:05d}.jpg"),
                                (tmp_path / "clips/a, b", 1, 8, "img_{:05d}.jpg")]
    assert rows["videos.csv"] == rows["tabs.txt"] == [(tmp_path / "a.mp4", 4, 0, "")]
    # a chosen format overrides detection: `clip 12 3` is the path "clip 12" with label 3
    (tmp_path / "spaces.txt").write_text("clip 12 3\n")
    assert read_list(tmp_path / "spaces.txt", "path_label")[0].path == tmp_path / "clip 12"
    assert read_list(tmp_path / "frames.txt", frame_template="{:06d}.png", frame_start=0)[0].frame_start == 0


BAD_LISTS = [  # (text, list_format, line, message)
    ("a.mp4\n", "auto", 1, "cannot tell the list format"),
    ("a.mp4 0\nb.mp4\n", "auto", 2, "expected '<path> <label>'"),
    ("a.mp4 x\n", "path_label", 1, "label 'x' is not an integer"),
    ("a.mp4 1\nclip 12 3\n", "auto", 2, "ambiguous line 'clip 12 3': it reads as rawframes"),
    ("a.mp4 0 -1\nb.mp4 0 300\n", "auto", 2, "ambiguous line"),
    ("a.mp4 0 300\n", "videomae_v2", 1, "raw-frame folders"),
    ("a.mp4 0\n", "videomae_v2", 1, "expected '<path> 0 -1'"),
    ("clips/x 0 3\n", "rawframes", 1, "total_frames must be positive"),
    ("clips/x ten 3\n", "rawframes", 1, "total_frames 'ten' is not an integer"),
    ("path,label\na.mp4,dog\n", "auto", 2, "label 'dog' is not an integer"),
    ("path,label\na.mp4\n", "csv", 2, "expected 2 fields"),
    ("path,label\n\n# held out\na.mp4,1\nb.mp4,x\n", "csv", 5, "label 'x' is not an integer"),
    ("name,label\na.mp4,1\n", "csv", 1, "needs a header with a path column"),
]


@pytest.mark.parametrize("text, list_format, line, message", BAD_LISTS)
def test_malformed_lists_name_file_and_line(tmp_path, text, list_format, line, message):
    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(InputError, match=re.escape(f"list.txt:{line}: ") + ".*" + re.escape(message)):
        read_list(tmp_path / "list.txt", list_format)


def test_unlabelled_lists_are_refused_where_labels_are_needed(tmp_path):
    (tmp_path / "v2.txt").write_text("a.mp4 0 -1\n")
    assert read_samples(tmp_path / "v2.txt")[0].label == UNLABELLED
    with pytest.raises(InputError, match="1 of 1 samples have no label"):
        read_samples(tmp_path / "v2.txt", labelled=True)
    with pytest.raises(InputError, match="tar shards stream only as data.train"):
        read_samples(tmp_path / "shard-{000000..000003}.tar")


def test_missing_and_empty_lists(tmp_path):
    with pytest.raises(FileNotFoundError, match="list file not found"):
        read_list(tmp_path / "nope.txt")
    (tmp_path / "empty.txt").write_text("\n")
    with pytest.raises(ValueError, match="no samples"):
        read_list(tmp_path / "empty.txt")


def test_image_folder(tmp_path):
    for cls, count in (("cat", 2), ("ant", 1)):
        (tmp_path / cls).mkdir()
        for i in range(count):
            Image.new("RGB", (8, 8)).save(tmp_path / cls / f"{i}.png")
    (tmp_path / "cat" / "notes.txt").write_text("not an image")
    samples, classes = scan_image_folder(tmp_path)
    assert classes == ["ant", "cat"]
    assert [(s.path.name, s.label) for s in samples] == [("0.png", 0), ("0.png", 1), ("1.png", 1)]
    assert read_samples(tmp_path) == samples


def test_cli_reports_a_malformed_line_without_traceback(tmp_path):
    import subprocess
    import sys

    (tmp_path / "list.txt").write_text("a.mp4 0\nb.mp4\n")
    result = subprocess.run(
        [sys.executable, "-m", "cmae.cli", "pretrain", "--config", "configs/demo/videomae.yaml",
         "--output", str(tmp_path / "run"), f"data.train={tmp_path / 'list.txt'}"],
        capture_output=True, text=True)
    assert result.returncode == 2
    assert f"cmae pretrain: error: {tmp_path / 'list.txt'}:2: expected '<path> <label>'" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("text, list_format, line, message", BAD_LISTS)
def test_the_command_reports_malformed_lists_with_status_2(tmp_path, capsys, text, list_format, line, message):
    from cmae.cli import main

    (tmp_path / "list.txt").write_text(text)
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--config", "configs/demo/videomae.yaml", "--output", str(tmp_path / "run"),
              f"data.train={tmp_path / 'list.txt'}", f"data.list_format={list_format}"])
    assert exit_info.value.code == 2
    assert f"cmae pretrain: error: {tmp_path / 'list.txt'}:{line}: " in capsys.readouterr().err
