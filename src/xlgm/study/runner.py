"""`xlgm study run SPEC`: train every grid point, evaluate and measure its checkpoints, one SQLite file per study.

    OUT/spec.yaml        the validated spec as last run (every default written out; `analyze OUT` reads it)
    OUT/study.sqlite     runs, checkpoints, evaluations, measures (`xlgm.results`) + study, study_runs, work
    OUT/runs/<run_id>/   one run directory per grid point (`xlgm.runs`), named by its config hash

Work is cut into units (`xlgm.study.db`): a run's training, each (checkpoint, language) evaluation and each
(checkpoint, measure) measurement. A unit's rows and its done-mark are written in one transaction, so the study
can be killed at any moment (kill -9 included) and run again: finished units are skipped, a run directory whose
training has no done-mark is deleted and trained again from the start (training is atomic: resuming from a
checkpoint would not reproduce the data order and optimizer state exactly), and nothing is recorded twice.

Executors. `local` runs the grid points one after the other in this process. `ray` runs each grid point as a
Ray task (one GPU per task when the cluster has GPUs, else `cpus_per_task` CPUs) that trains, evaluates and
measures one run and RETURNS its unit rows; only the driver writes the SQLite file. The tasks write their run
directories under OUT, so on a multi-node cluster OUT must be on a shared filesystem.
"""

from __future__ import annotations

import os
import re
import shutil
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from xlgm.errors import XlgmError
from xlgm.results import config_hash
from xlgm.study.db import StudyDB
from xlgm.study.spec import StudySpec

DB_NAME = "study.sqlite"
SPEC_NAME = "spec.yaml"
EXECUTORS = ("local", "ray")


# ------------------------------------------------------------------------------------------------------------
# Names and keys
# ------------------------------------------------------------------------------------------------------------


def default_out(spec: StudySpec) -> Path:
    return Path("runs") / f"study-{re.sub(r'[^A-Za-z0-9_.-]+', '-', spec.name)}"


def eval_data_label(spec: StudySpec) -> str:
    """The `data` column of the evaluations: the source, and the row limit when there is one (so that
    evaluations on the first 100 rows and on all rows are different rows, not one overwriting the other)."""
    base = spec.data.dir if spec.data.kind == "local" else spec.data.kind
    return base if spec.evaluation.max_examples is None else f"{base}[:{spec.evaluation.max_examples}]"


def train_unit_id(run_id: str) -> str:
    return f"train/{run_id}"


def eval_key(spec: StudySpec) -> str:
    """What identifies an evaluation setting (and, when outputs are kept, how they are kept)."""
    setting: dict[str, Any] = {"task": spec.task, "split": spec.evaluation.split, "data": eval_data_label(spec),
                               "max_length": spec.eval_max_length()}
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
    for c in checkpoints or []:
        if spec.checkpoints.selects(c["step"], bool(c["is_last"])):
            units += [eval_unit_id(spec, c["checkpoint_id"], lang) for lang in spec.languages]
            units += [measure_unit_id(spec, c["checkpoint_id"], item) for item in spec.measures.items]
    return units


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

    @property
    def run_dir(self) -> Path:
        return Path(self.out) / "runs" / self.config.run_id


def _checkpoint_rows(run_id: str, run_dir: Path) -> list[dict[str, Any]]:
    from xlgm.runs import RunDir

    run = RunDir(run_dir)
    index = run.index
    return [{"checkpoint_id": f"{run_id}/{c['name']}", "name": c["name"], "step": c["step"], "epoch": c["epoch"],
             "path": str(run.checkpoint_dir(c["name"])), "dev_accuracy": c["dev_accuracy"],
             "is_best": c["name"] == index["best"], "is_last": c["name"] == index["last"]}
            for c in index["checkpoints"]]


