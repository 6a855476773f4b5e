"""Reading and writing the files xlgm keeps: JSON metadata and safetensors weights.

Every reader fails with one `XlgmError` line that names the file and says what is wrong with it (missing,
not JSON, not an object, a key missing, not a safetensors file, truncated, zero-filled), so a damaged run
folder never ends in a traceback. Every writer is atomic: the new content goes to a temporary file in the
same folder, which `os.replace` then puts in place, so a crash leaves the old file or the new one, never
half of one, and a failed write changes nothing.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import struct
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch

from xlgm.core.errors import ArgumentError, XlgmError

# safetensors refuses headers above 100 MB; a larger length read from the first 8 bytes means another format.
MAX_SAFETENSORS_HEADER = 100_000_000
_ZERO_SCAN_CHUNK = 1 << 20
_HASH_CHUNK = 1 << 22


def first_line(err: BaseException | str) -> str:
    """The first non-empty line of an error message, for one-line reports of library errors."""
    text = str(err).strip()
    return text.splitlines()[0].strip() if text else type(err).__name__


def current_umask() -> int:
    """The process's umask (reading it means setting it: it is put straight back)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _atomic_write(path: Path, write, fsync: bool) -> None:
    """Call `write(tmp)` with a temporary path in `path`'s folder, then put the file in place."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    # A unique name in the target's folder: os.replace is atomic only within one file system, and two
    # writers of the same file must not share a temporary.
    # (Not mkstemp: its files are private, 0600; this one gets the permissions of any file the user writes.)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
    try:
        write(tmp)
        # A rewritten file keeps the mode its owner gave it; a new one gets the user's umask, whatever mode the
        # writer chose (safetensors writes 0600 files, which another user could not load).
        os.chmod(tmp, path.stat().st_mode & 0o7777 if path.exists() else 0o666 & ~current_umask())
        if fsync:
            with tmp.open("rb+") as written:
                os.fsync(written.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_json(
    path: str | Path, obj: Any, *, indent: int | None = 2, sort_keys: bool = True, fsync: bool = False
) -> None:
    """Write `obj` as JSON atomically (see the module docstring); `fsync` also survives a power cut."""
    text = json.dumps(obj, indent=indent, sort_keys=sort_keys, default=str) + "\n"
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync)


def write_text(path: str | Path, text: str, *, fsync: bool = False) -> None:
    """Write `text` (UTF-8) atomically (see the module docstring)."""
    _atomic_write(Path(path), lambda tmp: tmp.write_text(text, encoding="utf-8"), fsync)


def read_json(path: str | Path, *, expect: type | None = None, required: Iterable[str] = ()) -> Any:
    """The JSON value in `path`. `expect` (dict or list) is the type it must have; `required` are keys a
    dict must hold. Any problem is one line naming the file."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError as err:
        raise XlgmError(f"{path}: file not found") from err
    except IsADirectoryError as err:
        raise XlgmError(f"{path}: a folder, expected a JSON file") from err
    except UnicodeDecodeError as err:
        raise XlgmError(f"{path}: not valid JSON (not UTF-8 text)") from err
    except OSError as err:
        raise XlgmError(f"{path}: cannot be read ({first_line(err)})") from err
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise XlgmError(f"{path}:{err.lineno}: not valid JSON ({err.msg})") from err
    required = tuple(required)
    if required and expect is None:
        expect = dict
    if expect is not None and not isinstance(value, expect):
        kinds: dict[type, str] = {dict: "a JSON object", list: "a JSON list"}
        wanted = kinds.get(expect, expect.__name__)
        raise XlgmError(f"{path}: expected {wanted}, got {_json_kind(value)}")
    missing = [key for key in required if key not in value]
    if missing:
        raise XlgmError(f"{path}: missing key{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}")
    return value


def _json_kind(value: Any) -> str:
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    return "a string" if isinstance(value, str) else "a number"


