"""`xlgm study run SPEC`: train every grid point, evaluate and measure its checkpoints, one SQLite file per study.

    OUT/spec.yaml        the validated spec as last run (every default written out; `analyze OUT` reads it)
    OUT/study.sqlite     runs, checkpoints, evaluations, measures (`xlgm.results`) + study, study_runs, work;
                         its paths are relative to OUT, so the folder can be moved or copied
    OUT/runs/<run_id>/   one run directory per grid point (`xlgm.runs`), named by its config hash
    OUT/quarantine/<time>/  files found unfinished or corrupt, moved aside (same layout as OUT) before redoing
                         their unit, and the database rows of a run that is redone (rows/<run_id>.json)
    OUT/.lock            held by the running `study run` (`xlgm.study.lock`): one at a time per folder

Work is cut into units (`xlgm.study.db`): a run's training, each (checkpoint, language) evaluation and each
(checkpoint, measure) measurement. A unit's rows and its done-mark are written in one transaction, so the study
can be killed at any moment (kill -9 included) and run again: finished units are skipped, a run directory whose
training has no done-mark resumes from its last checkpoint (`xlgm train --resume`: optimizer, schedule, data
order and random states, so it ends as if never stopped) or, when it cannot be resumed, is moved aside and
trained again, and nothing is recorded twice.
Before any work, the files of finished units are checked (run files and selected checkpoints readable, kept
outputs readable): a run with a corrupt file is moved aside with its rows and redone, an evaluation whose kept
outputs are corrupt or gone is redone.

Progress: every run's checkpoints follow from the spec and the size of its training set
(`expected_checkpoint_steps`), so the number of units is known before the first one starts and the study's bar
only moves forward.

Executors. `local` runs the grid points one after the other in this process, on `--device`. `ray` runs each
grid point as a Ray task (one GPU per task when the cluster has GPUs and the device is not `cpu`, else
`cpus_per_task` CPUs) that trains, evaluates and measures one run on its GPU (or CPU) and RETURNS its unit rows;
only the driver writes the SQLite file. The tasks write their run directories under OUT, so on a multi-node
cluster OUT must be on a shared filesystem.
"""

from __future__ import annotations

import math
import os
import re
import shutil
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from xlgm.core.devices import resolve_device, resolve_precision
from xlgm.core.errors import XlgmError
from xlgm.core.files import read_safetensors
from xlgm.data.loading import DataSource, load_examples
from xlgm.data.tasks import get_task
from xlgm.measures.base import compute_group_measure, list_measures
from xlgm.models.load import load_target
from xlgm.recipes.evaluate import evaluate_languages
from xlgm.recipes.measure import build_batches, cached_initial_state, compute_measures
from xlgm.recipes.train import freeze_parameters, split_train_select, train
from xlgm.results import config_hash
from xlgm.runs import CONFIG, INDEX, INIT, INIT_HEAD, META, WEIGHTS, ResolvedTarget, RunDir, read_json
from xlgm.study.db import RUNS_FOLDER, StudyDB
from xlgm.study.lock import study_lock
from xlgm.study.spec import StudySpec

DB_NAME = "study.sqlite"
SPEC_NAME = "spec.yaml"
QUARANTINE = "quarantine"
EXECUTORS = ("local", "ray")


# ------------------------------------------------------------------------------------------------------------
# Names and keys
# ------------------------------------------------------------------------------------------------------------


def default_out(spec: StudySpec) -> Path:
    return Path("runs") / f"study-{re.sub(r'[^A-Za-z0-9_.-]+', '-', spec.name)}"


def eval_data_label(spec: StudySpec) -> str:
    """The `data` column of the evaluations: the source, and the row limit when there is one (so that
    evaluations on the first 100 rows and on all rows are different rows, not one overwriting the other)."""
    base = str(spec.data.dir) if spec.data.kind == "local" else spec.data.kind
    return base if spec.evaluation.max_examples is None else f"{base}[:{spec.evaluation.max_examples}]"


def train_unit_id(run_id: str) -> str:
    return f"train/{run_id}"


