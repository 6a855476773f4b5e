"""A run's weights, as a model sees them: which model and checkpoint a TARGET names (`ResolvedTarget`), and
copying a run's initial head and a checkpoint's trained parameters into a loaded model, checked name by name
and shape by shape. The rest of the run directory's layout is `xlgm.runs`."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from xlgm.core.errors import XlgmError
from xlgm.core.files import read_safetensors

# File names inside a run directory (see xlgm.runs): the freshly initialised head, and a checkpoint's weights.
INIT_HEAD = "init-head.safetensors"
WEIGHTS = "model.safetensors"


@dataclass(frozen=True)
class ResolvedTarget:
    """What a TARGET argument names: a base model, or a checkpoint of a run."""

    model: str  # the base model spec (embedded, Hub id, path)
    run_dir: Path | None = None
    checkpoint: Path | None = None
    # The SHA-256 the run recorded for the checkpoint's weights and for its initial head; None: not recorded (a
    # run written before checksums) or not to be checked (--no-verify).
    weights_sha256: str | None = None
    init_head_sha256: str | None = None

    @property
    def label(self) -> str:
        if self.checkpoint is not None and self.run_dir is not None:
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
        return (
            f"checkpoint has {size} {theirs_dim}, the model {ours_dim} "
            f"(tensor {name}: {list(theirs)}, the model's {list(ours)})"
        )
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
        raise XlgmError(
            f"{source}: tensor{'s' if len(unknown) > 1 else ''} {', '.join(unknown[:3])}{more} "
            f"{'are' if len(unknown) > 1 else 'is'} not a parameter of the model "
            f"({len(state)} in the file, {len(own)} in the model): a checkpoint of another architecture"
        )
    mismatches = [(k, tuple(v.shape), tuple(own[k].shape)) for k, v in state.items() if v.shape != own[k].shape]
    if mismatches:
        raise XlgmError(f"{source}: {_shape_mismatch(model, mismatches)}")
    with torch.no_grad():
        for name, tensor in state.items():
            own[name].copy_(tensor)


def load_initial_into(model: torch.nn.Module, run_path: Path, sha256: str | None = None) -> None:
    """Put back the run's initial head (the base weights come from `from_pretrained`); with `sha256`, the file
    must have that checksum."""
    path = Path(run_path) / INIT_HEAD
    copy_tensors_into(model, read_safetensors(path, sha256), path)


def load_checkpoint_into(model: torch.nn.Module, checkpoint: Path, sha256: str | None = None) -> None:
    """Put a checkpoint's trained parameters into the model (the rest stays as loaded); with `sha256`, the
    weights file must have that checksum."""
    path = Path(checkpoint) / WEIGHTS
    state = read_safetensors(path, sha256)
    if not state:
        raise XlgmError(f"{path}: holds no tensors")
    copy_tensors_into(model, state, path)
