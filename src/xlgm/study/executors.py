"""Running a study's units: one grid point at a time in this process (`local`), or as Ray tasks (`ray`).

A grid point's units run in `run_point`: its training (resumed when its folder holds an unfinished run), then the
evaluations and measures of its selected checkpoints; each finished unit's rows are handed to `emit` at once.

`local` runs the grid points one after the other in this process, on `--device`. `ray` runs each grid point as a
Ray task (one GPU per task when the cluster has GPUs and the device is not `cpu`, else `cpus_per_task` CPUs) that
trains, evaluates and measures one run on its GPU (or CPU) and RETURNS its unit rows; only the driver writes the
SQLite file. Every unit's rows carry the machine that computed it (`xlgm.core.machine`; a training's is that of
its sessions, from the run folder's state.json). The tasks write their run directories under OUT, so on a
multi-node cluster OUT must be on a shared filesystem: before the first task, one tiny task per node reads a marker
the driver wrote under OUT and writes one back (`check_nodes_see`), and a node that cannot is named on one line.

A Ray task sets torch's thread count to the CPUs Ray gave it; the local executor keeps the process's. Float sums
in another order give measures that differ in the last digits (about 1e-7 relative; sharpness-diff, a difference
of two losses, about 1e-4); accuracies are counts and agree exactly.

The group measures (`run_groups`) run in the driver once every run of a group of seeds is trained.
"""

from __future__ import annotations

import os
import re
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from tqdm.auto import tqdm

from xlgm.core.devices import resolve_device, resolve_precision
from xlgm.core.errors import XlgmError
from xlgm.core.files import read_safetensors
from xlgm.core.machine import machine_record
from xlgm.data.loading import DataSource
from xlgm.data.tasks import get_task
from xlgm.measures.base import compute_group_measure
from xlgm.models.load import load_target
from xlgm.recipes.measure import build_batches, cached_initial_state, compute_measures
from xlgm.recipes.tokens import evaluation_stage
from xlgm.recipes.train import freeze_parameters, train
from xlgm.runs import WEIGHTS, RunDir
from xlgm.study.db import RUNS_FOLDER, StudyDB
from xlgm.study.folders import run_dir
from xlgm.study.repair import Quarantine
from xlgm.study.spec import StudySpec
from xlgm.study.units import (
    eval_data_label,
    eval_unit_id,
    group_measure_names,
    group_unit_id,
    measure_unit_id,
    outputs_path,
    seed_groups,
    train_unit_id,
)

Emit = Callable[[dict[str, Any]], None]  # takes a finished unit's rows

EXECUTORS = ("local", "ray")


def check_device(device: str, executor: str) -> str:
    """The device choice as tasks get it: resolved here for the local executor (a missing GPU fails at once);
    Ray tasks resolve it on their worker."""

    if executor == "local":
        return str(resolve_device(device))
    if device not in ("auto", "cpu") and not re.fullmatch(r"cuda(:\d+)?", device):
        raise XlgmError(f"--device {device!r}: with --executor ray, expected auto, cpu or cuda (a GPU per task)")
    return device


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
        """OUT/runs/PREFIX-RUNID, or the bare OUT/runs/RUNID of a study written before prefixes (`folders`)."""
        return run_dir(self.out, self.config.run_id, self.config)

    @property
    def stored_run_dir(self) -> str:
        """The run directory as the study's database keeps it: relative to the study folder."""
        return f"{RUNS_FOLDER}/{self.run_dir.name}"


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
                "machine": RunDir(run_dir).machine,
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
        model, tokenizer = load_run_model(config, run_dir, checkpoint, task_def, device)
        if languages:
            _evaluate(task, model, tokenizer, task_def, source, ckpt, languages, device, emit)
        if measures:
            _measure(task, model, tokenizer, task_def, source, ckpt, checkpoint, measures, device, init_cache, emit)
        del model