def eval_key(spec: StudySpec) -> str:
    """What identifies an evaluation setting (and, when outputs are kept, how they are kept)."""
    setting: dict[str, Any] = {
        "task": spec.task,
        "split": spec.evaluation.split,
        "data": eval_data_label(spec),
        "max_length": spec.eval_max_length(),
    }
    if spec.evaluation.mixed_precision != "no":  # fp32 evaluations keep the keys they always had
        setting["mixed_precision"] = spec.evaluation.mixed_precision
    if spec.prediction.enabled:  # a study that starts keeping outputs evaluates again to get them
        setting["outputs"] = {"layer": spec.prediction.embedding_layer, "rows": spec.prediction.embedding_rows}
    return config_hash(setting, 8)


def eval_unit_id(spec: StudySpec, checkpoint_id: str, language: str) -> str:
    return f"eval/{checkpoint_id}/{eval_key(spec)}/{language}"


def outputs_path(spec: StudySpec, run_dir: Path, checkpoint_name: str, language: str) -> Path:
    """Where an evaluation keeps its outputs (`TextOutputs` as .npz) for the label-free measures."""
    return Path(run_dir) / "outputs" / checkpoint_name / f"{spec.evaluation.split}-{eval_key(spec)}-{language}.npz"


def measure_unit_id(spec: StudySpec, checkpoint_id: str, item) -> str:
    key = config_hash({"config": spec.measure_config(item), "data": asdict(spec.measure_data())}, 8)
    return f"measure/{checkpoint_id}/{item.name}/{key}"


def planned_units(spec: StudySpec, run_id: str, checkpoints: Sequence[dict] | None) -> list[str]:
    """Every unit of one run; before its training the checkpoints are unknown and only the training unit is."""
    units = [train_unit_id(run_id)]
    checkpoints = list(checkpoints or [])
    chosen = spec.checkpoints.selects([run_id] * len(checkpoints), [c["step"] for c in checkpoints])
    # Before training the best checkpoint is unknown: the plan takes the last, and follows the real one after.
    best = [bool(c.get("is_best", c.get("is_last"))) for c in checkpoints]
    for c, keep, is_best in zip(checkpoints, chosen, best):
        if keep:
            units += [eval_unit_id(spec, c["checkpoint_id"], lang) for lang in spec.languages]
            units += [
                measure_unit_id(spec, c["checkpoint_id"], item) for item in spec.measures.items if item.applies(is_best)
            ]
    return units


# The plans' key of the study's group units (measures of runs that differ only in their seed).
GROUPS = "(groups)"


def seed_group_id(config) -> str:
    """The id shared by runs whose configs differ only in their seed."""
    fields = asdict(config)
    fields.pop("seed")
    return config_hash(fields)


def seed_groups(configs) -> dict[str, list]:
    """group id -> its configs, for every group of at least 2 seeds, in spec order."""
    groups: dict[str, list] = {}
    for config in configs:
        groups.setdefault(seed_group_id(config), []).append(config)
    return {g: members for g, members in groups.items() if len(members) >= 2}


def group_measure_names() -> list[str]:

    return list_measures("group")


def group_unit_id(group: str, measure: str) -> str:
    return f"group/{group}/{measure}"


def planned_group_units(configs) -> list[str]:
    return [group_unit_id(g, m) for g in seed_groups(configs) for m in group_measure_names()]


def run_groups(spec: StudySpec, out: Path, db: StudyDB, configs, done: set[str], emit) -> None:
    """The group measures of every group of seeds whose runs are all trained, at each run's best checkpoint
    (the model the study picks from the run); the same trained parameters the checkpoints hold."""

    for group, members in seed_groups(configs).items():
        todo = [m for m in group_measure_names() if group_unit_id(group, m) not in done]
        if not todo or any(train_unit_id(c.run_id) not in done for c in members):
            continue
        best = [next(c for c in db.checkpoints_of(m.run_id) if c["is_best"]) for m in members]
        states = [read_safetensors(Path(db.resolve_path(c["path"]) or c["path"]) / WEIGHTS) for c in best]
        for name in todo:
            start = time.perf_counter()
            result = compute_group_measure(name, states, param_filter=spec.measures.params).to_dict()
            emit(
                {
                    "kind": "group",
                    "unit_id": group_unit_id(group, name),
                    "run_id": group,
                    "measure": name,
                    "run_ids": [m.run_id for m in members],
                    "checkpoint_ids": [c["checkpoint_id"] for c in best],
                    "value": result["value"],
                    "details": result,
                    "seconds": time.perf_counter() - start,
                }
            )


def checkpoint_name(step: int) -> str:
    """The folder `train` saves the checkpoint of `step` in (RUN/checkpoints/NAME)."""
    return f"step-{step:06d}"


