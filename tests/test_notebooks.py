"""Every notebook in notebooks/ runs top to bottom in a fresh kernel without a cell error, within its time
limit, on CPU with 8 fake devices, writing nothing into the repository; the committed copies carry no outputs."""

import os
import subprocess
import time

import pytest

from tests.conftest import REPO_ROOT

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")

NOTEBOOK_DIR = REPO_ROOT / "notebooks"
NOTEBOOKS = sorted(p.name for p in NOTEBOOK_DIR.glob("*.ipynb"))
# The pictures each notebook must show (image/png outputs), so that a notebook whose plots silently vanish fails.
MIN_IMAGES = {
    "01_model_as_functions.ipynb": 0,
    "02_natural_monologues.ipynb": 6,
    "03_train_a_stage.ipynb": 1,
    "04_stream_a_conversation.ipynb": 2,
    "05_export_to_pytorch.ipynb": 0,
}
CELL_TIMEOUT_S = 240
NOTEBOOK_TIMEOUT_S = 300  # each must also run in under 3 minutes on a laptop; CI's 2 shared cores are slower


def kernel_environment() -> dict[str, str]:
    """The kernel imports this checkout's code, runs JAX on CPU with 8 fake devices and XLA's usual optimisation (not
    the tests' fast compiles: the notebooks' run times are what a user sees), and, like the tests, no persistent
    compilation cache (conftest.py)."""
    path = [str(REPO_ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    return {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(path),
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": "--xla_force_host_platform_device_count=8",
        "MPLBACKEND": "Agg",
    }


def new_repository_files() -> set[str] | None:
    """Untracked files in the repository (ignored ones left out), or None outside a git checkout. (New files
    only: a tracked file edited by hand while the tests run must not fail them.)"""
    try:
        result = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=all"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if result.returncode != 0:
        return None
    return {line[3:] for line in result.stdout.splitlines() if line.startswith("??")}


def test_every_notebook_has_an_expected_picture_count():
    assert NOTEBOOKS and set(NOTEBOOKS) == set(MIN_IMAGES)


@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_is_committed_without_outputs(name):
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    code = [cell for cell in notebook.cells if cell.cell_type == "code"]
    assert code
    assert all(not cell.outputs and cell.execution_count is None for cell in code), (
        f"{name} holds outputs: clear them (Jupyter: Edit > Clear All Outputs) before committing"
    )


@pytest.mark.slow
@pytest.mark.parametrize("name", NOTEBOOKS)
def test_notebook_runs_top_to_bottom(name, tmp_path):
    notebook = nbformat.read(NOTEBOOK_DIR / name, as_version=4)
    before = new_repository_files()
    client = nbclient.NotebookClient(
        notebook, timeout=CELL_TIMEOUT_S, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    )
    start = time.perf_counter()
    try:
        client.execute(env=kernel_environment())
    except nbclient.exceptions.CellExecutionError as error:
        pytest.fail(f"{name}: a cell failed:\n{str(error)[-4000:]}")
    seconds = time.perf_counter() - start
    print(f"\n{name}: ran in {seconds:.1f} s")
    outputs = [output for cell in notebook.cells if cell.cell_type == "code" for output in cell.outputs]
    assert not [o for o in outputs if o.output_type == "error"]
    images = sum("image/png" in o.get("data", {}) for o in outputs)
    assert images >= MIN_IMAGES[name], f"{name} showed {images} pictures, expected at least {MIN_IMAGES[name]}"
    assert seconds < NOTEBOOK_TIMEOUT_S, f"{name} took {seconds:.0f} s"
    after = new_repository_files()
    assert before is None or after == before, f"{name} wrote into the repository: {sorted(after - before)}"
