"""`xlgm export RUN OUT`: a run's checkpoint as a Hugging Face folder.

The folder holds the full weights (model.safetensors), a config whose id2label/label2id name the task's
labels, and the tokenizer files, so that `AutoModelForSequenceClassification.from_pretrained(OUT)` (a token
task's run: `AutoModelForTokenClassification`, id2label its tags) and `AutoTokenizer.from_pretrained(OUT)`
load it, and `xlgm evaluate OUT` accepts its head. The weights are the model xlgm's own loader builds
(`load_target`: the base weights, the run's initial head, then the checkpoint's trained parameters), so the
exported model gives the same logits.

The folder is written beside OUT under a temporary name and moved into place once complete: an export cut
short leaves no folder that looks like a model.
"""

from __future__ import annotations

import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from transformers.utils import logging as hf_logging

from xlgm.core import validation
from xlgm.core.errors import ArgumentError, XlgmError
from xlgm.core.files import current_umask
from xlgm.data.tasks import get_task
from xlgm.models.load import load_target
from xlgm.runs import RunDir, is_run_dir, require_finished, resolve_target

CHECKPOINT_CHOICES = ("best", "last")


@dataclass(frozen=True)
class ExportConfig:
    """Which checkpoint of a run to export, and what to do with an existing OUT."""

    checkpoint: str = "best"  # best | last
    overwrite: bool = False  # replace a non-empty OUT
    allow_partial: bool = False  # export a run whose training did not finish
    verify: bool = True  # check the weights against the checksums the run recorded

    def __post_init__(self) -> None:
        validation.one_of(validation.flag("checkpoint"), self.checkpoint, CHECKPOINT_CHOICES)


def _check_out(out: Path, run_dir: Path, overwrite: bool) -> None:
    if out.exists() and not out.is_dir():
        raise XlgmError(f"{out}: exists and is not a folder")
    resolved, run = out.resolve(), run_dir.resolve()
    if resolved == run or run in resolved.parents or resolved in run.parents:
        raise XlgmError(f"{out}: the export folder must lie outside the run ({run_dir})")
    if out.is_dir() and any(out.iterdir()):
        if is_run_dir(out):
            raise XlgmError(f"{out}: holds an xlgm run; export into another folder")
        if not overwrite:
            raise ArgumentError(
                lambda pick: (
                    f"{out}: exists and is not empty; pass {pick('overwrite=True', '--overwrite')} to replace it"
                )
            )


def export_run(run: str | Path, out: str | Path, config: ExportConfig = ExportConfig()) -> Path:
    """Write checkpoint `config.checkpoint` of run `run` to `out` as a Hugging Face folder; returns `out`."""
    run_path, out = Path(run), Path(out)
    if not run_path.exists():
        raise XlgmError(f"{run}: no such run folder")
    if not (run_path.is_dir() and is_run_dir(run_path)):
        raise XlgmError(f"{run}: not a run directory (expected {run_path / 'config.json'} and init.json)")
    _check_out(out, run_path, config.overwrite)
    require_finished(run_path, config.allow_partial)
    target = resolve_target(str(run_path), config.checkpoint, config.verify)
    task = get_task(RunDir(run_path).config["task"])
    model, tokenizer = load_target(target, task.num_labels, task.label_names, output=task.output)
    # load_classifier gave a fresh head the task's label names; said again here, as the folder's contract.
    model.config.id2label = dict(enumerate(task.label_names))
    model.config.label2id = {name: i for i, name in enumerate(task.label_names)}
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", suffix=".tmp", dir=out.parent))
    try:
        staging.chmod(0o777 & ~current_umask())  # mkdtemp's folder is private; the export is an ordinary one
        bars = hf_logging.is_progress_bar_enabled()
        hf_logging.disable_progress_bar()  # one shard: its bar says nothing the line printed after does not
        try:
            model.save_pretrained(staging, safe_serialization=True)
        finally:
            if bars:
                hf_logging.enable_progress_bar()
        tokenizer.save_pretrained(staging)
        for written in staging.iterdir():  # safetensors writes 0600 files: follow the user's umask instead
            written.chmod(0o666 & ~current_umask())
        if out.exists():
            shutil.rmtree(out)  # empty, or replaced as --overwrite asked (_check_out refused a run)
        staging.rename(out)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return out
