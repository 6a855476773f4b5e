"""The run directory: what `xlgm train` writes and every later command reads.

    RUN/config.json            the TrainConfig, its run_id (hash of the config) and library versions
    RUN/init.json              how to rebuild the initial weights: the base model + init-head.safetensors
                               (and its SHA-256)
    RUN/init-head.safetensors  the freshly initialised parameters (the classification head)
    RUN/checkpoints/step-N/    model.safetensors (the trained parameters only) + meta.json; the latest
                               checkpoint of an unfinished run also holds training-state.safetensors +
                               training-state.json (optimizer, schedule, data position, random states)
    RUN/checkpoints.json       index: every checkpoint with its dev accuracy and the SHA-256 of its weights
                               (`sha256`), and which is `best`/`last`
    RUN/state.json             whether training finished, on which device, in how many processes and in which
                               (resolved) precision, and the machine of each training session (`machines`:
                               from_step, machine: `xlgm.core.machine.machine_record`)
    RUN/train_log.jsonl        one JSON object per logged step / evaluation
    RUN/trackers/              with `--report-to`: the trackers' local files (TensorBoard events, ...)
    RUN/results.sqlite         runs, checkpoints, evaluations, measures (see results.py)

Weights are stored as safetensors and metadata as JSON: nothing is ever unpickled. A checkpoint stores the
parameters that were trained; frozen ones (e.g. word embeddings) are the initial weights, so a checkpoint
of the embedded model is 90 MB rather than 470 MB. Loading a run's weights checks them against the SHA-256
recorded when they were written (bytes flipped inside a tensor leave a readable file); runs written before
checksums were recorded load unchecked.
"""

from __future__ import annotations

import fnmatch
import json
import os
import random
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch

from xlgm.core.errors import ArgumentError, XlgmError

# read_json, write_json and save_tensors live in core.files; callers also know them as xlgm.runs names.
from xlgm.core.files import file_sha256, read_json, read_safetensors, save_tensors, write_json
from xlgm.core.machine import combined_record

# How a run's weights are stored and loaded into a model belongs to the models layer; re-exported here, where
# the rest of a run's layout is.
from xlgm.models.checkpoints import INIT_HEAD as INIT_HEAD
from xlgm.models.checkpoints import WEIGHTS as WEIGHTS
from xlgm.models.checkpoints import ResolvedTarget as ResolvedTarget
from xlgm.models.checkpoints import copy_tensors_into as copy_tensors_into
from xlgm.models.checkpoints import load_checkpoint_into as load_checkpoint_into
from xlgm.models.checkpoints import load_initial_into as load_initial_into
from xlgm.models.checkpoints import looks_like_path as looks_like_path

CONFIG = "config.json"
INIT = "init.json"
INDEX = "checkpoints.json"
META = "meta.json"
STATE = "state.json"
LOG = "train_log.jsonl"
TRAINING_STATE = "training-state.safetensors"
TRAINING_STATE_META = "training-state.json"
TRACKERS_FOLDER = "trackers"  # what `xlgm train --report-to` logs locally (TensorBoard events, wandb/mlflow files)
# What `xlgm train` and the commands reading a run write into it: `--overwrite` deletes these and nothing
# else, and refuses a folder that holds anything more (a user's file is never deleted).
RUN_ENTRIES = (
    CONFIG,
    INIT,
    INIT_HEAD,
    INDEX,
    STATE,
    LOG,
    "checkpoints",
    "results.sqlite",
    "results.sqlite-journal",
    "results.sqlite-wal",
    "results.sqlite-shm",
    "eval-*.json",
    "measures.json",
    "outputs",
    TRACKERS_FOLDER,
    "*.tmp",
)


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters being trained (tied parameters appear once, as in named_parameters)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


def checkpoint_name(step: int) -> str:
    """The folder a run keeps the checkpoint of optimizer step `step` in (RUN/checkpoints/NAME)."""
    return f"step-{step:06d}"


