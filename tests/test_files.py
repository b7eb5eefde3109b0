"""`flmjax.files.write_atomically`: a failed write leaves the old file whole and no temporary behind."""

import numpy as np
import pytest

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
