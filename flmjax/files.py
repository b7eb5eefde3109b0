"""Writing files and folders so that a reader (or a resumed run) never finds half of one, and nothing is lost.

- `write_atomically(path, write)`: one file, renamed onto `path` when whole.
- `replace_folder(path, build)` (or `staging_folder` + `swap_in`): a folder built beside `path` and swapped in
  when whole; a failure or a refusal midway leaves `path` as it was.
- `check_apart(output, inputs)`: an output that would contain, equal or sit inside one of its inputs is refused
  before anything is written (replacing it would delete the input).
Folders and files get the modes the user's umask gives (`tempfile` would make them private).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from typing import Callable, Iterable, Iterator, TypeVar

from flmjax.errors import UserError

T = TypeVar("T")
STAGING = ".staging-"  # hidden folders beside a target: `.NAME.staging-XXXX` (being built)
RETIRED = ".retired-"  # and `.NAME.retired-XXXX` (the old folder, removed once the new one is in)


class OverlapError(UserError):
    """An output that contains, equals or sits inside one of the command's inputs."""


def write_atomically(path: str | os.PathLike, write: Callable[[str], None]) -> None:
    """Calls `write(temporary)` on a hidden file beside `path` with the same extension (so `np.save` and WAV
    writers add no suffix), then renames it onto `path`: readers see the old file or the whole new one. The
    temporary is removed if writing fails; the folder is created if missing."""
    path = os.fspath(path)
    folder, name = os.path.split(path)
    stem, extension = os.path.splitext(name)
    temporary = os.path.join(folder, f".{stem}.tmp{os.getpid()}{extension}")
    if folder:
        os.makedirs(folder, exist_ok=True)
    try:
        write(temporary)
        os.replace(temporary, path)
    finally:
        if os.path.exists(temporary):
            os.remove(temporary)


def _sibling(path: str, mark: str) -> str:
    folder, name = os.path.split(os.path.abspath(path))
    return os.path.join(folder, f".{name}{mark}{secrets.token_hex(4)}")


@contextlib.contextmanager
def staging_folder(path: str | os.PathLike) -> Iterator[str]:
    """A new empty folder beside `path` (same file system, so `swap_in` is a rename); removed on exit unless
    `swap_in` moved it (or a folder inside it) to `path`. Its parent is created if missing."""
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    staging = _sibling(path, STAGING)
    os.mkdir(staging)  # not tempfile.mkdtemp: that makes it 0700, and a colleague could not read the result
    try:
        yield staging
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def swap_in(finished: str | os.PathLike, path: str | os.PathLike) -> None:
    """Moves the finished folder to `path`; an existing `path` is moved aside first and removed only after."""
    finished, path = os.fspath(finished), os.fspath(path)
    if not os.path.lexists(path):
        os.rename(finished, path)
        return
    retired = _sibling(path, RETIRED)
    os.rename(path, retired)
    os.rename(finished, path)
    shutil.rmtree(retired)


def replace_folder(path: str | os.PathLike, build: Callable[[str], T]) -> T:
    """Calls `build(staging)` to fill a folder beside `path`, then swaps it in; returns what `build` returned.

    If `build` raises, `path` is untouched and the staging folder removed."""
    with staging_folder(path) as staging:
        result = build(staging)
        swap_in(staging, path)
    return result


def remove_leftovers(path: str | os.PathLike) -> None:
    """Removes the staging and retired folders of `path` that a killed run left beside it (one run at a time)."""
    folder, name = os.path.split(os.path.abspath(os.fspath(path)))
    for entry in os.listdir(folder) if os.path.isdir(folder) else ():
        if entry.startswith((f".{name}{STAGING}", f".{name}{RETIRED}")):
            shutil.rmtree(os.path.join(folder, entry), ignore_errors=True)


def follow_umask(path: str | os.PathLike) -> None:
    """Gives a file written by a library that makes it private (safetensors: 0600) the mode `open` would."""
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(path, 0o666 & ~umask)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def check_apart(output: str | os.PathLike, inputs: Iterable[str | os.PathLike], what: str = "output") -> None:
    """Raises `OverlapError` when `output` equals, contains or sits inside one of `inputs` (links resolved)."""
    real_output = os.path.realpath(output)
    for input_ in inputs:
        real_input = os.path.realpath(input_)
        if _inside(real_output, real_input) or _inside(real_input, real_output):
            relation = (
                "is" if real_output == real_input else "contains" if _inside(real_input, real_output) else "sits inside"
            )
            raise OverlapError(
                f"{what} {os.fspath(output)} {relation} the input {os.fspath(input_)}: writing "
                f"it would replace the input; choose a folder outside it"
            )