def load_run_model(config, run_dir: Path, checkpoint: Path, task_def, device):
    """A run's checkpoint as its evaluations and measures see it: the run's frozen parameters frozen, on `device`."""
    target = RunDir(run_dir).target(checkpoint.name)  # checked against the checksums the run recorded
    model, tokenizer = load_target(target, task_def.num_labels, task_def.label_names, output=task_def.output)
    freeze_parameters(model, config.freeze)  # the measures perturb what the run trained
    return model.to(device), tokenizer


def _evaluate(
    task: RunTask, model, tokenizer, task_def, source, ckpt: dict, languages: list[str], device, emit
) -> None:
    """Accuracy per language (a token task's metric, under the same name); with `prediction.enabled`, the same
    pass's logits and sentence embeddings (a token task's: per word and per sentence, `TextOutputs`) are kept
    on disk (before the unit is marked done) for the label-free measures."""
    spec = task.spec
    ev, pred = spec.evaluation, spec.prediction
    checkpoint_id = ckpt["checkpoint_id"]
    keep = pred.enabled
    embed = keep and pred.embedding_rows > 0
    load, evaluate = evaluation_stage(task_def)
    rows = load(task_def, languages, source, ev.split, ev.max_examples)
    precision = resolve_precision(ev.mixed_precision, device)
    machine = machine_record(device, precision)

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
                "machine": machine,
            }
        )

    evaluate(
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
        precision=precision,
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
    run_id = task.config.run_id
    machine = machine_record(device, "no")  # a study's measures run in float32 (compute_measures' default)
    by_data: dict[Any, list] = {}  # the items of each data size (a sweep's), each data's batches built once
    for item in measures:
        by_data.setdefault(spec.measure_data(item), []).append(item)
    with tqdm(
        total=len(measures),
        desc=f"measure {ckpt['checkpoint_id']}",
        unit="measure",
        leave=False,
        disable=not task.show_progress,
    ) as bar:
        target = RunDir(task.run_dir).target(checkpoint.name)
        for data, items in by_data.items():
            batches = build_batches(tokenizer, task_def, data, source, device)
            results = compute_measures(
                model,
                batches,
                [(item.name, item.config) for item in items],
                spec.measures.params,
                spec.measures.seed,
                init_state=cached_initial_state(init_cache, run_id, target, task_def, model),
                bar=bar,
                show_progress=task.show_progress,
            )
            # in the order given; the results first, so the generator finishes (and moves the bar) each time
            for (_, result, seconds), item in zip(results, items):
                record = result.to_dict()
                emit(
                    {
                        "kind": "measure",
                        "unit_id": measure_unit_id(spec, ckpt["checkpoint_id"], item),
                        "run_id": run_id,
                        "checkpoint_id": ckpt["checkpoint_id"],
                        "measure": item.name,
                        "config": spec.measure_config(item),
                        "data": data.key,
                        "value": record["value"],
                        "spread": record["spread"],
                        "num_samples": record["num_samples"],
                        "seconds": seconds,
                        "details": record,
                        "machine": machine,
                    }
                )


# ------------------------------------------------------------------------------------------------------------
# Ray: each grid point a task; the driver commits the units they return
# ------------------------------------------------------------------------------------------------------------


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


# How long the check that every node sees the study folder waits for its tasks (each starts a worker process).
NODE_CHECK_SECONDS = 120.0
NODE_CHECK_MARKER = ".node-check"


def probe_folder(out: str, marker: str, node_id: str) -> str | None:
    """Run on a node: read the driver's marker under `out` and write one back; what went wrong, or None."""
    import socket

    path = Path(out) / marker
    try:
        if path.read_text(encoding="utf-8") != marker:
            return f"{path} holds other content"
        path.with_name(f"{marker}.{node_id}").write_text(socket.gethostname(), encoding="utf-8")
    except OSError as err:
        return f"{type(err).__name__}: {err.strerror or err}"
    return None


def node_problems(ray, out: Path, marker: str) -> dict[str, str]:
    """node -> what went wrong when a task on it read `out/marker` and wrote `out/marker.NODE` back (checked
    here, so a node that writes to a folder of its own is caught too); empty when every alive node sees `out`."""
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    probe = ray.remote(num_cpus=0, max_retries=0)(probe_folder)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    refs = {
        f"{n.get('NodeManagerAddress', '?')} ({n['NodeID'][:8]})": (
            n["NodeID"],
            probe.options(scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False)).remote(
                str(out), marker, n["NodeID"]
            ),
        )
        for n in nodes
    }
    problems: dict[str, str] = {}
    for name, (node_id, ref) in refs.items():
        try:
            problem = ray.get(ref, timeout=NODE_CHECK_SECONDS)
        except Exception as err:  # noqa: BLE001 - Ray's timeout and task errors: a node that did not answer
            problem = f"no answer ({type(err).__name__})"
        written = out / f"{marker}.{node_id}"
        if problem is None and not written.is_file():
            problem = "what it wrote there is not in the driver's folder (a folder of its own)"
        written.unlink(missing_ok=True)
        if problem is not None:
            problems[name] = problem
    return problems


