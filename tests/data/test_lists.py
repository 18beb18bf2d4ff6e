from pathlib import Path

import pytest
from PIL import Image

from cmae.data.lists import read_list, read_samples, scan_image_folder


def test_list_paths_are_relative_to_the_list(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "list.txt").write_text("a.mp4 3\n\n# comment\nmy clip.mp4 1\n/abs/b.mp4 0\n")
    samples = read_list(tmp_path / "sub" / "list.txt")
    assert [(s.path, s.label) for s in samples] == [
        (tmp_path / "sub" / "a.mp4", 3), (tmp_path / "sub" / "my clip.mp4", 1), (Path("/abs/b.mp4"), 0)]


@pytest.mark.parametrize("line, message", [("a.mp4", r"list.txt:1: expected '<path> <label>'"),
                                           ("a.mp4 x", r"list.txt:1: label 'x' is not an integer")])
def test_bad_lines_name_file_and_line(tmp_path, line, message):
    (tmp_path / "list.txt").write_text(line + "\n")
    with pytest.raises(ValueError, match=message):
        read_list(tmp_path / "list.txt")


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