@dataclass(frozen=True)
class RunDir:
    path: Path

    @property
    def config(self) -> dict:
        return read_json(self.path / CONFIG, required=("model", "task", "run_id"))

    @property
    def index(self) -> dict:
        index_path = self.path / INDEX
        if not index_path.exists():
            return {"checkpoints": [], "best": None, "last": None}
        return read_json(index_path, required=("checkpoints",))

    @property
    def state(self) -> dict | None:
        """state.json, or None for a run written before runs recorded it."""
        path = self.path / STATE
        return read_json(path) if path.exists() else None

    @property
    def machine(self) -> dict | None:
        """The machine that trained the run: one record, or `{"mixed": [...]}` when its sessions ran on different
        kinds of machine (`core.machine.combined_record`); None for a run written before runs recorded it."""
        sessions = (self.state or {}).get("machines") or []
        return combined_record([s.get("machine") for s in sessions])

    def write_state(self, **fields: Any) -> dict:
        state = {**(self.state or {}), **fields}
        write_json(self.path / STATE, state)
        return state

    @property
    def finished(self) -> bool:
        state = self.state
        if state is not None:
            return bool(state.get("finished"))
        # Runs written before state.json set `last` only when training ended.
        return self.index.get("last") is not None

    @property
    def last_checkpoint(self) -> dict | None:
        checkpoints = self.index["checkpoints"]
        return checkpoints[-1] if checkpoints else None

    def checkpoint_dir(self, name: str) -> Path:
        return self.path / "checkpoints" / name

    def checksums(self, name: str) -> dict[str, str]:
        """file name -> SHA-256 of checkpoint `name`'s weight files, as the index records them (none for a
        checkpoint of a run written before checksums, or one the index does not hold)."""
        entry = next((c for c in self.index["checkpoints"] if c["name"] == name), None)
        return dict(entry.get("sha256") or {}) if entry else {}

    @property
    def init_head_sha256(self) -> str | None:
        """The SHA-256 init.json records for the initial head, or None (a run written before checksums)."""
        return (read_json(self.path / INIT).get("sha256") or {}).get(INIT_HEAD)

    def target(self, name: str, verify: bool = True) -> ResolvedTarget:
        """Checkpoint `name` of this run as a TARGET; `verify`: loading it checks the recorded checksums."""
        return ResolvedTarget(
            self.config["model"],
            self.path,
            self.checkpoint_dir(name),
            weights_sha256=self.checksums(name).get(WEIGHTS) if verify else None,
            init_head_sha256=self.init_head_sha256 if verify else None,
        )

    def record_checkpoint(
        self, name: str, step: int, epoch: float, dev_accuracy: float | None, sha256: dict[str, str] | None = None
    ) -> dict:
        """Add a checkpoint to the index, with the checksums of its weight files (`save_checkpoint`'s); it becomes
        `last`, and `best` if its accuracy is the highest."""
        index = self.index
        index["checkpoints"] = [c for c in index["checkpoints"] if c["name"] != name]
        entry = {"name": name, "step": step, "epoch": epoch, "dev_accuracy": dev_accuracy}
        index["checkpoints"].append({**entry, "sha256": sha256} if sha256 else entry)
        index["checkpoints"].sort(key=lambda c: c["step"])
        scored = [c for c in index["checkpoints"] if c["dev_accuracy"] is not None]
        if scored:  # ties go to the earlier checkpoint
            index["best"] = max(scored, key=lambda c: (c["dev_accuracy"], -c["step"]))["name"]
        index["last"] = index["checkpoints"][-1]["name"]
        write_json(self.path / INDEX, index)
        return index

    def save_training_state(self, name: str, tensors: dict[str, torch.Tensor], meta: dict) -> None:
        """What resuming needs besides the weights: tensors as safetensors, the rest as JSON (no pickle)."""
        out = self.checkpoint_dir(name)
        save_tensors(tensors, out / TRAINING_STATE)
        write_json(out / TRAINING_STATE_META, meta)

    def has_training_state(self, name: str) -> bool:
        out = self.checkpoint_dir(name)
        return (out / TRAINING_STATE).is_file() and (out / TRAINING_STATE_META).is_file()

    def load_training_state(self, name: str) -> tuple[dict[str, torch.Tensor], dict]:
        out = self.checkpoint_dir(name)
        return read_safetensors(out / TRAINING_STATE), read_json(out / TRAINING_STATE_META)

    def drop_training_state(self, name: str) -> None:
        """Training state is kept for the latest checkpoint only: it is twice the weights' size."""
        for file in (TRAINING_STATE, TRAINING_STATE_META):
            (self.checkpoint_dir(name) / file).unlink(missing_ok=True)

    def rewind(self, step: int) -> None:
        """Forget what was written after `step`, the step training resumes from: checkpoint folders the
        index does not hold (a save cut short) or holds after `step`, and train_log.jsonl records after
        it (a record cut short by a kill included)."""
        index = self.index
        later = [c for c in index["checkpoints"] if c["step"] > step]
        if later:
            index["checkpoints"] = [c for c in index["checkpoints"] if c["step"] <= step]
            names = {c["name"] for c in index["checkpoints"]}
            index["best"] = index["best"] if index["best"] in names else None
            index["last"] = index["checkpoints"][-1]["name"] if index["checkpoints"] else None
            write_json(self.path / INDEX, index)
        kept = {c["name"] for c in index["checkpoints"]}
        folder = self.path / "checkpoints"
        if folder.is_dir():
            for child in folder.iterdir():
                if child.name not in kept:
                    _remove(child)
        log = self.path / LOG
        if log.exists():
            records = []
            for line in log.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:
                    continue
                if isinstance(record, dict) and record.get("step", 0) <= step:
                    records.append(line)
            tmp = log.with_suffix(log.suffix + ".tmp")
            tmp.write_text("".join(r + "\n" for r in records))
            os.replace(tmp, log)


