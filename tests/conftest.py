"""Test setup: 8 fake CPU devices, fast CPU compiles, no persistent compilation cache, the golden checkpoints, the
order xdist hands tests out in, and compiled code released before a worker runs out of memory maps."""

import os

# XLA's CPU backend with LLVM at -O0: the suite is mostly compiling tiny programs, and this compiles them in about
# half the time (a 4-step `launch.train` run: 25 s -> 15 s; the model, Mimi and conversion golden tests: about 3x
# faster), with the same results (every golden test passes under it). The libtpu compiles of `launch.aot` do not
# read XLA_FLAGS. The notebooks run without it: their run times are a user's.
FAST_COMPILE_FLAGS = "--xla_backend_optimization_level=0"
# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = " ".join(
    [os.environ.get("XLA_FLAGS", ""), "--xla_force_host_platform_device_count=8", FAST_COMPILE_FLAGS]
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (the TPU compiler the launch.aot tests use) takes a lockfile; the xdist workers and the CLIs they start
# may each load it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")
# No persistent compilation cache, here or in the CLIs, servers and notebook kernels the tests start (they inherit
# this; `launch.train` otherwise caches in ~/.cache/flmjax/jax): a test run writes nothing outside its temporary
# folders. (The worker crashes in the cache's `put_executable_and_time` once put down to the cache were the
# memory-map limit that `release_compiled_code` below keeps workers under.)
os.environ["JAX_ENABLE_COMPILATION_CACHE"] = "false"

import functools  # noqa: E402
import gc  # noqa: E402
import pathlib  # noqa: E402
import sys  # noqa: E402

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


# Every executable XLA's CPU backend compiles keeps its machine code in memory maps of its own (about 3 each), and
# jax's caches keep every executable alive. One xdist worker compiles thousands over the suite; at the kernel's
# `vm.max_map_count` (65530 by default) LLVM's next allocation fails ("LLVM compilation error: Cannot allocate
# memory") and XLA then segfaults, in a compile or a cache write: the worker crashes, and xdist may hang replacing
# it. So a worker drops jax's caches (the executables go with them; later calls compile again) once it holds half.


def kernel_map_limit() -> int:
    try:
        return int(pathlib.Path("/proc/sys/vm/max_map_count").read_text())
    except (OSError, ValueError):
        return 65530


def memory_map_count() -> int:
    """How many memory maps this process holds (0 where /proc is not there)."""
    try:
        with open("/proc/self/maps", "rb") as maps:
            return sum(1 for _ in maps)
    except OSError:
        return 0


def release_compiled_code(limit: int) -> bool:
    """Clear jax's caches when this process holds more than `limit` memory maps; whether it did."""
    if "jax" not in sys.modules or memory_map_count() <= limit:
        return False
    sys.modules["jax"].clear_caches()
    gc.collect()
    return True


MAP_LIMIT = kernel_map_limit() // 2


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    result = yield  # after the test's fixtures are torn down: what they held is free to go
    release_compiled_code(MAP_LIMIT)
    return result