def run_point(task: RunTask, emit: Callable[[dict[str, Any]], None]) -> None:
    """Do the unfinished units of one run, handing each finished unit's rows to `emit` as soon as it is done."""
    import torch

    from xlgm.data.loading import DataSource
    from xlgm.data.tasks import get_task
    from xlgm.recipes.train import train

    spec, config, done = task.spec, task.config, task.done
    run_id, run_dir = config.run_id, task.run_dir
    source = DataSource(spec.data.kind, spec.data.dir)
    if train_unit_id(run_id) not in done:
        if run_dir.exists():  # an interrupted training: start it again from scratch
            shutil.rmtree(run_dir)
        start = time.perf_counter()
        train(config, run_dir, show_progress=task.show_progress)
        emit({"kind": "train", "unit_id": train_unit_id(run_id), "run_id": run_id, "config": asdict(config),
              "run_dir": str(run_dir), "checkpoints": _checkpoint_rows(run_id, run_dir),
              "seconds": time.perf_counter() - start})
    elif not run_dir.is_dir():
        raise XlgmError(f"{run_dir}: the study records run {run_id} as trained but its directory is gone; "
                        f"delete its rows (or the study folder) to train it again")

    task_def = get_task(spec.task)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    init_cache: dict[str, dict] = {}
    for ckpt in _checkpoint_rows(run_id, run_dir):
        if not spec.checkpoints.selects(ckpt["step"], ckpt["is_last"]):
            continue
        cid = ckpt["checkpoint_id"]
        languages = [lang for lang in spec.languages if eval_unit_id(spec, cid, lang) not in done]
        measures = [m for m in spec.measures.items if measure_unit_id(spec, cid, m) not in done]
        if not languages and not measures:
            continue
        model, tokenizer = _load(config, run_dir, Path(ckpt["path"]), task_def, device)
        if languages:
            _evaluate(task, model, tokenizer, task_def, source, ckpt, languages, emit)
        if measures:
            _measure(task, model, tokenizer, task_def, source, ckpt, measures, device, init_cache, emit)
        del model


def _load(config, run_dir: Path, checkpoint: Path, task_def, device):
    from xlgm.models.load import load_target
    from xlgm.recipes.train import freeze_parameters
    from xlgm.runs import ResolvedTarget

    target = ResolvedTarget(config.model, run_dir, checkpoint)
    model, tokenizer = load_target(target, task_def.num_labels, task_def.label_names)
    freeze_parameters(model, config.freeze)  # the measures perturb what the run trained
    return model.to(device), tokenizer


def _evaluate(task: RunTask, model, tokenizer, task_def, source, ckpt: dict, languages: list[str], emit) -> None:
    """Accuracy per language; with `prediction.enabled`, the same pass's logits and sentence embeddings are
    kept on disk (before the unit is marked done) for the label-free measures."""
    from dataclasses import replace

    from xlgm.data.batching import tokenize_examples
    from xlgm.data.loading import load_examples
    from xlgm.recipes.evaluate import predict_outputs

    spec = task.spec
    ev, pred = spec.evaluation, spec.prediction
    checkpoint_id = ckpt["checkpoint_id"]
    keep = pred.enabled
    embed = keep and pred.embedding_rows > 0
    rows = {lang: load_examples(task_def, ev.split, lang, source, ev.max_examples) for lang in languages}
    with tqdm(total=sum(len(r) for r in rows.values()), desc=f"evaluate {checkpoint_id}", unit="ex", leave=False,
              disable=not task.show_progress) as bar:
        for lang in languages:
            bar.set_postfix_str(lang)
            start = time.perf_counter()
            data = tokenize_examples(tokenizer, rows[lang], spec.eval_max_length())
            outputs = predict_outputs(model, tokenizer, data, ev.batch_size, bar, embeddings=embed,
                                      layer=pred.embedding_layer, language=lang)
            accuracy = outputs.accuracy if len(data) else float("nan")
            if keep:
                if embed:
                    outputs = replace(outputs, embeddings=outputs.embeddings[:pred.embedding_rows])
                outputs.save(outputs_path(spec, task.run_dir, ckpt["name"], lang))
            emit({"kind": "eval", "unit_id": eval_unit_id(spec, checkpoint_id, lang), "run_id": task.config.run_id,
                  "checkpoint_id": checkpoint_id, "task": spec.task, "language": lang, "split": ev.split,
                  "data": eval_data_label(spec), "num_examples": len(rows[lang]), "accuracy": accuracy,
                  "seconds": time.perf_counter() - start})