def save_tensors(tensors: dict[str, torch.Tensor], path: str | Path, *, fsync: bool = False) -> None:
    """Save tensors as safetensors (on the CPU, contiguous), atomically."""
    from safetensors.torch import save_file

    cpu = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}
    _atomic_write(Path(path), lambda tmp: save_file(cpu, str(tmp), metadata={"format": "pt"}), fsync)


def safetensors_problem(path: str | Path) -> str | None:
    """What is wrong with a safetensors file, in a few words, or None when its layout is sound.

    Reads the 8-byte header length, the JSON header and the file size only (and, for a header length of 0,
    scans for a zero-filled file), so it is cheap on a file of any size.
    """
    path = Path(path)
    if not path.exists():
        return "file not found"
    if not path.is_file():
        return "not a file"
    size = path.stat().st_size
    if size == 0:
        return "empty (0 bytes)"
    with path.open("rb") as f:
        prefix = f.read(8)
        if len(prefix) < 8:
            return f"truncated ({size} bytes, shorter than a safetensors header)"
        (header_len,) = struct.unpack("<Q", prefix)
        if header_len == 0:
            return f"zero-filled ({size} bytes of zeros)" if _all_zero(path) else "not a safetensors file"
        if header_len > MAX_SAFETENSORS_HEADER:
            return "not a safetensors file"
        if 8 + header_len > size:
            if f.read(1) != b"{":  # a header is a JSON object: anything else is another format
                return "not a safetensors file"
            return f"truncated ({size} bytes; its header alone needs {8 + header_len})"
        raw = f.read(header_len)
    try:
        header = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError):
        return "not a safetensors file" if not raw.lstrip().startswith(b"{") else "damaged header (not JSON)"
    if not isinstance(header, dict):
        return "not a safetensors file"
    try:
        end = max((int(entry["data_offsets"][1]) for key, entry in header.items() if key != "__metadata__"), default=0)
    except (TypeError, KeyError, IndexError, ValueError):
        return "damaged header (a tensor without data offsets)"
    expected = 8 + header_len + end
    if size < expected:
        return f"truncated ({size} bytes; its header describes {expected})"
    return None


def _all_zero(path: Path) -> bool:
    with path.open("rb") as f:
        while chunk := f.read(_ZERO_SCAN_CHUNK):
            if chunk.count(0) != len(chunk):
                return False
    return True


def check_safetensors(path: str | Path) -> None:
    """Raise one line naming `path` when it is not a sound safetensors file."""
    problem = safetensors_problem(path)
    if problem is not None:
        raise XlgmError(f"{path}: {problem}")


def file_sha256(path: str | Path) -> str:
    """The SHA-256 of a file's bytes (hex), read in chunks: about 0.2 s for the embedded model's 90 MB
    checkpoint on one core."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def sha256_problem(path: str | Path, expected: str | None) -> str | None:
    """`corrupt: ...` when the file's SHA-256 is not `expected` (its bytes changed after they were written,
    header intact or not), else None; None as `expected` (nothing recorded) checks nothing."""
    if expected is None:
        return None
    actual = file_sha256(path)
    if actual == expected:
        return None
    return f"corrupt: its SHA-256 is {actual[:12]}..., not the {expected[:12]}... recorded when it was written"


def verify_sha256(path: str | Path, expected: str | None) -> None:
    """Raise one line naming `path` when its SHA-256 is not `expected` (None: nothing to check)."""
    if expected is None:
        return
    check_safetensors(path)  # a truncated or missing file says so, rather than "checksum mismatch"
    problem = sha256_problem(path, expected)
    if problem:
        raise ArgumentError(
            lambda pick: f"{path}: {problem}; pass {pick('verify=False', '--no-verify')} to load it anyway"
        )


def read_safetensors(path: str | Path, sha256: str | None = None) -> dict[str, torch.Tensor]:
    """The tensors in a safetensors file (on the CPU); a damaged file is one line naming it. With `sha256`, the
    file's bytes must have that checksum (`verify_sha256`)."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    check_safetensors(path)
    verify_sha256(path, sha256)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise XlgmError(f"{path}: not a readable safetensors file ({first_line(err)})") from err
