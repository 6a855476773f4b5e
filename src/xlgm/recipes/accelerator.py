"""The accelerate side of training: the `Accelerator` on the chosen device and precision, the trackers of
`--report-to`, and the few collective operations the loop needs across processes."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.tracking import GeneralTracker
from accelerate.utils import ProjectConfiguration, parse_flag_from_env

from xlgm.core import validation
from xlgm.core.devices import resolve_device, resolve_precision
from xlgm.core.errors import XlgmError
from xlgm.runs import TRACKERS_FOLDER

# --report-to: accelerate's trackers, each with the package it needs and the extra that installs it.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_report_to(report_to: str | GeneralTracker | Sequence[str | GeneralTracker] | None) -> list:
    """The trackers to log to: names of `TRACKERS` (a string may be a comma list) or accelerate
    `GeneralTracker` instances. A name whose package is not installed is refused here, before training:
    accelerate would only warn and drop it."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    items = [report_to] if isinstance(report_to, (str, GeneralTracker)) else list(report_to or ())
    trackers: list = []
    for item in items:
        if isinstance(item, GeneralTracker):
            trackers.append(item)
            continue
        for name in validation.comma_list("--report-to", item):
            if name == "none":
                continue
            validation.one_of("--report-to", name, ("none", *TRACKERS))
            if not available[name]():
                raise XlgmError(
                    f"--report-to {name}: the {TRACKERS[name]} package is not installed (pip install 'xlgm[{name}]')"
                )
            if name not in trackers:
                trackers.append(name)
    return trackers


def make_accelerator(
    device: str = "auto", mixed_precision: str = "auto", report_to: list | None = None, run_dir: Path | None = None
) -> Accelerator:
    """An Accelerator on `device` (auto|cpu|cuda|cuda:N|mps) in `mixed_precision` (auto: resolve_precision),
    logging to the trackers `report_to` (checked ones, see `check_report_to`) under RUN/trackers.

    Under a multi-process launcher each process takes the device of its LOCAL_RANK (`--device cuda`), or
    the CPU with gloo (`--device cpu`, or `accelerate launch --cpu`)."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    launcher_cpu = parse_flag_from_env("ACCELERATE_USE_CPU")
    wanted = resolve_device("cpu" if device == "auto" and launcher_cpu else device)
    if launcher_cpu and wanted.type != "cpu":
        raise XlgmError(f"--device {device}: the launcher asked for the CPU (accelerate launch --cpu)")
    if processes > 1 and (wanted.index is not None or wanted.type == "mps"):
        raise XlgmError(
            f"--device {device} names one device, but {processes} processes were launched; pass "
            f"--device cuda (each process takes the GPU of its LOCAL_RANK) or --device cpu"
        )
    precision = resolve_precision(mixed_precision, wanted)
    if precision == "fp16" and wanted.type != "cuda":
        raise XlgmError(f"--mixed-precision fp16 needs a CUDA GPU, not {wanted.type}; use bf16 or no")
    if wanted.type == "cuda" and wanted.index is not None:
        torch.cuda.set_device(wanted)
    if not torch.distributed.is_initialized():
        # accelerate keeps its device and precision for the life of the process; a single-process caller
        # (a study, the tests) may train on another device or in another precision next time.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    tracking = {}
    if report_to:
        if run_dir is None:
            raise XlgmError("--report-to needs the run folder to write the trackers' logs into")
        project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(Path(run_dir) / TRACKERS_FOLDER))
        tracking = {"log_with": report_to, "project_config": project}
    accelerator = Accelerator(mixed_precision=precision, cpu=wanted.type == "cpu", **tracking)
    if accelerator.device.type != wanted.type:
        raise XlgmError(f"--device {device}: accelerate placed training on {accelerator.device}")
    return accelerator


def broadcast_flag(accelerator: Accelerator, flag: bool, device: torch.device) -> bool:
    """The main process's decision, on every process (only it evaluates the held-out rows)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.broadcast(value, src=0)
    return bool(value.item())


def wait_for_everyone(accelerator: Accelerator) -> None:
    """A barrier. accelerate's hands gloo a GPU ordinal too (device_ids=[local rank]), which fails on a
    machine with fewer GPUs than CPU processes ("invalid device ordinal")."""
    if accelerator.num_processes == 1:
        return
    if accelerator.device.type == "cpu":
        torch.distributed.barrier()
    else:
        accelerator.wait_for_everyone()


def global_means(running: dict[str, list[float]], accelerator: Accelerator, device: torch.device) -> dict:
    """Each logged value's mean over the micro-batches of every process (every process calls this with
    the same keys: one objective, the same micro-batches per step)."""
    keys = sorted(running)
    if accelerator.num_processes == 1:
        return {k: float(np.mean(running[k])) for k in keys}
    sums = torch.tensor([[sum(running[k]), len(running[k])] for k in keys], dtype=torch.float64, device=device)
    sums = accelerator.reduce(sums, reduction="sum").cpu().tolist()
    return {k: total / count for k, (total, count) in zip(keys, sums)}
