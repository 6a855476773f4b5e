"""User-facing errors.

An `XlgmError` is a problem with what the user handed in (a file, a flag, a spec). The CLI prints it as
one line and exits non-zero, with no traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class XlgmError(Exception):
    """A problem with user input, reported as one line by the CLI."""


class DataFormatError(XlgmError):
    """A data file is malformed. The message names the file, the line and what was expected."""

    def __init__(self, path: str | Path, line: int | None, expected: str, got: str | None = None):
        self.path = str(path)
        self.line = line
        self.expected = expected
        self.got = got
        where = f"{self.path}:{line}" if line is not None else self.path
        message = f"{where}: expected {expected}"
        if got is not None:
            message += f", got {got}"
        super().__init__(message)