# ------------------------------------------------------------------------------------------------------------
# Training state: what a checkpoint of an unfinished run holds besides its weights, so that training resumes
# exactly where it stopped
# ------------------------------------------------------------------------------------------------------------


def training_state(optimizer, scheduler, scaler, generator: torch.Generator) -> tuple[dict, dict]:
    """Optimizer, schedule, loss scale and random states as (tensors, JSON): nothing needs pickle."""
    optimizer_state = optimizer.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    plain: dict[str, dict] = {}
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                tensors[f"optimizer/{index}/{key}"] = value
            else:
                plain.setdefault(str(index), {})[key] = value
    tensors["rng/torch"] = torch.get_rng_state()
    tensors["rng/objective"] = generator.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    # numpy's stubs type the no-argument call as returning a dict; with its default legacy=True it returns
    # the global MT19937 state as this tuple
    numpy_state = cast(tuple[str, np.ndarray, int, int, float], np.random.get_state())
    name, keys, position, has_gauss, gauss = numpy_state
    meta = {
        "optimizer": {"param_groups": optimizer_state["param_groups"], "state": plain},
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict() if scaler is not None else None,
        "rng": {
            "python": random.getstate(),
            "numpy": [name, keys.tolist(), int(position), int(has_gauss), float(gauss)],
        },
    }
    return tensors, meta


def restore_training_state(tensors: dict, meta: dict, optimizer, scheduler, scaler, generator: torch.Generator) -> None:
    state: dict[int, dict] = {int(i): dict(v) for i, v in meta["optimizer"]["state"].items()}
    for key, value in tensors.items():
        kind, *rest = key.split("/")
        if kind == "optimizer":
            state.setdefault(int(rest[0]), {})[rest[1]] = value
    optimizer.load_state_dict({"state": state, "param_groups": meta["optimizer"]["param_groups"]})
    scheduler.load_state_dict(meta["scheduler"])
    if scaler is not None and meta.get("scaler"):
        scaler.load_state_dict(meta["scaler"])
    torch.set_rng_state(tensors["rng/torch"])
    generator.set_state(tensors["rng/objective"])
    cuda = sorted((k for k in tensors if k.startswith("rng/cuda/")), key=lambda k: int(k.rsplit("/", 1)[1]))
    if cuda and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([tensors[k] for k in cuda][: torch.cuda.device_count()])
    version, internal, gauss = meta["rng"]["python"]
    random.setstate((version, tuple(internal), gauss))
    name, keys, position, has_gauss, cached = meta["rng"]["numpy"]
    np.random.set_state((name, np.asarray(keys, dtype=np.uint32), position, has_gauss, cached))


