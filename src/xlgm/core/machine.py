"""Which machine made a number: CPU, the instruction sets that pick kernels, GPU, threads, precision, versions.

Results reproduce bit for bit only on the same kind of machine: bf16 matrix kernels differ between CPUs with AMX,
with AVX512-BF16 only and without either, a GPU's kernels differ from a CPU's, and a different thread count or
library version can reorder a floating-point sum. `machine_record` writes down what decides that; `machine_kind`
reduces a record to the part that must match for two results to be comparable bit for bit (the CPU model name is
kept in the record but not in the kind: two CPUs with the same kernel-picking flags run the same kernels).
"""

from __future__ import annotations

import functools
import platform
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import torch

from xlgm.core.devices import cpu_flags

# The CPU flags that decide which matrix kernels PyTorch (oneDNN, MKL) picks, in that order of preference.
KERNEL_FLAGS = ("amx_bf16", "amx_tile", "amx_int8", "avx512_bf16", "avx512f", "avx2", "fma")
# The record's keys that `machine_kind` compares.
KIND_KEYS = ("isa", "gpu", "threads", "precision", "torch")


@functools.lru_cache(maxsize=1)
def cpu_model() -> str:
    """The CPU's model name from /proc/cpuinfo, else what the platform says."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        text = ""
    match = re.search(r"^model name\s*:\s*(.*)$", text, re.MULTILINE)
    return match.group(1).strip() if match else (platform.processor() or platform.machine() or "unknown")


def kernel_flags() -> list[str]:
    """The kernel-picking flags this CPU has (`KERNEL_FLAGS` order)."""
    flags = cpu_flags()
    return [flag for flag in KERNEL_FLAGS if flag in flags]


@functools.lru_cache(maxsize=1)
def gpu_driver() -> str | None:
    """The NVIDIA driver version from nvidia-smi, where there is one (torch knows the CUDA runtime, not the driver)."""
    if shutil.which("nvidia-smi") is None:
        return None
    try:
        out = subprocess.run(
            ["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    return out.splitlines()[0].strip() if out.strip() else None


def _gpu(device: torch.device) -> dict[str, Any]:
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return {"gpu": torch.cuda.get_device_name(index), "gpu_driver": gpu_driver(), "cuda": torch.version.cuda}
    if device.type == "mps":
        return {"gpu": "Apple MPS", "gpu_driver": None, "cuda": None}
    return {"gpu": None, "gpu_driver": None, "cuda": None}


def library_versions() -> dict[str, str]:
    """The versions of the libraries whose kernels or defaults shape a result."""
    import numpy
    import transformers

    import xlgm

    return {
        "xlgm": xlgm.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "numpy": numpy.__version__,
    }


def machine_record(device: torch.device | str, precision: str) -> dict[str, Any]:
    """What computed a result on `device` with the resolved `precision` (`no`, `fp16` or `bf16`)."""
    versions = library_versions()
    return {
        "cpu": cpu_model(),
        "isa": kernel_flags(),
        **_gpu(torch.device(device)),
        "threads": torch.get_num_threads(),
        "precision": precision,
        "torch": versions["torch"],
        "versions": versions,
    }


def machine_kind(record: dict[str, Any] | None) -> str:
    """A short text that is equal for two records exactly when their results should agree bit for bit."""
    if not record:
        return "unknown"
    if "mixed" in record:
        return "mixed: " + " | ".join(machine_kind(r) for r in record["mixed"])
    isa = "+".join(record.get("isa") or []) or "no-simd-flags"
    device = record.get("gpu") or "cpu"
    threads, precision, version = record.get("threads"), record.get("precision"), record.get("torch")
    return f"{device} [{isa}] threads={threads} precision={precision} torch={version}"


def describe_machine(record: dict[str, Any] | None) -> str:
    """One line for people: the CPU or GPU by name, then the kind."""
    if not record:
        return "unknown machine"
    if "mixed" in record:
        return "mixed: " + " | ".join(describe_machine(r) for r in record["mixed"])
    name = record.get("gpu") or record.get("cpu") or "unknown"
    return f"{name}; {machine_kind(record)}"


def combined_record(records: list[dict[str, Any] | None]) -> dict[str, Any] | None:
    """One record for a result that several sessions computed (a run's training, resumed): the last session's when
    all are of one kind, else `{"mixed": [each kind's first record]}`. A session whose machine was not recorded
    (None) is left out: unknown is not another kind. None when no session's machine is known."""
    known = [record for record in records if record]
    if not known:
        return None
    kinds: dict[str, dict[str, Any]] = {}
    for record in known:
        kinds.setdefault(machine_kind(record), record)
    if len(kinds) == 1:
        return known[-1]
    return {"mixed": list(kinds.values())}