def expected_checkpoint_steps(config, num_train: int) -> list[int]:
    """The steps at which `recipes.train.train` (one process) saves checkpoints: every `save_every` optimizer steps
    before the last one, and the last one. Mirrors its schedule: ceil(rows / batch) micro-batches an epoch,
    `grad_accum` of them a step, round(steps an epoch x epochs) steps."""
    micro_per_epoch = math.ceil(num_train / config.batch_size)
    steps_per_epoch = max(1, micro_per_epoch // config.grad_accum)
    total = max(1, int(round(steps_per_epoch * config.epochs)))
    every = config.save_every
    return (list(range(every, total, every)) if every else []) + [total]


def expected_checkpoints(config, num_train: int) -> list[dict[str, Any]]:
    """The checkpoint rows a run will have (id, step, is_last), before it is trained."""
    steps = expected_checkpoint_steps(config, num_train)
    return [
        {"checkpoint_id": f"{config.run_id}/{checkpoint_name(s)}", "step": s, "is_last": s == steps[-1]} for s in steps
    ]


def training_rows(config, cache: dict | None = None) -> int:
    """How many rows `train` trains on (after holding out the selection rows), read as `train` reads them."""

    key = (
        config.task,
        config.data,
        config.data_dir,
        config.train_split,
        config.select_split,
        config.source_language,
        config.max_train_examples,
        config.holdout_fraction,
    )
    if cache is not None and key in cache:
        return cache[key]
    task = get_task(config.task)
    rows = load_examples(task, config.train_split, config.source_language, config.source, config.max_train_examples)
    # a separate selection split is read by `train` itself; here only its presence matters
    train_rows, _ = split_train_select(config, task, rows, [] if config.select_split != config.train_split else None)
    if cache is not None:
        cache[key] = len(train_rows)
    return len(train_rows)


# ------------------------------------------------------------------------------------------------------------
# Files of finished units: checked before the study goes on, moved aside when they are not readable
# ------------------------------------------------------------------------------------------------------------


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
    if not read_json(run_dir / INDEX).get("last"):
        return f"{run_dir / INDEX}: the training did not finish (no last checkpoint)"
    problem = safetensors_problem(run_dir / INIT_HEAD)
    for name in checkpoint_names:
        if problem:
            break
        folder = run_dir / "checkpoints" / name
        problem = safetensors_problem(folder / WEIGHTS) or json_problem(folder / META)
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
        run_dir = out / RUNS_FOLDER / run_id
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


# ------------------------------------------------------------------------------------------------------------
# One grid point: train, evaluate, measure (runs in the driver or in a Ray worker)
# ------------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class RunTask:
    spec: StudySpec
    config: Any  # TrainConfig
    out: str  # the study directory (absolute)
    done: frozenset[str]
    show_progress: bool = True
    device: str = "auto"  # where training, evaluation and measures run (`core.devices.resolve_device`)

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / RUNS_FOLDER / self.config.run_id

    @property
    def stored_run_dir(self) -> str:
        """The run directory as the study's database keeps it: relative to the study folder."""
        return f"{RUNS_FOLDER}/{self.config.run_id}"


def _checkpoint_rows(task: RunTask) -> list[dict[str, Any]]:
    """The run's checkpoints as database rows (paths relative to the study folder)."""

    run_id = task.config.run_id
    index = RunDir(task.run_dir).index
    return [
        {
            "checkpoint_id": f"{run_id}/{c['name']}",
            "name": c["name"],
            "step": c["step"],
            "epoch": c["epoch"],
            "path": f"{task.stored_run_dir}/checkpoints/{c['name']}",
            "dev_accuracy": c["dev_accuracy"],
            "is_best": c["name"] == index["best"],
            "is_last": c["name"] == index["last"],
        }
        for c in index["checkpoints"]
    ]


def run_point(task: RunTask, emit: Callable[[dict[str, Any]], None]) -> None:
    """Do the unfinished units of one run, handing each finished unit's rows to `emit` as soon as it is done."""

    spec, config, done = task.spec, task.config, task.done
    run_id, run_dir = config.run_id, task.run_dir
    source = DataSource(spec.data.kind, spec.data.dir)
    device = resolve_device(task.device)
    if train_unit_id(run_id) not in done:
        start = time.perf_counter()
        resumed = False
        if run_dir.exists():  # an interrupted training: continue it (bitwise as if never stopped) if it can be
            try:
                train(config, run_dir, show_progress=task.show_progress, device=str(device), resume=True)
                resumed = True
            except XlgmError as err:
                dest = Quarantine(Path(task.out)).move(run_dir)
                print(
                    f"xlgm: note: {run_dir} could not be resumed ({err}); moved to {dest}, trained again",
                    file=sys.stderr,
                )
        if not resumed:
            train(config, run_dir, show_progress=task.show_progress, device=str(device))
        emit(
            {
                "kind": "train",
                "unit_id": train_unit_id(run_id),
                "run_id": run_id,
                "config": asdict(config),
                "run_dir": task.stored_run_dir,
                "checkpoints": _checkpoint_rows(task),
                "seconds": time.perf_counter() - start,
            }
        )
    elif not run_dir.is_dir():  # the driver's check redoes such runs; a folder removed since is an error
        raise XlgmError(
            f"{run_dir}: the study records run {run_id} as trained but its directory is gone; "
            "run the study again to train it again"
        )

    task_def = get_task(spec.task)
    init_cache: dict[str, dict] = {}
    rows = _checkpoint_rows(task)
    for ckpt, keep in zip(rows, spec.checkpoints.selects([run_id] * len(rows), [c["step"] for c in rows])):
        if not keep:
            continue
        cid = ckpt["checkpoint_id"]
        languages = [lang for lang in spec.languages if eval_unit_id(spec, cid, lang) not in done]
        measures = [
            m for m in spec.measures.items if m.applies(ckpt["is_best"]) and measure_unit_id(spec, cid, m) not in done
        ]
        if not languages and not measures:
            continue
        checkpoint = run_dir / "checkpoints" / ckpt["name"]
        model, tokenizer = _load(config, run_dir, checkpoint, task_def, device)
        if languages:
            _evaluate(task, model, tokenizer, task_def, source, ckpt, languages, device, emit)
        if measures:
            _measure(task, model, tokenizer, task_def, source, ckpt, checkpoint, measures, device, init_cache, emit)
        del model


def _load(config, run_dir: Path, checkpoint: Path, task_def, device):

    target = ResolvedTarget(config.model, run_dir, checkpoint)
    model, tokenizer = load_target(target, task_def.num_labels, task_def.label_names)
    freeze_parameters(model, config.freeze)  # the measures perturb what the run trained
    return model.to(device), tokenizer


def _evaluate(
    task: RunTask, model, tokenizer, task_def, source, ckpt: dict, languages: list[str], device, emit
) -> None:
    """Accuracy per language; with `prediction.enabled`, the same pass's logits and sentence embeddings are
    kept on disk (before the unit is marked done) for the label-free measures."""
    spec = task.spec
    ev, pred = spec.evaluation, spec.prediction
    checkpoint_id = ckpt["checkpoint_id"]
    keep = pred.enabled
    embed = keep and pred.embedding_rows > 0
    rows = {lang: load_examples(task_def, ev.split, lang, source, ev.max_examples) for lang in languages}

    def record(lang: str, outputs, seconds: float, accuracy: float) -> None:
        if keep:
            if embed:
                outputs = replace(outputs, embeddings=outputs.embeddings[: pred.embedding_rows])
            outputs.save(outputs_path(spec, task.run_dir, ckpt["name"], lang))
        emit(
            {
                "kind": "eval",
                "unit_id": eval_unit_id(spec, checkpoint_id, lang),
                "run_id": task.config.run_id,
                "checkpoint_id": checkpoint_id,
                "task": spec.task,
                "language": lang,
                "split": ev.split,
                "data": eval_data_label(spec),
                "num_examples": len(rows[lang]),
                "accuracy": accuracy,
                "seconds": seconds,
            }
        )

    evaluate_languages(
        model,
        tokenizer,
        task_def,
        languages,
        source,
        split=ev.split,
        max_length=spec.eval_max_length(),
        batch_size=ev.batch_size,
        show_progress=task.show_progress,
        examples=rows,
        precision=resolve_precision(ev.mixed_precision, device),
        embeddings=embed,
        layer=pred.embedding_layer,
        on_language=record,
        desc=f"evaluate {checkpoint_id}",
        leave=False,
    )


def _measure(
    task: RunTask, model, tokenizer, task_def, source, ckpt: dict, checkpoint: Path, measures, device, init_cache, emit
) -> None:

    spec = task.spec
    data = spec.measure_data()
    batches = build_batches(tokenizer, task_def, data, source, device)
    run_id = task.config.run_id
    with tqdm(
        total=len(measures),
        desc=f"measure {ckpt['checkpoint_id']}",
        unit="measure",
        leave=False,
        disable=not task.show_progress,
    ) as bar:
        items = {item.name: item for item in measures}
        target = ResolvedTarget(task.config.model, task.run_dir, checkpoint)
        for name, result, seconds in compute_measures(
            model,
            batches,
            [(item.name, item.config) for item in measures],
            spec.measures.params,
            spec.measures.seed,
            init_state=cached_initial_state(init_cache, run_id, target, task_def, model),
            bar=bar,
            show_progress=task.show_progress,
        ):
            record = result.to_dict()
            emit(
                {
                    "kind": "measure",
                    "unit_id": measure_unit_id(spec, ckpt["checkpoint_id"], items[name]),
                    "run_id": run_id,
                    "checkpoint_id": ckpt["checkpoint_id"],
                    "measure": name,
                    "config": spec.measure_config(items[name]),
                    "data": data.key,
                    "value": record["value"],
                    "spread": record["spread"],
                    "num_samples": record["num_samples"],
                    "seconds": seconds,
                    "details": record,
                }
            )


def worker_device(choice: str, gpu_ids: Sequence[Any]) -> str:
    """The device of a Ray task: its GPU when Ray gave it one (Ray shows the task only that GPU, as `cuda`),
    unless the study runs on the CPU."""
    if choice == "cpu":
        return "cpu"
    return "cuda" if gpu_ids else choice


def ray_run_point(task: RunTask) -> list[dict[str, Any]]:
    """The Ray task: one grid point, its unit rows returned (the driver writes them)."""
    from dataclasses import replace

    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    if task.spec.task_file:  # a worker process knows a file task only once it has read the file
        get_task(task.spec.task_file)
    gpu_ids: list[Any] = []
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))
        gpu_ids = list(ray.get_gpu_ids())
    except Exception:  # noqa: BLE001 - outside Ray (e.g. a test calling it directly) keep the defaults
        pass
    units: list[dict[str, Any]] = []
    run_point(replace(task, device=worker_device(task.device, gpu_ids)), units.append)
    return units


