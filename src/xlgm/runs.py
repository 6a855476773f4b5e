"""The run directory: what `xlgm train` writes and every later command reads.

    RUN/config.json            the TrainConfig, its run_id (hash of the config) and library versions
    RUN/init.json              how to rebuild the initial weights: the base model + init-head.safetensors
    RUN/init-head.safetensors  the freshly initialised parameters (the classification head)
    RUN/checkpoints/step-N/    model.safetensors (the trained parameters only) + meta.json
    RUN/checkpoints.json       index: every checkpoint with its dev accuracy, and which is `best`/`last`
    RUN/train_log.jsonl        one JSON object per logged step / evaluation
    RUN/results.sqlite         runs, checkpoints, evaluations, measures (see results.py)

Weights are stored as safetensors and metadata as JSON: nothing is ever unpickled. A checkpoint stores the
parameters that were trained; frozen ones (e.g. word embeddings) are the initial weights, so a checkpoint
of the embedded model is 90 MB rather than 470 MB.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file

from xlgm.errors import XlgmError

CONFIG = "config.json"
INIT = "init.json"
INIT_HEAD = "init-head.safetensors"
INDEX = "checkpoints.json"
WEIGHTS = "model.safetensors"
META = "meta.json"


def write_json(path: Path, obj: Any) -> None:
    """Write atomically: a crash leaves the old file or the new one, never half of one."""
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(obj, indent=2, sort_keys=True, default=str) + "\n")
    os.replace(tmp, path)


def read_json(path: Path) -> Any:
    try:
        return json.loads(Path(path).read_text())
    except FileNotFoundError as err:
        raise XlgmError(f"{path}: file not found") from err
    except json.JSONDecodeError as err:
        raise XlgmError(f"{path}:{err.lineno}: expected valid JSON ({err.msg})") from err


def save_tensors(tensors: dict[str, torch.Tensor], path: Path) -> None:
    tmp = path.with_suffix(".tmp")
    save_file({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}, str(tmp))
    os.replace(tmp, path)


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters being trained (tied parameters appear once, as in named_parameters)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> dict:
        return read_json(self.path / CONFIG)

    @property
    def index(self) -> dict:
        index_path = self.path / INDEX
        return read_json(index_path) if index_path.exists() else {"checkpoints": [], "best": None, "last": None}

    def checkpoint_dir(self, name: str) -> Path:
        return self.path / "checkpoints" / name

    def record_checkpoint(self, name: str, step: int, epoch: float, dev_accuracy: float | None, last: bool) -> dict:
        index = self.index
        index["checkpoints"] = [c for c in index["checkpoints"] if c["name"] != name]
        index["checkpoints"].append({"name": name, "step": step, "epoch": epoch, "dev_accuracy": dev_accuracy})
        index["checkpoints"].sort(key=lambda c: c["step"])
        scored = [c for c in index["checkpoints"] if c["dev_accuracy"] is not None]
        if scored:  # ties go to the earlier checkpoint
            index["best"] = max(scored, key=lambda c: (c["dev_accuracy"], -c["step"]))["name"]
        if last:
            index["last"] = name
        write_json(self.path / INDEX, index)
        return index


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / INIT).is_file()


def is_checkpoint_dir(path: Path) -> bool:
    return (path / WEIGHTS).is_file() and (path / META).is_file()


def save_checkpoint(run: RunDir, model: torch.nn.Module, name: str, meta: dict) -> Path:
    out = run.checkpoint_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(trained_state(model), out / WEIGHTS)
    write_json(out / META, meta)
    return out


@dataclass(frozen=True)
class ResolvedTarget:
    """What a TARGET argument names: a base model, or a checkpoint of a run."""

    model: str  # the base model spec (embedded, Hub id, path)
    run_dir: Path | None = None
    checkpoint: Path | None = None

    @property
    def label(self) -> str:
        if self.checkpoint is not None:
            return f"{self.run_dir.name}/{self.checkpoint.name}"
        return self.model


# A Hugging Face Hub model id: `name` or `org/name`, of letters, digits and - _ . (huggingface_hub's rule).
HUB_ID = re.compile(r"(?:[\w.-]+/)?[\w.-]+")


def looks_like_path(target: str) -> bool:
    """Whether TARGET can only name a local folder, so that a missing one is an error and not a Hub lookup.

    A path: it starts with `/`, `./`, `../` or `~` (or is `.`/`..`); it has more than one slash; its first
    component is a local folder (`runs/e5-adamw-typo` where `runs/` exists); or it is no valid Hub id. Anything
    else (`bert-base-multilingual-cased`, `google/mt5-base` where no `google/` folder is here) is a Hub id.
    """
    if target in (".", "..") or target.startswith(("/", "./", "../", "~", "\\")) or "\\" in target:
        return True
    parts = target.rstrip("/").split("/")
    if len(parts) > 2 or target.endswith("/"):
        return True
    if len(parts) == 2 and Path(parts[0]).is_dir():
        return True
    return HUB_ID.fullmatch(target) is None or ".." in target or "--" in target


def resolve_target(target: str, which: str = "best") -> ResolvedTarget:
    """A run directory (its `best` or `last` checkpoint), a checkpoint directory, a model folder, or a model
    name (`embedded`, a Hub id). A TARGET that looks like a path (`looks_like_path`) must exist."""
    path = Path(target).expanduser()
    if path.is_dir() and is_run_dir(path):
        run = RunDir(path)
        name = run.index.get(which)
        if name is None:
            raise XlgmError(f"{path}: the run has no {which!r} checkpoint yet (see {path / INDEX})")
        return ResolvedTarget(run.config["model"], path, run.checkpoint_dir(name))
    if path.is_dir() and is_checkpoint_dir(path):
        run_path = path.parent.parent
        if not is_run_dir(run_path):
            raise XlgmError(f"{path}: a checkpoint outside its run directory (expected {run_path / CONFIG})")
        return ResolvedTarget(RunDir(run_path).config["model"], run_path, path)
    if path.parent.is_dir() and is_run_dir(path.parent) and path.name in ("best", "last"):
        return resolve_target(str(path.parent), path.name)
    if path.is_dir():
        return ResolvedTarget(str(path) if target.startswith("~") else target)  # a model folder
    if path.exists():
        raise XlgmError(f"{target}: not a folder; expected a run, a checkpoint or a model folder")
    if looks_like_path(target):
        raise XlgmError(f"{target}: no such run or model folder")
    return ResolvedTarget(target)


def load_initial_into(model: torch.nn.Module, run_path: Path) -> None:
    """Put back the run's initial head (the base weights come from `from_pretrained`)."""
    head = load_file(str(run_path / INIT_HEAD))
    missing = set(head) - dict(model.named_parameters()).keys()
    if missing:
        raise XlgmError(f"{run_path / INIT_HEAD}: parameters {sorted(missing)[:3]} do not exist in the model")
    model.load_state_dict(head, strict=False)


def load_checkpoint_into(model: torch.nn.Module, checkpoint: Path) -> None:
    state = load_file(str(checkpoint / WEIGHTS))
    own = dict(model.named_parameters())
    unknown = [k for k in state if k not in own]
    if unknown:
        raise XlgmError(f"{checkpoint / WEIGHTS}: tensors {unknown[:3]} do not belong to this model")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)
