"""Helpers shared by tests that check what a command leaves on disk and what it prints."""

import hashlib
import os
import pathlib
import shutil
import subprocess
import sys

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]


def tree_hash(path) -> str:
    """A digest of everything under `path`: names, modes, and each file's modification time and contents, so
    that a file rewritten with the same bytes changes it too (a folder's time is left out: a staging folder
    made and removed beside a target touches it). A missing path has its own digest."""
    path = pathlib.Path(path)
    digest = hashlib.sha256()
    if not path.exists():
        return "missing"
    for root, folders, files in os.walk(path):
        folders.sort()
        for name in sorted(folders) + sorted(files):
            full = os.path.join(root, name)
            stat = os.lstat(full)
            digest.update(f"{os.path.relpath(full, path)}|{stat.st_mode}\n".encode())
            if os.path.isfile(full):
                digest.update(f"{stat.st_mtime_ns}".encode())
                with open(full, "rb") as f:
                    digest.update(hashlib.sha256(f.read()).digest())
    return digest.hexdigest()


def run_module(module: str, *args) -> subprocess.CompletedProcess:
    """`python -m MODULE ARGS` from the repository root, output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", module, *map(str, args)], capture_output=True, text=True, cwd=REPO_ROOT, timeout=300
    )


def assert_one_line_error(result: subprocess.CompletedProcess, fragment: str) -> None:
    """Exit status 2 and a single `error: ...` line on stderr holding `fragment`, no traceback."""
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr + result.stdout, result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and fragment in errors[0], result.stderr


def damaged_copies(folder, tmp_path, config_name: str, config_text: str) -> list[tuple[pathlib.Path, str]]:
    """Two copies of a checkpoint `folder` under `tmp_path`: one whose model.safetensors is cut in half, one
    whose `config_name` holds `config_text` (malformed JSON); each with the name of its damaged file."""
    truncated, malformed = pathlib.Path(tmp_path) / "truncated", pathlib.Path(tmp_path) / "malformed"
    for copy in (truncated, malformed):
        shutil.copytree(folder, copy)
    weights = (truncated / "model.safetensors").read_bytes()
    (truncated / "model.safetensors").write_bytes(weights[: len(weights) // 2])
    (malformed / config_name).write_text(config_text)
    return [(truncated, "model.safetensors"), (malformed, config_name)]
