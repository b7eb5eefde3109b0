"""`flmjax.files`: a failed write leaves the old file or folder whole and no temporary behind; outputs apart
from inputs."""

import os
import pathlib

import numpy as np
import pytest

from flmjax import files
from flmjax.files import write_atomically


def test_write_replaces_the_file_and_keeps_the_extension(tmp_path):
    path = tmp_path / "sub" / "codes.npy"
    write_atomically(path, lambda tmp: np.save(tmp, np.arange(3)))  # np.save would add .npy to a bare name
    np.testing.assert_array_equal(np.load(path), np.arange(3))
    assert sorted(p.name for p in path.parent.iterdir()) == ["codes.npy"]


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "out.json"
    path.write_text("old")

    def fail(tmp):
        with open(tmp, "w") as f:
            f.write("half")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        write_atomically(path, fail)
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["out.json"]


def test_replace_folder_leaves_the_old_folder_whole_when_the_build_fails(tmp_path):
    target = tmp_path / "out"
    target.mkdir()
    (target / "old.txt").write_text("old")

    def failing_build(staging):
        (pathlib.Path(staging) / "half.txt").write_text("half")
        raise RuntimeError("disk full")

    with pytest.raises(RuntimeError, match="disk full"):
        files.replace_folder(target, failing_build)
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(target) == ["old.txt"]
    files.replace_folder(target, lambda staging: (pathlib.Path(staging) / "new.txt").write_text("new"))
    assert sorted(os.listdir(tmp_path)) == ["out"] and os.listdir(target) == ["new.txt"]


@pytest.mark.parametrize(
    "output, refused",
    [("run", True), ("run/stage", True), ("run/stage/export", True), ("run/other", False), ("elsewhere", False)],
)
def test_an_output_that_is_contains_or_sits_inside_an_input_is_refused(tmp_path, output, refused):
    if refused:
        with pytest.raises(files.OverlapError, match="the input"):
            files.check_apart(tmp_path / output, [tmp_path / "run" / "stage"])
    else:
        files.check_apart(tmp_path / output, [tmp_path / "run" / "stage"])
