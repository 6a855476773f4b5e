"""One `xlgm study run` per study folder at a time: an OS file lock on OUT/.lock.

The lock is `flock(2)` on the open file, so the kernel releases it when its process ends, however it ends
(kill -9 included): a stale lock file never blocks a later run. While it is held the file says who holds it
(`PID STARTED`), for the message a second run prints. POSIX only (Linux, macOS); where `fcntl` is missing the
folder is not locked and a warning says so.
"""

from __future__ import annotations

import contextlib
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from xlgm.core.errors import XlgmError

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None  # type: ignore[assignment]

LOCK_NAME = ".lock"


def _holder(fd: int) -> str:
    """'pid N (started T)' from the lock file; the holder writes it right after locking, so wait a moment for it."""
    text = ""
    for _ in range(20):
        text = os.pread(fd, 200, 0).decode("utf-8", "replace").strip()
        if text:
            break
        time.sleep(0.05)
    pid, _, started = text.partition(" ")
    if not pid:
        return "another process"
    return f"pid {pid}" + (f" (started {started})" if started else "")


@contextlib.contextmanager
def study_lock(out: str | Path) -> Iterator[Path]:
    """Hold OUT/.lock for the duration of the block, or raise XlgmError naming the process that holds it."""
    out = Path(out)
    path = out / LOCK_NAME
    if fcntl is None:  # pragma: no cover - Windows
        print(
            f"xlgm: warning: {out} is not locked (no fcntl on this platform): run one `study run` on it at a time",
            file=sys.stderr,
        )
        yield path
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise XlgmError(f"{out} is being run by {_holder(fd)}; wait for it or stop it") from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()} {time.strftime('%Y-%m-%d %H:%M:%S')}\n".encode(), 0)
        try:
            yield path
        finally:
            os.ftruncate(fd, 0)  # the file stays (removing it would let two runs lock two different files)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
