"""User-facing errors.

An `XlgmError` is a problem with what the user handed in (a file, a flag, a spec). The CLI prints it as
one line and exits non-zero, with no traceback; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

import argparse
import difflib
import re
import sys
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import NoReturn


class XlgmError(Exception):
    """A problem with user input, reported as one line by the CLI."""


class ArgumentError(XlgmError):
    """A user error that says which argument to pass, in the words of whoever called: `str(err)` names Python's
    keyword (`resume=True`), `err.command_line` (what the CLI prints) the flag (`--resume`).

    `message` builds the text from `pick(python, flag)`, which returns one of its two arguments:
    `ArgumentError(lambda pick: f"{path}: pass {pick('resume=True', '--resume')} to continue it")`.
    """

    def __init__(self, message: Callable[[Callable[[str, str], str]], str]):
        self._message = message
        super().__init__(message(lambda python, flag: python))

    @property
    def command_line(self) -> str:
        return self._message(lambda python, flag: flag)


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
        print(f"xlgm: error: {err.command_line if isinstance(err, ArgumentError) else err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xlgm: interrupted", file=sys.stderr)
        return 130
    return 0


def close_names(word: str, choices: Iterable[str], n: int = 3) -> list[str]:
    """The names among `choices` closest to `word` (case aside), best first; none when nothing is close.

    difflib's ratio, with a bonus for a name of the same length that differs in one place: for two-letter
    language codes the ratio alone rates `el` as close to `ge` as `de`.
    """
    lowered = word.lower()

    def score(name: str) -> float:
        other = name.lower()
        one_off = len(other) == len(lowered) and sum(a != b for a, b in zip(lowered, other)) == 1
        return difflib.SequenceMatcher(None, lowered, other).ratio() + (0.4 if one_off else 0.0)

    scored = sorted(((score(name), i, name) for i, name in enumerate(choices)), key=lambda t: (-t[0], t[1]))
    return [name for value, _, name in scored[:n] if value >= 0.6]


def did_you_mean(word: str, choices: Iterable[str]) -> str:
    """` (did you mean 'x'?)`, or `'x' or 'y'`, for the names closest to `word`; empty when none is close."""
    names = close_names(word, choices)
    return f" (did you mean {' or '.join(repr(name) for name in names)}?)" if names else ""


_INVALID_CHOICE = re.compile(r"invalid choice: '(?P<word>[^']*)' \(choose from (?P<choices>.*)\)$")


class OneLineParser(argparse.ArgumentParser):
    """argparse, with a rejected flag reported like every other input error: one line (subparsers inherit it),
    and an unknown choice answered with the nearest ones."""

    def error(self, message: str) -> NoReturn:
        match = _INVALID_CHOICE.search(message)
        if match:
            choices = re.findall(r"'([^']*)'", match.group("choices")) or match.group("choices").split(", ")
            hint = did_you_mean(match.group("word"), choices) or f" (choose from {', '.join(choices)})"
            message = message[: match.start()] + f"invalid choice: {match.group('word')!r}{hint}"
        raise XlgmError(f"{message} (see `{self.prog} --help`)")
