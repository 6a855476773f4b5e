"""Files of finished units, checked before a study goes on; what is unfinished or corrupt is moved aside.

    OUT/quarantine/<time>/  files found unfinished or corrupt, moved aside (same layout as OUT) before redoing
                            their unit, and the database rows of a run that is redone (rows/<run_id>.json)

A run with a corrupt file (run files, selected checkpoints) is moved aside with its rows and redone; an
evaluation whose kept outputs are corrupt or gone is redone. Weights are corrupt when unreadable or when their
SHA-256 is not the one their run recorded (bytes flipped inside a tensor leave a readable file): each check reads
every selected checkpoint once, about 0.2 s per checkpoint of the embedded model.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Callable, Sequence
from pathlib import Path

from xlgm.core.errors import XlgmError
from xlgm.core.files import sha256_problem
from xlgm.runs import CONFIG, INDEX, INIT, INIT_HEAD, META, WEIGHTS, RunDir, read_json
from xlgm.study.db import StudyDB
from xlgm.study.folders import run_dir as study_run_dir
from xlgm.study.spec import StudySpec
from xlgm.study.units import eval_unit_id, outputs_path, train_unit_id

QUARANTINE = "quarantine"


class Quarantine:
    """OUT/quarantine/<time>/: where unfinished or corrupt files go, at the path they had under OUT."""

    def __init__(self, out: Path):
        self.out = Path(out)
        self._folder: Path | None = None

    @property
    def folder(self) -> Path:
        if self._folder is None:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            folder, n = self.out / QUARANTINE / stamp, 1
            while folder.exists():
                n += 1
                folder = self.out / QUARANTINE / f"{stamp}-{n}"
            self._folder = folder
        return self._folder

    def move(self, path: Path) -> Path:
        dest = self.folder / Path(path).resolve().relative_to(self.out.resolve())
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(path), str(dest))
        return dest

    def rows_file(self, run_id: str) -> Path:
        return self.folder / "rows" / f"{run_id}.json"


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file (missing, truncated, not safetensors), or None."""
    from safetensors import safe_open

    if not path.is_file():
        return f"{path}: missing"
    try:
        with safe_open(str(path), "pt"):  # reads the header and checks that the data covers it
            pass
    except Exception as err:  # noqa: BLE001 - safetensors raises its own error types (and OSError)
        return f"{path}: not a readable safetensors file ({_first_line(err)})"
    return None


def json_problem(path: Path) -> str | None:
    try:
        read_json(path)
    except XlgmError as err:
        return str(err)
    except (OSError, UnicodeDecodeError) as err:
        return f"{path}: not readable ({_first_line(err)})"
    return None


def run_problem(run_dir: Path, checkpoint_names: Sequence[str]) -> str | None:
    """What is wrong with a trained run's files (its own files and the named checkpoints), or None."""
    if not run_dir.is_dir():
        return f"{run_dir}: missing"
    for name in (CONFIG, INIT, INDEX):
        problem = json_problem(run_dir / name)
        if problem:
            return problem
    run = RunDir(run_dir)
    if not run.index.get("last"):
        return f"{run_dir / INDEX}: the training did not finish (no last checkpoint)"
    problem = weights_problem(run_dir / INIT_HEAD, run.init_head_sha256)
    for name in checkpoint_names:
        if problem:
            break
        folder = run.checkpoint_dir(name)
        problem = weights_problem(folder / WEIGHTS, run.checksums(name).get(WEIGHTS)) or json_problem(folder / META)
    return problem


def weights_problem(path: Path, sha256: str | None) -> str | None:
    """What is wrong with a weights file: unreadable, or not the checksum its run recorded (None: none)."""
    problem = safetensors_problem(path)
    if problem is None and (mismatch := sha256_problem(path, sha256)):
        problem = f"{path}: {mismatch}"
    return problem


def outputs_problem(path: Path) -> str | None:
    """What is wrong with a kept outputs file (.npz of `TextOutputs`), or None."""
    import zipfile

    import numpy as np

    if not path.is_file():
        return f"{path}: missing"
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in ("language", "logits") if k not in z.files]
            if missing:
                return f"{path}: not kept outputs (no {', '.join(missing)})"
            bad = z.zip.testzip()
            if bad is not None:
                return f"{path}: corrupt ({bad} fails its checksum)"
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        return f"{path}: not a readable .npz file ({_first_line(err)})"
    return None


def repair(
    spec: StudySpec, out: Path, db: StudyDB, configs, quarantine: Quarantine, say: Callable[[str], None]
) -> list[str]:
    """Check the files of the spec's finished units; move what is unfinished or corrupt aside and take the
    done-marks off the units that must be redone. Returns what was found (one line each)."""
    found: list[str] = []

    def report(line: str) -> None:
        found.append(line)
        say(line)

    done = db.done_units()
    for config in configs:
        run_id = config.run_id
        run_dir = study_run_dir(out, run_id, config)
        if train_unit_id(run_id) not in done:
            if run_dir.exists():  # `run_point` resumes it from its last checkpoint, or sets it aside
                report(f"{run_dir}: its training did not finish; it resumes from its last checkpoint")
            continue
        recorded = db.checkpoints_of(run_id)
        chosen = spec.checkpoints.selects([run_id] * len(recorded), [c["step"] for c in recorded])
        checkpoints = [c for c, keep in zip(recorded, chosen) if keep]
        names = [c["checkpoint_id"].split("/", 1)[1] for c in checkpoints]
        problem = run_problem(run_dir, names)
        if problem:
            where = f"moved to {quarantine.move(run_dir)}" if run_dir.exists() else "nothing to move"
            rows = db.set_aside_run(run_id, quarantine.rows_file(run_id))
            report(
                f"{problem}; run {run_id} {where} (its {rows} database rows to {quarantine.rows_file(run_id)}), "
                "the run is done again"
            )
            continue
        if not spec.prediction.enabled:
            continue
        redo = []
        for checkpoint, name in zip(checkpoints, names):
            for lang in spec.languages:
                unit = eval_unit_id(spec, checkpoint["checkpoint_id"], lang)
                path = outputs_path(spec, run_dir, name, lang)
                if unit in done and (problem := outputs_problem(path)):
                    where = f"moved to {quarantine.move(path)}" if path.exists() else "gone"
                    report(f"{problem}; {where}, the evaluation is done again")
                    redo.append(unit)
        db.forget_units(redo)
    return found
