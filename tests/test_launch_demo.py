"""`python -m launch.demo`: a bad setting is one error line, not a traceback."""

import subprocess
import sys

from tests.conftest import REPO_ROOT


def test_frames_zero_is_one_error_line():
    done = subprocess.run(
        [sys.executable, "-m", "launch.demo", "--frames", "0"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr, done.stderr
    assert done.stderr.strip().splitlines() == ["error: --frames 0: must be at least 1"]