def _measure(task: RunTask, model, tokenizer, task_def, source, ckpt: dict, measures, device, init_cache,
             emit) -> None:
    from xlgm.measures.base import compute_measure, get_measure
    from xlgm.recipes.measure import build_batches, initial_state
    from xlgm.runs import ResolvedTarget

    spec = task.spec
    data = spec.measure_data()
    batches = build_batches(tokenizer, task_def, data, source, device)
    run_id = task.config.run_id
    with tqdm(total=len(measures), desc=f"measure {ckpt['checkpoint_id']}", unit="measure", leave=False,
              disable=not task.show_progress) as bar:
        for item in measures:
            bar.set_postfix_str(item.name)
            inputs = {}
            if "init_state" in get_measure(item.name).inputs:
                if run_id not in init_cache:
                    trained = [n for n, p in model.named_parameters() if p.requires_grad]
                    target = ResolvedTarget(task.config.model, task.run_dir, Path(ckpt["path"]))
                    init_cache[run_id] = initial_state(target, task_def, trained)
                inputs["init_state"] = init_cache[run_id]
            start = time.perf_counter()
            result = compute_measure(item.name, model, batches, item.options_dict, spec.measures.params,
                                     spec.measures.seed, **inputs)
            record = result.to_dict()
            emit({"kind": "measure", "unit_id": measure_unit_id(spec, ckpt["checkpoint_id"], item), "run_id": run_id,
                  "checkpoint_id": ckpt["checkpoint_id"], "measure": item.name, "config": spec.measure_config(item),
                  "data": data.key, "value": record["value"], "spread": record["spread"],
                  "num_samples": record["num_samples"], "seconds": time.perf_counter() - start,
                  "details": record})
            bar.update(1)


def ray_run_point(task: RunTask) -> list[dict[str, Any]]:
    """The Ray task: one grid point, its unit rows returned (the driver writes them)."""
    import torch

    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    try:
        import ray

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        if cpus:
            torch.set_num_threads(max(1, int(cpus)))
    except Exception:  # noqa: BLE001 - outside Ray (e.g. a test calling it directly) keep the defaults
        pass
    units: list[dict[str, Any]] = []
    run_point(task, units.append)
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


class _Progress:
    """The study's bar over units; its total grows when a run's checkpoints become known."""

    def __init__(self, spec: StudySpec, db: StudyDB, configs, done: set[str], show: bool):
        self.spec, self.db, self.done = spec, db, set(done)
        self.known: dict[str, list[str]] = {}
        for config in configs:
            checkpoints = db.checkpoints_of(config.run_id) if train_unit_id(config.run_id) in done else None
            self.known[config.run_id] = planned_units(spec, config.run_id, checkpoints)
        units = [u for us in self.known.values() for u in us]
        self.bar = tqdm(total=len(units), initial=sum(u in self.done for u in units), desc=f"study {spec.name}",
                        unit="unit", disable=not show, position=0)
        self.now = 0

    def commit(self, unit: dict[str, Any]) -> None:
        self.db.commit_unit(unit)
        self.done.add(unit["unit_id"])
        self.now += 1
        if unit["kind"] == "train":
            units = planned_units(self.spec, unit["run_id"], unit["checkpoints"])
            self.bar.total += len(units) - len(self.known[unit["run_id"]])
            self.known[unit["run_id"]] = units
            self.bar.refresh()
        self.bar.update(1)

    def close(self) -> tuple[int, int]:
        self.bar.close()
        units = [u for us in self.known.values() for u in us]
        return sum(u in self.done for u in units), len(units)


