"""What every `launch.*` entry point does with an error: a user's mistake is one line, a bug a traceback.

    sys.exit(cli.run(main, argv))

`run` calls `main(argv)` and maps
- `flmjax.errors.UserError` (bad settings, inputs, checkpoints, datasets) and the errors the standard readers
  raise on a damaged or missing input file (`OSError`, `EOFError`, `struct.error` from a WAV header,
  `json.JSONDecodeError`, `UnicodeDecodeError`, `zipfile.BadZipFile` from `.npz`, safetensors' own error) to
  `error: <message on one line>` on stderr and exit status 2;
- the first Ctrl-C to exit status 130 with one line (a training loop handles SIGINT itself and saves first);
- anything else is left alone, so a bug keeps its traceback.
The project's own warnings (a repaired input, say) print as `warning: ...` lines, without Python's file:line.
"""

from __future__ import annotations

import argparse
import json
import struct
import sys
import warnings
import zipfile
from typing import Callable, Sequence

from safetensors import SafetensorError

from flmjax.errors import UserError, one_line

USAGE_ERROR = 2
INTERRUPTED = 130


class ArgumentParser(argparse.ArgumentParser):
    """argparse's parser whose refusals are one `error: ...` line too (argparse prints its usage first)."""

    def error(self, message: str):
        self.exit(USAGE_ERROR, f"error: {message} (usage: {self.prog} --help)\n")


# The error types that mean "this input is missing or damaged", not "this code is wrong".
INPUT_ERRORS = (
    UserError,
    OSError,
    EOFError,
    struct.error,
    json.JSONDecodeError,
    UnicodeDecodeError,
    zipfile.BadZipFile,
    SafetensorError,
)


def describe(error: BaseException) -> str:
    """One line for `error`, with the file name an `OSError` carries and the kind of a bare reader error."""
    if isinstance(error, OSError) and error.filename is not None and str(error.filename) not in str(error):
        return f"{error.filename}: {error.strerror or one_line(error)}"
    if isinstance(error, (struct.error, EOFError, zipfile.BadZipFile)):
        return f"damaged input ({type(error).__name__}): {one_line(error)}"
    return one_line(error)


def _format_warning(message, category, filename, lineno, line=None, *, python_format=warnings.formatwarning):
    if category.__module__.split(".")[0] == "flmjax":
        return f"warning: {message}\n"
    return python_format(message, category, filename, lineno, line)


def run(main: Callable[[Sequence[str] | None], int | None], argv: Sequence[str] | None = None) -> int:
    """`main(argv)` with input errors as `error: ...` (exit 2); returns the exit status."""
    python_format, warnings.formatwarning = warnings.formatwarning, _format_warning
    try:
        code = main(argv)
    except INPUT_ERRORS as error:
        print(f"error: {describe(error)}", file=sys.stderr, flush=True)
        return USAGE_ERROR
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr, flush=True)
        return INTERRUPTED
    finally:
        warnings.formatwarning = python_format
    return 0 if code is None else int(code)