# ------------------------------------------------------------------------------------------------------------
# The driver
# ------------------------------------------------------------------------------------------------------------


@dataclass
class StudyResult:
    study_id: str
    out: Path
    runs: int
    units_done: int
    units_total: int
    units_now: int  # finished by this invocation
    units_planned: int = 0  # the bar's total, known before the first unit started
    repairs: list[str] = field(default_factory=list)  # unfinished or corrupt files found and set aside


def unit_cost_key(unit_id: str, objectives: dict[str, str]) -> tuple[str, str]:
    """What a unit's cost is estimated from: trainings of the same objective, evaluations, the same measure."""
    kind, _, rest = unit_id.partition("/")
    if kind == "train":
        return kind, objectives.get(rest, "")
    if kind in ("measure", "group"):
        return kind, unit_id.split("/")[-2 if kind == "measure" else -1]
    return kind, ""


class WorkClock:
    """The time the study's unfinished units will take, from the seconds its finished units took: each unit costs
    the mean of finished units of its key (`unit_cost_key`), else of its kind; a kind none of whose units has
    finished is unknown (the estimate is then a lower bound)."""

    def __init__(self, objectives: dict[str, str], finished: dict[str, float]):
        self.objectives = objectives
        self.sums: dict[tuple[str, str], list[float]] = {}
        for unit_id, seconds in finished.items():
            self.add(unit_id, seconds)

    def add(self, unit_id: str, seconds: float | None) -> None:
        if seconds is None:
            return
        key = unit_cost_key(unit_id, self.objectives)
        for k in (key, (key[0], "*")):
            total = self.sums.setdefault(k, [0.0, 0])
            total[0] += seconds
            total[1] += 1

    def remaining(self, units: Sequence[str]) -> tuple[float, bool]:
        """(seconds, complete): the estimate and whether every unit's kind has a finished unit to go by."""
        seconds, complete = 0.0, True
        for unit_id in units:
            key = unit_cost_key(unit_id, self.objectives)
            total = self.sums.get(key) or self.sums.get((key[0], "*"))
            if total is None:
                complete = False
                continue
            seconds += total[0] / total[1]
        return seconds, complete


