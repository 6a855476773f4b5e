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

from dataclasses import dataclass
from pathlib import Path

import torch

# read_json, write_json and save_tensors live in core.files; imported here for the callers that know them
# as xlgm.runs names.
from xlgm.core.files import read_json, read_safetensors, save_tensors, write_json  # noqa: F401
from xlgm.errors import XlgmError

CONFIG = "config.json"
INIT = "init.json"
INIT_HEAD = "init-head.safetensors"
INDEX = "checkpoints.json"
WEIGHTS = "model.safetensors"
META = "meta.json"


def trained_state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The parameters being trained (tied parameters appear once, as in named_parameters)."""
    return {name: p for name, p in model.named_parameters() if p.requires_grad}


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


def resolve_target(target: str, which: str = "best") -> ResolvedTarget:
    """A run directory (its `best` or `last` checkpoint), a checkpoint directory, or a model spec."""
    path = Path(target)
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
    return ResolvedTarget(target)


# The sizes a mismatching dimension can be named by, most telling first: (what to call it, config attributes
# that hold it in one architecture or another).
_NAMED_SIZES = (
    ("hidden size", ("hidden_size", "d_model", "dim", "n_embd")),
    ("intermediate size", ("intermediate_size", "d_ff", "hidden_dim", "n_inner")),
    ("vocabulary size", ("vocab_size",)),
    ("number of labels", ("num_labels",)),
    ("number of positions", ("max_position_embeddings", "n_positions")),
    ("number of token types", ("type_vocab_size",)),
    ("attention head size", ("d_kv",)),
)


def _size_name(config: object, value: int) -> tuple[int, str] | None:
    """(priority, name) of the config size that equals `value`, or None."""
    for rank, (name, attributes) in enumerate(_NAMED_SIZES):
        if any(getattr(config, a, None) == value for a in attributes):
            return rank, name
    return None


def _shape_mismatch(model: torch.nn.Module, mismatches: list[tuple[str, tuple, tuple]]) -> str:
    """'checkpoint has hidden size 48, the model 32 (tensor T: [100, 48], the model's [100, 32])'."""
    config = getattr(model, "config", None)
    best: tuple[int, str, int, int, str, tuple, tuple] | None = None
    for name, theirs, ours in mismatches:
        if len(theirs) != len(ours):
            continue
        for dim_theirs, dim_ours in zip(theirs, ours):
            if dim_theirs == dim_ours:
                continue
            named = _size_name(config, dim_ours) if config is not None else None
            if named is not None and (best is None or named[0] < best[0]):
                best = (named[0], named[1], dim_theirs, dim_ours, name, theirs, ours)
    if best is not None:
        _, size, theirs_dim, ours_dim, name, theirs, ours = best
        return (f"checkpoint has {size} {theirs_dim}, the model {ours_dim} "
                f"(tensor {name}: {list(theirs)}, the model's {list(ours)})")
    name, theirs, ours = mismatches[0]
    return f"tensor {name} has shape {list(theirs)}, the model's parameter {list(ours)}"


def copy_tensors_into(model: torch.nn.Module, state: dict[str, torch.Tensor], source: Path) -> None:
    """Copy `state` into the model's parameters of the same names, after checking every name and shape:
    a tensor the model does not have, or of another shape, is one line naming `source`, and then nothing
    has been copied."""
    own = dict(model.named_parameters())
    unknown = sorted(k for k in state if k not in own)
    if unknown:
        more = f" and {len(unknown) - 3} more" if len(unknown) > 3 else ""
        raise XlgmError(f"{source}: tensor{'s' if len(unknown) > 1 else ''} {', '.join(unknown[:3])}{more} "
                        f"{'are' if len(unknown) > 1 else 'is'} not a parameter of the model "
                        f"({len(state)} in the file, {len(own)} in the model): a checkpoint of another architecture")
    mismatches = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape]
    if mismatches:
        raise XlgmError(f"{source}: {_shape_mismatch(model, mismatches)}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def load_initial_into(model: torch.nn.Module, run_path: Path) -> None:
    """Put back the run's initial head (the base weights come from `from_pretrained`)."""
    path = Path(run_path) / INIT_HEAD
    copy_tensors_into(model, read_safetensors(path), path)


def load_checkpoint_into(model: torch.nn.Module, checkpoint: Path) -> None:
    """Put a checkpoint's trained parameters into the model (the rest stays as loaded)."""
    path = Path(checkpoint) / WEIGHTS
    state = read_safetensors(path)
    if not state:
        raise XlgmError(f"{path}: holds no tensors")
    copy_tensors_into(model, state, path)