def _remove(path: Path) -> None:
    import shutil

    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink(missing_ok=True)


def _run_entries(path: Path) -> tuple[list[Path], list[Path]]:
    """The folder's entries that a run writes, and the others."""
    known: list[Path] = []
    other: list[Path] = []
    for child in sorted(path.iterdir()):
        (known if any(fnmatch.fnmatch(child.name, p) for p in RUN_ENTRIES) else other).append(child)
    return known, other


def _config_difference(stored: dict, wanted: dict) -> str:
    keys = sorted(k for k in set(stored) | set(wanted) if k in wanted and stored.get(k) != wanted.get(k))
    return ", ".join(f"{k} {stored.get(k)!r} there, {wanted[k]!r} here" for k in keys[:3]) or "its run id differs"


def claim_run_dir(path: Path, config: dict, run_id: str, *, resume: bool = False, overwrite: bool = False) -> str:
    """Decide what training does with `path`; returns `new` (nothing of a run is there), `resume` (the same
    config's unfinished run) or `finished` (the same config's finished run, with `resume`). Changes nothing on
    disk: `clear_run_dir` does, once every process has decided. Raises a one-line XlgmError otherwise."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise XlgmError(f"{path}: exists and is not a folder")
    if not path.exists() or not any(path.iterdir()):
        if resume and not overwrite:
            raise ArgumentError(
                lambda pick: f"{path}: {pick('resume=True', '--resume')}, but the folder holds no run to resume"
            )
        return "new"
    _, other = _run_entries(path)
    if not (path / CONFIG).is_file():
        if other:
            raise XlgmError(f"{path}: not empty and not an xlgm run (it holds {other[0].name}); choose another folder")
        if overwrite:
            return "new"
        raise ArgumentError(
            lambda pick: (
                f"{path}: holds parts of a run without its {CONFIG}; pass "
                f"{pick('overwrite=True', '--overwrite')} to replace them"
            )
        )
    if overwrite and other:
        raise ArgumentError(
            lambda pick: (
                f"{path}: {pick('overwrite=True', '--overwrite')} deletes only what xlgm wrote, and the "
                f"folder also holds {other[0].name}; move it away first"
            )
        )
    if overwrite and not resume:
        return "new"
    try:
        stored = read_json(path / CONFIG)
    except XlgmError:
        if overwrite:
            return "new"
        raise
    same = isinstance(stored, dict) and stored.get("run_id") == run_id
    if resume and same:
        return "finished" if RunDir(path).finished else "resume"
    if overwrite:
        return "new"
    if not same:
        difference = _config_difference(stored, config) if isinstance(stored, dict) else "unreadable config"
        other_run = stored.get("run_id") if isinstance(stored, dict) else "?"
        raise ArgumentError(
            lambda pick: (
                f"{path}: holds run {other_run} of another config ({difference}); pass "
                f"{pick('overwrite=True', '--overwrite')} to replace it, or choose another folder"
            )
        )
    run = RunDir(path)
    last = run.last_checkpoint
    where = "finished" if run.finished else f"unfinished, last checkpoint {last['name'] if last else 'none'}"
    raise ArgumentError(
        lambda pick: (
            f"{path}: already holds this run ({run_id}, {where}); pass {pick('resume=True', '--resume')} "
            f"to continue it or {pick('overwrite=True', '--overwrite')} to train it again"
        )
    )


def clear_run_dir(path: Path) -> None:
    """Delete what a run wrote into `path` (only that: `claim_run_dir` refused folders holding more). The
    config goes first, so a deletion cut short leaves no folder that looks like a complete run."""
    path = Path(path)
    if not path.is_dir():
        return
    known, other = _run_entries(path)
    if other:
        raise XlgmError(f"{path}: holds {other[0].name}, which xlgm did not write; not deleting the folder")
    for child in sorted(known, key=lambda c: c.name != CONFIG):
        _remove(child)


def require_finished(run_dir: Path, allow_partial: bool = False) -> None:
    """Refuse a run whose training did not finish, unless `allow_partial` (then say so on stderr)."""
    run = RunDir(Path(run_dir))
    if run.finished:
        return
    last = run.last_checkpoint
    message = (
        f"{run_dir}: training did not finish (last checkpoint {last['name']})"
        if last
        else f"{run_dir}: training did not finish (no checkpoint yet)"
    )
    if not allow_partial:
        raise ArgumentError(
            lambda pick: f"{message}; pass {pick('allow_partial=True', '--allow-partial')} to use it anyway"
        )
    print(f"xlgm: note: {message}; using it as --allow-partial says", file=sys.stderr)


def is_run_dir(path: Path) -> bool:
    return (path / CONFIG).is_file() and (path / INIT).is_file()


def is_checkpoint_dir(path: Path) -> bool:
    return (path / WEIGHTS).is_file() and (path / META).is_file()


def save_checkpoint(run: RunDir, model: torch.nn.Module, name: str, meta: dict) -> dict[str, str]:
    """Write checkpoint `name` (the trained parameters and `meta`); returns the SHA-256 of its weight file, for
    the index (`RunDir.record_checkpoint`)."""
    out = run.checkpoint_dir(name)
    out.mkdir(parents=True, exist_ok=True)
    save_tensors(trained_state(model), out / WEIGHTS)
    write_json(out / META, meta)
    return {WEIGHTS: file_sha256(out / WEIGHTS)}


def save_initial_head(run: RunDir, head: dict[str, torch.Tensor], model: str) -> None:
    """The freshly initialised parameters and init.json, which names the base model and records their SHA-256."""
    save_tensors(head, run.path / INIT_HEAD)
    write_json(
        run.path / INIT,
        {
            "model": model,
            "head": INIT_HEAD,
            "head_parameters": sorted(head),
            "sha256": {INIT_HEAD: file_sha256(run.path / INIT_HEAD)},
        },
    )


def resolve_target(target: str, which: str = "best", verify: bool = True) -> ResolvedTarget:
    """A run directory (its `best` or `last` checkpoint), a checkpoint directory, a model folder, or a model
    name (`embedded`, a Hub id). A TARGET that looks like a path (`looks_like_path`) must exist. `verify`:
    loading a run's checkpoint checks its recorded checksums."""
    path = Path(target).expanduser()
    if path.is_dir() and is_run_dir(path):
        run = RunDir(path)
        name = run.index.get(which)
        if name is None:
            raise XlgmError(f"{path}: the run has no {which!r} checkpoint yet (see {path / INDEX})")
        return run.target(name, verify)
    if path.is_dir() and is_checkpoint_dir(path):
        run_path = path.parent.parent
        if not is_run_dir(run_path):
            raise XlgmError(f"{path}: a checkpoint outside its run directory (expected {run_path / CONFIG})")
        return RunDir(run_path).target(path.name, verify)
    if path.parent.is_dir() and is_run_dir(path.parent) and path.name in ("best", "last"):
        return resolve_target(str(path.parent), path.name, verify)
    if path.is_dir():
        return ResolvedTarget(str(path) if target.startswith("~") else target)  # a model folder
    if path.exists():
        raise XlgmError(f"{target}: not a folder; expected a run, a checkpoint or a model folder")
    if looks_like_path(target):
        raise XlgmError(f"{target}: no such run or model folder")
    return ResolvedTarget(target)
