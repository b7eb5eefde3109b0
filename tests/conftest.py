"""Test setup: 8 fake CPU devices, no persistent compilation cache, the golden checkpoints, and the order xdist
hands tests out in."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (the TPU compiler the launch.aot tests use) takes a lockfile; the xdist workers and the CLIs they start
# may each load it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# No persistent compilation cache, here or in the CLIs, servers and notebook kernels the tests start (they inherit
# this; `launch.train` otherwise caches in ~/.cache/flmjax/jax). With one, jax 0.10.2's CPU
# `executable.serialize()`, run on every cache write, crashed an xdist worker late in the suite (SIGSEGV / SIGABRT
# in `put_executable_and_time`) in CI and here, and xdist then hung replacing the worker.
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"

import functools  # noqa: E402
import pathlib  # noqa: E402

import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO_ROOT.parent / "shared" / "golden"
GOLDEN_MODELS = ("release_like", "variant")


def golden_path(*parts: str) -> pathlib.Path:
    """A path under ../shared/golden; skips locally when it is absent, fails under CI."""
    path = GOLDEN_DIR.joinpath(*parts)
    if not path.exists():
        message = f"golden data missing: {path} (expected ../shared/golden beside the repo)"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


@functools.cache
def golden_model(path: pathlib.Path):
    """(config, params) of a golden released-format checkpoint, loaded once per test process."""
    from flmjax.convert import load_official

    return load_official(path)


@pytest.fixture(params=GOLDEN_MODELS)
def golden_name(request) -> str:
    return request.param


@pytest.fixture
def golden_dir(golden_name) -> pathlib.Path:
    return golden_path(golden_name)


def pytest_collection_modifyitems(items):
    """The xdist groups and the `slow` tests first (a stable sort: every worker collects the same order), so that
    neither worker ends the run alone on a long test."""
    items.sort(key=lambda item: not (item.get_closest_marker("slow") or item.get_closest_marker("xdist_group")))
