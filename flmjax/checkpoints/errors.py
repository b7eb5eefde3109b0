"""What a failed checkpoint operation raises, and how its message reads.

Errors: `CheckpointMismatchError` (the checkpoint's tree or shapes differ from what the caller restores into;
checked from the stored metadata before any array is read), `CheckpointCorruptError` (an item is missing or
unreadable), `CheckpointExistsError` (a step that is already on disk), `NoCheckpointError` (no complete checkpoint
where one was asked for); all are `CheckpointError`s, so `UserError`s. The helpers word them: one line per shape
difference, the model fields that decide the shapes, the first line of the innermost cause of a failed read, and
the silencing of the tracebacks of orbax's abandoned reads, which would bury that one line.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

import jax

from flmjax.config import SIZE_FIELDS
from flmjax.errors import UserError


class CheckpointError(UserError, RuntimeError):
    """A checkpoint that cannot be saved or restored as asked."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's arrays do not fit the tree they are restored into; the message lists every difference."""


class CheckpointCorruptError(CheckpointError):
    """A checkpoint item that is missing or unreadable; the message names the step and the item."""


class CheckpointExistsError(CheckpointError):
    """A save of a step that is already on disk (it is never overwritten)."""


class NoCheckpointError(CheckpointError):
    """No (complete) checkpoint where one was asked for."""


def _key_name(key) -> str:
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def flat_shapes(tree: Any) -> dict[str, tuple[int, ...]]:
    """'a/b/c' -> shape for every array leaf of a tree of arrays, ShapeDtypeStructs or orbax ArrayMetadata."""
    return {
        "/".join(_key_name(k) for k in path): tuple(leaf.shape)
        for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]
    }


def shape_differences(saved: Mapping[str, tuple], expected: Mapping[str, tuple], prefix: str = "") -> list[str]:
    """One line per path missing on either side or with a different shape."""
    lines = [
        f"{prefix}{path}: in the checkpoint {list(saved[path])}, not expected"
        for path in sorted(set(saved) - set(expected))
    ]
    lines += [
        f"{prefix}{path}: expected {list(expected[path])}, not in the checkpoint"
        for path in sorted(set(expected) - set(saved))
    ]
    lines += [
        f"{prefix}{path}: saved {list(saved[path])}, expected {list(expected[path])}"
        for path in sorted(set(saved) & set(expected))
        if tuple(saved[path]) != tuple(expected[path])
    ]
    return lines


def first_line(error: BaseException) -> str:
    """The first line of the innermost cause (tensorstore's names the array and the file; the outer ones don't)."""
    seen = set()
    while (error.__cause__ or error.__context__) is not None and id(error) not in seen:
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    text = str(error).strip().split(" See full TensorStore details")[0].splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"


def _is_abandoned_read_report(error: BaseException, about: Any = None) -> bool:
    """Whether a report is one of orbax's abandoned reads speaking: its event loop closed under it, or its
    coroutine (`about`) closed mid-read."""
    if isinstance(error, RuntimeError) and str(error) == "Event loop is closed":
        return True
    code = getattr(about, "cr_code", None)
    return code is not None and f"{os.sep}orbax{os.sep}" in code.co_filename


def quiet_abandoned_reads() -> None:
    """orbax reads a checkpoint in a private event loop that it closes as soon as one read fails; each read still in
    flight then prints a traceback when it finishes (from tensorstore's threads: "Event loop is closed") and again
    when it is collected, pages for a large checkpoint that bury the one error that matters. Those reports are
    dropped (from the first restore on: they start before the failed read's error reaches the caller); every other
    report goes where it went before."""
    if getattr(sys.excepthook, "quiets_abandoned_reads", False):
        return
    report_unraisable, report_uncaught = sys.unraisablehook, sys.excepthook

    def unraisable(report):
        if not _is_abandoned_read_report(report.exc_value, report.object):
            report_unraisable(report)

    def uncaught(error_type, error, traceback):
        if not _is_abandoned_read_report(error):
            report_uncaught(error_type, error, traceback)

    uncaught.quiets_abandoned_reads = True
    sys.unraisablehook, sys.excepthook = unraisable, uncaught


# Model config fields that decide param shapes: named in a mismatch report.
SHAPE_FIELDS = (*SIZE_FIELDS, "scan_layers")
