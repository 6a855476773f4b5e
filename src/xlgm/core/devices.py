"""Which device a stage runs on and in which precision.

`--device auto|cpu|cuda[:i]|mps` and `--mixed-precision auto|no|fp16|bf16` are resolved here once, for
training, evaluation, measures and prediction alike. `auto` precision is bf16 autocast on a GPU that has
bf16 (else fp16), and on a CPU only when it has native bf16 matrix instructions (AMX or AVX512-BF16): read
from the CPU's flags, not guessed. Elsewhere bf16 on a CPU is emulated and slower than fp32.
"""

from __future__ import annotations

import contextlib
import functools
import re
import typing
from collections.abc import Iterator
from pathlib import Path
from typing import Literal

import torch

from xlgm.core.errors import XlgmError

DEVICE_CHOICES = ("auto", "cpu", "cuda", "cuda:N", "mps")
Precision = Literal["auto", "no", "fp16", "bf16"]
PRECISION_CHOICES: tuple[str, ...] = typing.get_args(Precision)
NATIVE_BF16_FLAGS = ("amx_bf16", "avx512_bf16")


@functools.lru_cache(maxsize=1)
def cpu_flags() -> frozenset[str]:
    """The CPU's feature flags from /proc/cpuinfo (empty where there is none, e.g. macOS)."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return frozenset()
    match = re.search(r"^flags\s*:\s*(.*)$", text, re.MULTILINE)
    return frozenset(match.group(1).split()) if match else frozenset()


def cpu_has_native_bf16() -> bool:
    return any(flag in cpu_flags() for flag in NATIVE_BF16_FLAGS)


def resolve_device(choice: str = "auto") -> torch.device:
    """`auto`: the first CUDA GPU, else Apple's MPS, else the CPU. An explicit device must exist."""
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if choice == "cpu":
        return torch.device("cpu")
    if choice == "mps":
        if not torch.backends.mps.is_available():
            raise XlgmError("--device mps: this machine has no MPS device")
        return torch.device("mps")
    match = re.fullmatch(r"cuda(?::(\d+))?", choice)
    if not match:
        raise XlgmError(f"--device {choice!r}: expected one of auto, cpu, cuda, cuda:N, mps")
    if not torch.cuda.is_available():
        raise XlgmError(f"--device {choice}: no CUDA GPU is visible")
    index = int(match.group(1) or 0)
    if index >= torch.cuda.device_count():
        raise XlgmError(f"--device {choice}: only {torch.cuda.device_count()} CUDA GPU(s) are visible")
    return torch.device("cuda", index)


def resolve_precision(choice: str, device: torch.device | str) -> str:
    """`no`, `fp16` or `bf16` for `choice` on `device` (what accelerate's `mixed_precision` takes)."""
    if choice not in PRECISION_CHOICES:
        raise XlgmError(f"mixed precision {choice!r}: expected one of {', '.join(PRECISION_CHOICES)}")
    kind = torch.device(device).type
    if choice != "auto":
        return choice
    if kind == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    if kind == "cpu":
        return "bf16" if cpu_has_native_bf16() else "no"
    return "no"


def autocast(precision: str, device: torch.device | str) -> contextlib.AbstractContextManager[None]:
    """The autocast context for a resolved precision (`no`: a null context, fp32 throughout)."""
    if precision == "no":
        return contextlib.nullcontext()
    dtype = {"bf16": torch.bfloat16, "fp16": torch.float16}[precision]
    return torch.autocast(torch.device(device).type, dtype=dtype)


@contextlib.contextmanager
def on_device(model: torch.nn.Module, device: torch.device) -> Iterator[torch.nn.Module]:
    """Run with `model` on `device`; it is moved back to where it was afterwards."""
    before = next(model.parameters()).device
    model.to(device)
    try:
        yield model
    finally:
        model.to(before)
