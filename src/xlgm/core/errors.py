"""User-facing errors.

An `XlgmError` is a problem with what the user handed in (a file, a flag, a spec). The CLI prints it as
one line and exits non-zero, with no traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn


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


def exit_status(action: Callable[[], object]) -> int:
    """Run a command line's action: 0 when it finishes; an `XlgmError` is printed as one line (status 2, no
    traceback) and an interrupt as `interrupted` (status 130)."""
    try:
        action()
    except XlgmError as err:
        print(f"xlgm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xlgm: interrupted", file=sys.stderr)
        return 130
    return 0


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a rejected flag reported like every other input error: one line (subparsers inherit it)."""

    def error(self, message: str) -> NoReturn:
        raise XlgmError(f"{message} (see `{self.prog} --help`)")
