"""Test setup: 8 fake CPU devices, a persistent compilation cache, and the golden checkpoints."""

import os

# Must happen before jax is imported anywhere.
os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# libtpu (the TPU compiler the launch.aot tests use) takes a lockfile; the xdist workers and the CLIs they start
# may each load it.
os.environ.setdefault("ALLOW_MULTIPLE_LIBTPU_LOAD", "1")

import functools  # noqa: E402
import pathlib  # noqa: E402

import jax  # noqa: E402
import pytest  # noqa: E402

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
GOLDEN_DIR = REPO_ROOT.parent / "shared" / "golden"
GOLDEN_MODELS = ("release_like", "variant")

jax.config.update("jax_compilation_cache_dir", str(REPO_ROOT / ".jax_cache"))
jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)


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
