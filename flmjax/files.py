"""Writing files so that a reader (or a resumed run) never finds half of one."""

from __future__ import annotations

import os
from typing import Callable


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
