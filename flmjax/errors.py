"""The base of every error a user can fix by changing an input or a setting.

Entry points (`launch.*`) print such an error as one line (`error: ...`, exit status 2) instead of a traceback;
anything else is a bug and keeps its traceback. Each module's own error type derives from `UserError` and,
where callers already catch it as such, from the builtin it used to be (`ValueError`, `RuntimeError`).
"""

from __future__ import annotations

from typing import Callable, Iterable, TypeVar

Item = TypeVar("Item")
Read = TypeVar("Read")


class UserError(Exception):
    """Bad input or settings; the message names the file, field or value and what was expected."""


def one_line(error: BaseException) -> str:
    """An error message that lists problems on several lines, as one line ("...: a; b; c")."""
    lines = [line.strip() for line in str(error).strip().splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    return lines[0] + ("" if len(lines) < 2 else " " + "; ".join(lines[1:]))


def read_each(
    items: Iterable[Item], read: Callable[[Item], Read]
) -> tuple[list[Item], list[Read], list[tuple[Item, str]]]:
    """A batch command's inputs read one by one, a bad one skipped rather than fatal: (the items that read, what
    `read` gave for each, (item, one-line reason) of those whose read raised a `UserError`)."""
    kept, values, skipped = [], [], []
    for item in items:
        try:
            values.append(read(item))
        except UserError as error:
            skipped.append((item, one_line(error)))
            continue
        kept.append(item)
    return kept, values, skipped