def eta_text(seconds: float, complete: bool) -> str:
    minutes = int(round(seconds / 60))
    text = f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
    return f"eta {'' if complete else '>'}{text}"


class _Progress:
    """The study's bar over units. Its total is known before the first unit: the checkpoints of a run not yet
    trained are expected from the spec (`expected_checkpoints`). Should a training save other checkpoints than
    expected, the total follows the real ones (and at the end the bar closes at the real total)."""

    def __init__(self, spec: StudySpec, db: StudyDB, plans: dict[str, list[str]], done: set[str], show: bool):
        self.spec, self.db, self.done, self.plans = spec, db, set(done), plans
        units = [u for us in plans.values() for u in us]
        self.total = self.planned = len(units)
        self.totals = [self.total]  # every total the bar showed, in order
        # tqdm's own ETA assumes every unit costs the same; a training costs a hundred evaluations
        self.bar = tqdm(
            total=self.total,
            initial=sum(u in self.done for u in units),
            desc=f"study {spec.name}",
            unit="unit",
            disable=not show,
            position=0,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        self.now = 0
        self.clock = WorkClock(
            {c.run_id: c.objective for c in spec.run_configs()},
            dict(db.query("SELECT unit_id, seconds FROM work WHERE seconds IS NOT NULL")),
        )
        self._show_eta()

    def _show_eta(self) -> None:
        todo = [u for us in self.plans.values() for u in us if u not in self.done]
        self.bar.set_postfix_str(eta_text(*self.clock.remaining(todo)), refresh=False)

    def _set_total(self, total: int) -> None:
        self.total = total
        self.totals.append(total)
        self.bar.total = total
        self.bar.refresh()

    def commit(self, unit: dict[str, Any]) -> None:
        self.db.commit_unit(unit)
        self.done.add(unit["unit_id"])
        self.now += 1
        if unit["kind"] == "train":
            units = planned_units(self.spec, unit["run_id"], unit["checkpoints"])
            if len(units) != len(self.plans[unit["run_id"]]):  # the training saved other checkpoints than expected
                self._set_total(self.total + len(units) - len(self.plans[unit["run_id"]]))
            self.plans[unit["run_id"]] = units
        self.clock.add(unit["unit_id"], unit.get("seconds"))
        self._show_eta()
        self.bar.update(1)

    def close(self) -> tuple[int, int]:
        units = [u for us in self.plans.values() for u in us]
        finished = sum(u in self.done for u in units)
        if finished == len(units) and self.total != finished:
            self._set_total(finished)
        self.bar.close()
        return finished, len(units)


def unit_plans(spec: StudySpec, db: StudyDB, configs, done: set[str]) -> dict[str, list[str]]:
    """Every run's units: trained runs from their recorded checkpoints, the others from the expected ones."""
    sizes: dict = {}
    plans = {}
    for config in configs:
        if train_unit_id(config.run_id) in done:
            checkpoints = db.checkpoints_of(config.run_id)
        else:
            checkpoints = expected_checkpoints(config, training_rows(config, sizes))
        plans[config.run_id] = planned_units(spec, config.run_id, checkpoints)
    plans[GROUPS] = planned_group_units(configs)
    return plans


def check_device(device: str, executor: str) -> str:
    """The device choice as tasks get it: resolved here for the local executor (a missing GPU fails at once);
    Ray tasks resolve it on their worker."""

    if executor == "local":
        return str(resolve_device(device))
    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", device):
        raise XlgmError(f"--device {device!r}: with --executor ray, expected auto, cpu or cuda (a GPU per task)")
    return device


def run_study(
    spec: StudySpec,
    out: str | Path | None = None,
    executor: str = "local",
    address: str | None = None,
    cpus_per_task: int | None = None,
    show_progress: bool = True,
    spec_text: str | None = None,
    device: str = "auto",
) -> StudyResult:
    """Run (or resume) a study; returns what was done. See the module docstring."""
    if executor not in EXECUTORS:
        raise XlgmError(f"unknown executor {executor!r}; expected one of: {', '.join(EXECUTORS)}")
    device = check_device(device, executor)
    out = Path(out or default_out(spec)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if spec_text is None and Path(spec.source).is_file():
        spec_text = Path(spec.source).read_text(encoding="utf-8")
    configs = spec.run_configs()
    with study_lock(out), StudyDB(out / DB_NAME) as db:  # a garbage database fails here, before any write
        # OUT/spec.yaml: the validated spec with every default and an absolute data folder, so that `analyze OUT`
        # and `report OUT` read exactly this study; the YAML as written is kept in the study table.
        tmp = out / (SPEC_NAME + ".tmp")
        tmp.write_text(
            f"# {spec.name} ({spec.study_id}), written by `xlgm study run` from {spec.source}\n" + spec.to_yaml(),
            encoding="utf-8",
        )
        os.replace(tmp, out / SPEC_NAME)
        _check_data(spec)
        db.record_study(spec.study_id, spec.name, spec.to_dict(), spec_text, [c.run_id for c in configs])
        db.relativize_paths()
        repairs = repair(spec, out, db, configs, Quarantine(out), _say)
        done = db.done_units()
        progress = _Progress(spec, db, unit_plans(spec, db, configs, done), done, show_progress)
        todo = [
            RunTask(spec, c, str(out), frozenset(u for u in done if c.run_id in u), show_progress, device)
            for c in configs
            if not set(progress.plans[c.run_id]) <= done
        ]
        try:
            if executor == "local":
                for task in todo:
                    run_point(task, progress.commit)
            else:
                _run_ray(todo, progress, address, cpus_per_task, device)
            run_groups(spec, out, db, configs, progress.done, progress.commit)
        finally:
            finished, total = progress.close()
    return StudyResult(spec.study_id, out, len(configs), finished, total, progress.now, progress.planned, repairs)


def _say(line: str) -> None:
    tqdm.write(f"xlgm: {line}", file=sys.stderr)


def _check_data(spec: StudySpec) -> None:
    """Read every evaluation file before training anything: a missing or malformed file fails in seconds."""
    if spec.data.kind == "hf":
        return  # loading the Hub data here would download it twice as often; the loaders report errors

    task = get_task(spec.task)
    source = DataSource(spec.data.kind, spec.data.dir)
    for lang in spec.languages:
        load_examples(task, spec.evaluation.split, lang, source, spec.evaluation.max_examples)
    load_examples(task, spec.measures.data.split, spec.measures.data.language, source, spec.measures.data.max_examples)


def _run_ray(
    tasks: list[RunTask], progress: _Progress, address: str | None, cpus_per_task: int | None, device: str = "auto"
) -> None:
    try:
        import ray
    except ImportError:
        raise XlgmError("--executor ray needs Ray: pip install 'xlgm[ray]' (or 'ray[default]>=2.9,<3')") from None
    if not tasks:
        return
    started = not ray.is_initialized()
    if started:  # a local instance (address None) or a running cluster; stopped again below
        ray.init(**({"address": address} if address else {"include_dashboard": False}))
    try:
        _submit_and_collect(ray, tasks, progress, cpus_per_task, device)
    finally:
        if started:
            ray.shutdown()


def _submit_and_collect(
    ray, tasks: list[RunTask], progress: _Progress, cpus_per_task: int | None, device: str = "auto"
) -> None:
    resources = ray.cluster_resources()
    if device != "cpu" and resources.get("GPU", 0) >= 1:
        options = {"num_gpus": 1, "num_cpus": cpus_per_task or 1}
    elif device.startswith("cuda"):
        raise XlgmError(f"--device {device}: the Ray cluster has no GPU")
    else:
        cpus = cpus_per_task or max(1, int(resources.get("CPU", 1) // max(1, len(tasks))))
        options = {"num_cpus": cpus}
    remote = ray.remote(**options)(ray_run_point)
    # Workers never show bars (their output is forwarded to the driver's terminal): the study bar is enough.
    refs = {remote.remote(RunTask(t.spec, t.config, t.out, t.done, False, t.device)): t for t in tasks}
    pending, failures = list(refs), []
    while pending:
        ready, pending = ray.wait(pending, num_returns=1)
        for ref in ready:
            try:
                units = ray.get(ref)
            except Exception as err:  # noqa: BLE001 - report every failed run after the others are recorded
                failures.append((refs[ref].config.run_id, err))
                continue
            for unit in units:
                progress.commit(unit)
    if failures:
        detail = "; ".join(f"run {run_id}: {str(err).strip().splitlines()[-1]}" for run_id, err in failures)
        raise XlgmError(
            f"{len(failures)} of {len(tasks)} Ray task(s) failed ({detail}); the others are recorded, "
            "run the study again to retry"
        )