def run_study(spec: StudySpec, out: str | Path | None = None, executor: str = "local", address: str | None = None,
              cpus_per_task: int | None = None, show_progress: bool = True, spec_text: str | None = None
              ) -> StudyResult:
    """Run (or resume) a study; returns what was done. See the module docstring."""
    if executor not in EXECUTORS:
        raise XlgmError(f"unknown executor {executor!r}; expected one of: {', '.join(EXECUTORS)}")
    out = Path(out or default_out(spec)).resolve()
    out.mkdir(parents=True, exist_ok=True)
    if spec_text is None and Path(spec.source).is_file():
        spec_text = Path(spec.source).read_text(encoding="utf-8")
    # OUT/spec.yaml: the validated spec with every default and an absolute data folder, so that `analyze OUT` and
    # `report OUT` read exactly this study; the YAML as written is kept in the study table.
    tmp = out / (SPEC_NAME + ".tmp")
    tmp.write_text(f"# {spec.name} ({spec.study_id}), written by `xlgm study run` from {spec.source}\n"
                   + spec.to_yaml(), encoding="utf-8")
    os.replace(tmp, out / SPEC_NAME)
    configs = spec.run_configs()
    _check_data(spec)
    with StudyDB(out / DB_NAME) as db:
        db.record_study(spec.study_id, spec.name, spec.to_dict(), spec_text, [c.run_id for c in configs])
        done = db.done_units()
        progress = _Progress(spec, db, configs, done, show_progress)
        todo = [RunTask(spec, c, str(out), frozenset(u for u in done if c.run_id in u), show_progress)
                for c in configs if not set(progress.known[c.run_id]) <= done]
        try:
            if executor == "local":
                for task in todo:
                    run_point(task, progress.commit)
            else:
                _run_ray(todo, progress, address, cpus_per_task)
        finally:
            finished, total = progress.close()
    return StudyResult(spec.study_id, out, len(configs), finished, total, progress.now)


def _check_data(spec: StudySpec) -> None:
    """Read every evaluation file before training anything: a missing or malformed file fails in seconds."""
    if spec.data.kind == "hf":
        return  # loading the Hub data here would download it twice as often; the loaders report errors
    from xlgm.data.loading import DataSource, load_examples
    from xlgm.data.tasks import get_task

    task = get_task(spec.task)
    source = DataSource(spec.data.kind, spec.data.dir)
    for lang in spec.languages:
        load_examples(task, spec.evaluation.split, lang, source, spec.evaluation.max_examples)
    load_examples(task, spec.measures.data.split, spec.measures.data.language, source,
                  spec.measures.data.max_examples)


def _run_ray(tasks: list[RunTask], progress: _Progress, address: str | None, cpus_per_task: int | None) -> None:
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
        _submit_and_collect(ray, tasks, progress, cpus_per_task)
    finally:
        if started:
            ray.shutdown()


def _submit_and_collect(ray, tasks: list[RunTask], progress: _Progress, cpus_per_task: int | None) -> None:
    resources = ray.cluster_resources()
    if resources.get("GPU", 0) >= 1:
        options = {"num_gpus": 1, "num_cpus": cpus_per_task or 1}
    else:
        cpus = cpus_per_task or max(1, int(resources.get("CPU", 1) // max(1, len(tasks))))
        options = {"num_cpus": cpus}
    remote = ray.remote(**options)(ray_run_point)
    # Workers never show bars (their output is forwarded to the driver's terminal): the study bar is enough.
    refs = {remote.remote(RunTask(t.spec, t.config, t.out, t.done, False)): t for t in tasks}
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
        raise XlgmError(f"{len(failures)} of {len(tasks)} Ray task(s) failed ({detail}); the others are recorded, "
                        "run the study again to retry")
