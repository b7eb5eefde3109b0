"""The test command's own machinery: xdist's loadgroup keeps an xdist_group on one worker with this pytest."""

import pathlib
import re
import subprocess
import sys

GROUPED = """
import os
import pytest

pytestmark = pytest.mark.xdist_group("shared")


@pytest.mark.parametrize("case", range(6))
def test_grouped(case):
    print(os.environ["PYTEST_XDIST_WORKER"])
"""

FREE = """
@pytest.mark.parametrize("case", range(6))
def test_free(case):
    pass
"""


def run_generated_suite(folder, *options) -> subprocess.CompletedProcess:
    """The tests written into `folder`, run by pytest on two xdist workers, verbose."""
    command = [sys.executable, "-m", "pytest", "-n", "2", "-p", "no:cacheprovider", "-v", *options, str(folder)]
    return subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=300)


def test_loadgroup_runs_a_group_on_one_worker(tmp_path):
    """pytest 9.2 with xdist 3.8 ignores the groups (setup.cfg pins pytest below it): every module fixture the
    suite shares through a group would then be built once per worker."""
    (tmp_path / "test_grouped.py").write_text(GROUPED)
    (tmp_path / "test_free.py").write_text("import pytest\n" + FREE)
    result = run_generated_suite(tmp_path, "--dist", "loadgroup", "-p", "no:randomly")
    assert result.returncode == 0, result.stdout[-3000:]
    workers = re.findall(r"\[(gw\d)\] .*PASSED .*test_grouped\.py::test_grouped\[\d\]@shared", result.stdout)
    assert len(workers) == 6, result.stdout[-3000:]
    assert len(set(workers)) == 1, workers
    assert len(re.findall(r"PASSED .*test_free\.py::test_free", result.stdout)) == 6


CRASHING = """
import os
import signal

import pytest


@pytest.mark.parametrize("case", range(8))
def test_case(case):
    if case == 2:
        os.kill(os.getpid(), signal.SIGSEGV)  # what XLA does to a worker when it runs out of memory maps
"""


def test_a_crashed_worker_fails_the_run_at_once_naming_its_test(tmp_path):
    """setup.cfg's options (`--max-worker-restart=0`): a crash is a failed run with the test named, not a hang."""
    (tmp_path / "test_crashing.py").write_text(CRASHING)
    setup_cfg = pathlib.Path(__file__).resolve().parents[1] / "setup.cfg"
    result = run_generated_suite(tmp_path, "-c", str(setup_cfg), "--rootdir", str(tmp_path))
    assert result.returncode == 1, result.stdout[-3000:]
    assert "crashed while running 'test_crashing.py::test_case[2]'" in result.stdout, result.stdout[-3000:]
    assert "worker restarting disabled" in result.stdout, result.stdout[-3000:]


def test_releasing_compiled_code_frees_the_memory_maps_of_the_executables():
    """conftest's guard against a worker running out of memory maps (vm.max_map_count) late in the suite."""
    import jax
    import jax.numpy as jnp

    from tests.conftest import memory_map_count, release_compiled_code

    for k in range(40):  # 40 executables, each with memory maps of its own
        jax.jit(lambda x, k=k: jnp.sin(x) * k)(jnp.ones(k + 1))
    held = memory_map_count()
    assert not release_compiled_code(limit=held + 1_000)  # under the limit: nothing is dropped
    assert memory_map_count() >= held - 10
    assert release_compiled_code(limit=held // 2)
    assert memory_map_count() < held - 40  # the executables' maps went with the caches
