"""Writing the files a user keeps: whole or not at all.

A file is written to a temporary file in the same folder and renamed over the target (`os.replace` is atomic
on POSIX and Windows), so a crash or a kill leaves the old file or the new one, never half of one. The
temporary name is unique, so two processes writing the same file do not write into each other's half.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

# mkstemp makes files readable by their owner only; the kept file gets the mode any new file would get.
_UMASK = os.umask(0)
os.umask(_UMASK)


def write_text_atomic(path: str | Path, text: str) -> None:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~_UMASK
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_atomic(path: str | Path, obj: Any, *, sort_keys: bool = False) -> None:
    """`obj` as indented JSON (values JSON cannot hold written as strings), atomically."""
    write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=sort_keys, default=str) + "\n")