def check_nodes_see(ray, out: Path) -> None:
    """Every alive node of the cluster reads and writes the study folder `out` as the driver does, or one line
    naming the nodes that do not."""
    import secrets

    out.mkdir(parents=True, exist_ok=True)
    marker = f"{NODE_CHECK_MARKER}-{secrets.token_hex(6)}"
    (out / marker).write_text(marker, encoding="utf-8")
    try:
        problems = node_problems(ray, out, marker)
    finally:
        (out / marker).unlink(missing_ok=True)
    if problems:
        listed = "; ".join(f"node {name}: {problem}" for name, problem in problems.items())
        raise XlgmError(
            f"{out}: {len(problems)} Ray node(s) do not see the study folder ({listed}); put it on storage every "
            "node mounts at the same path"
        )


def run_on_ray(
    tasks: list[RunTask], commit: Emit, address: str | None, cpus_per_task: int | None, device: str = "auto"
) -> None:
    """Run `tasks` on a Ray cluster (`address`, else a local instance started and stopped here), handing each
    unit a task returns to `commit`."""
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
        check_nodes_see(ray, Path(tasks[0].out))
        _submit_and_collect(ray, tasks, commit, cpus_per_task, device)
    finally:
        if started:
            ray.shutdown()


def _submit_and_collect(
    ray, tasks: list[RunTask], commit: Emit, cpus_per_task: int | None, device: str = "auto"
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
                commit(unit)
    if failures:
        detail = "; ".join(f"run {run_id}: {str(err).strip().splitlines()[-1]}" for run_id, err in failures)
        raise XlgmError(
            f"{len(failures)} of {len(tasks)} Ray task(s) failed ({detail}); the others are recorded, "
            "run the study again to retry"
        )


# ------------------------------------------------------------------------------------------------------------
# Measures of groups of runs (seeds), in the driver
# ------------------------------------------------------------------------------------------------------------


def checkpoint_weights(checkpoint: Path) -> dict:
    """A checkpoint's trained parameters, checked against the checksum its run recorded."""
    recorded = RunDir(checkpoint.parent.parent).checksums(checkpoint.name)
    return read_safetensors(checkpoint / WEIGHTS, recorded.get(WEIGHTS))


def run_groups(spec: StudySpec, out: Path, db: StudyDB, configs, done: set[str], emit) -> None:
    """The group measures of every group of seeds whose runs are all trained, at each run's best checkpoint
    (the model the study picks from the run); the same trained parameters the checkpoints hold."""

    machine = machine_record("cpu", "no")  # the weights' arithmetic, in float32 on the driver's CPU
    for group, members in seed_groups(configs).items():
        todo = [m for m in group_measure_names() if group_unit_id(group, m) not in done]
        if not todo or any(train_unit_id(c.run_id) not in done for c in members):
            continue
        best = [next(c for c in db.checkpoints_of(m.run_id) if c["is_best"]) for m in members]
        states = [checkpoint_weights(Path(db.resolve_path(c["path"]) or c["path"])) for c in best]
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
                    "machine": machine,
                }
            )
