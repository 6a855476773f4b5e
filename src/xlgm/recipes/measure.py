"""Measure checkpoints: `xlgm measure RUN_OR_CHECKPOINT --measures a,b,c --data en-dev`.

For each checkpoint the model is loaded once, the data tokenized once into fixed length-sorted batches, and
every requested measure computed on them (each measure leaves the model exactly as it found it). The
trained parameters of the run (its `--freeze` choice respected) are what the measures perturb unless a
parameter filter says otherwise. Results go to the run's SQLite file and a JSON file beside it, each with the
machine that computed it (`xlgm.core.machine`).
Measures run in float32 on the model's device unless a mixed precision is asked for (curvature estimates
in bf16 are not exact).
"""

from __future__ import annotations

import contextlib
import re
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, cast

import torch
from tqdm.auto import tqdm

from xlgm.core import validation
from xlgm.core.devices import Precision, autocast, resolve_device, resolve_precision
from xlgm.core.errors import XlgmError
from xlgm.core.files import read_json, write_json
from xlgm.core.machine import machine_record
from xlgm.core.options import check_fields, option
from xlgm.data.batching import MAX_LENGTH, length_sorted_batches
from xlgm.data.loading import DataSource, load_task_rows
from xlgm.data.splits import FILE_SPLITS, TRAIN_MINUS_TEST, Split
from xlgm.data.tasks import Task, check_task
from xlgm.measures.base import MeasureResult, compute_measure, get_measure, list_measures, resolve_config
from xlgm.models.load import load_classifier, load_target
from xlgm.recipes.evaluate import DEVICE_HELP, MAX_LENGTH_HELP, TASK_HELP, model_device
from xlgm.recipes.train import freeze_parameters, tokenize_rows
from xlgm.results import ResultsDB
from xlgm.runs import ResolvedTarget, RunDir, is_run_dir, load_initial_into, resolve_target

DEFAULT_MEASURES = ("margin", "sharpness-diff", "frobenius-distance")
CHECKPOINT_CHOICES = ("all", "best", "last")


@dataclass(frozen=True)
class MeasureData:
    """Which labelled examples the measures see: a language and split, at most `max_examples` rows."""

    language: str = "en"
    split: Split = "dev"
    max_examples: int | None = field(
        default=256, metadata=option(help="rows the measures see (token tasks: sentences)")
    )
    batch_size: int = field(default=32, metadata=option(help="rows a forward and backward pass"))
    # None (a study spec's default): the run's training max_length
    max_length: int | None = field(default=MAX_LENGTH, metadata=option(help=MAX_LENGTH_HELP))

    def __post_init__(self) -> None:
        validation.require(
            isinstance(self.language, str) and bool(self.language.strip()),
            f"--data: expected LANGUAGE-SPLIT, e.g. en-dev, got language {self.language!r}",
        )
        check_fields(self, label=lambda name: "--data split" if name == "split" else validation.flag(name))

    @classmethod
    def parse(cls, spec: str, **kw: Any) -> MeasureData:
        """`en-dev` -> language en, split dev."""
        lang, sep, split = spec.partition("-")
        if not sep or not (split in FILE_SPLITS or TRAIN_MINUS_TEST.fullmatch(split)):
            raise XlgmError(f"--data {spec!r}: expected LANGUAGE-SPLIT, e.g. en-dev or de-test")
        return cls(lang, cast(Split, split), **kw)  # __post_init__ checks it

    @property
    def key(self) -> str:
        return f"{self.language}-{self.split}-{self.max_examples or 'all'}"


@dataclass(frozen=True)
class MeasureConfig:
    """What `xlgm measure` computes on a TARGET. Made only from valid values: the measure names, their
    options, the data's numbers and the device are checked when the config is made (errors name the flag).
    `options` are the measures' options as given (what the results file's config hash keeps); `configs` the
    measures' configs they give, which the measures compute with."""

    measures: tuple[str, ...] = DEFAULT_MEASURES
    options: dict[str, dict[str, Any]] = field(default_factory=dict)  # measure -> {option: value}
    data: MeasureData = field(default_factory=MeasureData)
    task: str | None = field(default=None, metadata=option(help=TASK_HELP))
    checkpoint: Literal["all", "best", "last"] = field(
        default="all", metadata=option(help="which checkpoints of a run")
    )
    seed: int = field(default=0, metadata=option(help="seeds the measures' random draws"))
    params: str | None = field(
        default=None, metadata=option(help="parameter filter, a regex on names (default: the trained parameters)")
    )
    source: DataSource = field(default_factory=DataSource)
    device: str = field(default="auto", metadata=option(help=DEVICE_HELP))
    mixed_precision: Precision = field(
        default="no",
        metadata=option(help="autocast of the measures' passes (default: no, float32: curvature in bf16 is not exact)"),
    )
    configs: dict[str, Any] = field(init=False, repr=False, compare=False)  # measure -> its config

    def __post_init__(self) -> None:
        v, flag = validation, validation.flag
        given = v.non_empty_list(flag("measures"), list(self.measures))
        names = [get_measure(name, kind="model").name for name in given]  # an unknown name is a one-line error
        object.__setattr__(self, "measures", tuple(names))
        for name in names:
            v.require(
                get_measure(name).kind == "model",
                f"--measures: {name} is not a measure of one checkpoint (see `xlgm measure --list`)",
            )
        unknown = sorted(set(self.options) - set(names))
        v.require(not unknown, f"--set names measure(s) not requested: {', '.join(unknown)}")
        # bad options fail now, not after a model has loaded
        configs = {name: resolve_config(get_measure(name), self.options.get(name)) for name in names}
        object.__setattr__(self, "configs", configs)
        if self.task is not None:
            check_task(flag("task"), self.task)
        check_fields(self)  # checkpoint, seed, device, mixed_precision
        if self.params is not None:
            try:
                re.compile(self.params)
            except re.error as err:
                raise XlgmError(f"--params: expected a regular expression ({err})") from None


def parse_measure_options(pairs: Sequence[str]) -> dict[str, dict[str, Any]]:
    """`sharpness-diff.num_draws=5` -> {"sharpness-diff": {"num_draws": 5}}; values are read as YAML scalars, as
    a spec's are, and become the measure's config as a spec entry's do (`MeasureConfig`: `resolve_config`)."""
    import yaml

    options: dict[str, dict[str, Any]] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        name, dot, field = key.partition(".")
        if not eq or not dot:
            raise XlgmError(f"--set {pair!r}: expected MEASURE.OPTION=VALUE, e.g. sharpness-diff.num_draws=5")
        options.setdefault(name, {})[field] = yaml.safe_load(value)
    return options


def resolve_measures(spec: str | Sequence[str]) -> list[str]:
    names = (
        list_measures()
        if spec in ("all", ["all"])
        else ([s.strip() for s in spec.split(",") if s.strip()] if isinstance(spec, str) else list(spec))
    )
    return [get_measure(name, kind="model").name for name in names]  # an unknown name is a one-line error


@contextlib.contextmanager
def measure_progress(name: str, show: bool = True) -> Iterator[Callable[[int, int | None], None]]:
    """A `compute_measure(progress=...)` hook that shows a long measure's steps as a nested bar (shown from its
    first report on, so quick measures without steps add no bar; gone when the measure is done)."""
    bar = None

    def hook(steps: int, total: int | None) -> None:
        nonlocal bar
        if not show:
            return
        if bar is None:
            bar = tqdm(total=total, desc=f"  {name}", unit="step", leave=False, dynamic_ncols=True)
        elif total is not None:
            bar.total = (bar.total or 0) + total
            bar.refresh()
        if steps:
            bar.update(steps)

    try:
        yield hook
    finally:
        if bar is not None:
            bar.close()


def compute_measures(
    model: torch.nn.Module,
    batches: list[dict[str, torch.Tensor]],
    measures: Sequence[tuple[str, Any]],
    params: Any,
    seed: int,
    *,
    init_state: Callable[[], dict[str, torch.Tensor]] | None = None,
    precision: str = "no",
    bar: tqdm | None = None,
    label: str = "",
    show_progress: bool = True,
) -> Iterator[tuple[str, MeasureResult, float]]:
    """The measure stage on one loaded model: each (name, options) of `measures` computed on `batches` in order,
    yielding (name, result, seconds) as each finishes. `init_state` gives the run's initial weights; it is called
    only for a measure that needs them (callers cache it across a run's checkpoints). `bar` shows `label + name`
    while a measure runs and moves on once the caller has taken its result."""
    device = model_device(model)
    for name, options in measures:
        if bar is not None:
            bar.set_postfix_str(f"{label}{name}")
        inputs: dict[str, Any] = {}
        # A measure's own init_state_path option names the initial weights it measures from: the run's are not read.
        if "init_state" in get_measure(name).inputs and not getattr(options, "init_state_path", None):
            if init_state is None:
                raise XlgmError(f"{name} needs the initial weights: measure a run or a checkpoint of one")
            inputs["init_state"] = init_state()
        start = time.perf_counter()
        with autocast(precision, device), measure_progress(name, show_progress) as steps:
            result = compute_measure(name, model, batches, options, params, seed, progress=steps, **inputs)
        yield name, result, time.perf_counter() - start
        if bar is not None:
            bar.update(1)


def build_batches(
    tokenizer, task: Task, data: MeasureData, source: DataSource, device: torch.device
) -> list[dict[str, torch.Tensor]]:
    """The data's fixed length-sorted batches, on `device` (the model's). A token task's `max_examples` counts
    sentences, and its batches carry each word's tag on its first subword (`xlgm.data.tagging`)."""
    if data.max_length is None:
        raise XlgmError("measure data without max_length: a study resolves it (StudySpec.measure_data)")
    rows = load_task_rows(task, data.split, data.language, source, data.max_examples)
    tokenized, collator = tokenize_rows(tokenizer, task, rows, data.max_length)
    return [
        {k: v.to(device) for k, v in collator(idx).items()}
        for idx in length_sorted_batches(tokenized.lengths, data.batch_size)
    ]


def initial_state(target: ResolvedTarget, task: Task, names: Sequence[str]) -> dict[str, torch.Tensor]:
    """The run's initial weights (base model + recorded head) for the given parameter names."""
    if target.run_dir is None:
        raise XlgmError(f"{target.label}: the initial weights belong to a run; this is not one")
    model = load_classifier(target.model, task.num_labels, task.label_names, output=task.output)
    load_initial_into(model, target.run_dir, target.init_head_sha256)
    params = dict(model.named_parameters())
    return {n: params[n].detach().clone() for n in names}


def cached_initial_state(
    cache: dict, key: Any, target: ResolvedTarget, task: Task, model: torch.nn.Module
) -> Callable[[], dict[str, torch.Tensor]]:
    """A `compute_measures(init_state=...)` callable: the run's initial weights of the model's trained
    parameters, read once per `key` (a run) into `cache`."""

    def get() -> dict[str, torch.Tensor]:
        if key not in cache:
            trained = [n for n, p in model.named_parameters() if p.requires_grad]
            cache[key] = initial_state(target, task, trained)
        return cache[key]

    return get


def expand_targets(target: str, which: str = "all", verify: bool = True) -> list[ResolvedTarget]:
    """A run directory -> all its checkpoints (or `best`/`last`); anything else -> itself. `verify`: loading a
    checkpoint checks its recorded checksums."""
    path = Path(target)
    if which == "all" and path.is_dir() and is_run_dir(path):
        run = RunDir(path)
        if not run.index["checkpoints"]:
            raise XlgmError(f"{path}: the run has no checkpoints yet")
        return [run.target(c["name"], verify) for c in run.index["checkpoints"]]
    return [resolve_target(target, "best" if which == "all" else which, verify)]


def measure_checkpoints(
    targets: Sequence[ResolvedTarget],
    task: Task,
    config: MeasureConfig,
    db: ResultsDB | None = None,
    show_progress: bool = True,
    random_head: int | None = None,
) -> list[dict]:
    """Compute every measure of `config` on every target; returns one record per (checkpoint, measure).
    `random_head` (a seed) allows a base model without a trained head (see models.load)."""
    measures, options, data, seed, param_filter = (
        config.measures,
        config.options,
        config.data,
        config.seed,
        config.params,
    )
    device = resolve_device(config.device)
    precision = resolve_precision(config.mixed_precision, device)
    records: list[dict] = []
    init_cache: dict[Path, dict[str, torch.Tensor]] = {}
    bar: tqdm | None = None  # made once the first model has loaded and passed its checks: no bar before an error
    for target in targets:
        model, tokenizer = load_target(
            target, task.num_labels, task.label_names, random_head=random_head, output=task.output
        )
        validation.max_length("--max-length", data.max_length, validation.model_positions(model.config))
        run_config = RunDir(target.run_dir).config if target.run_dir else {}
        freeze_parameters(model, run_config.get("freeze", "none"))
        module: torch.nn.Module = model  # transformers' `to` is typed through functools.wraps, unbound to mypy
        module.to(device)
        machine = machine_record(model_device(model), precision)
        batches = build_batches(tokenizer, task, data, config.source, model_device(model))
        if bar is None:
            bar = tqdm(total=len(targets) * len(measures), desc="measure", unit="measure", disable=not show_progress)
        checkpoint_id = (
            f"{run_config['run_id']}/{target.checkpoint.name}" if target.run_dir and target.checkpoint else target.model
        )
        run_initial = None
        if target.run_dir is not None:
            run_initial = cached_initial_state(init_cache, target.run_dir, target, task, model)
        for name, result, seconds in compute_measures(
            model,
            batches,
            [(name, config.configs[name]) for name in measures],
            param_filter,
            seed,
            init_state=run_initial,
            precision=precision,
            bar=bar,
            label=f"{target.label}: ",
            show_progress=show_progress,
        ):
            record = {
                "checkpoint_id": checkpoint_id,
                "checkpoint": str(target.checkpoint or target.model),
                "data": data.key,
                "seed": seed,
                "seconds": seconds,
                **result.to_dict(),
                "machine": machine,
            }
            records.append(record)
            if db is not None:
                measured_with = {"options": options.get(name) or {}, "param_filter": param_filter, "seed": seed}
                db.add_measure(
                    checkpoint_id,
                    name,
                    measured_with,
                    data.key,
                    result.value,
                    result.spread,
                    result.num_samples,
                    seconds,
                    result.to_dict(),
                    machine,
                )
        del model
    if bar is not None:
        bar.close()
    return records


def _record_key(record: dict) -> tuple:
    return record["checkpoint_id"], record["name"], record["data"], record.get("seed")


def read_records(path: Path) -> list[dict]:
    """The records of an existing measures file ([] when there is none). Called before measuring too, so a
    file that is not xlgm's fails before any work and is never overwritten."""
    if not path.exists():
        return []
    advice = "not a measures file: move it aside or pass --out"
    try:
        records = read_json(path, expect=list)
    except XlgmError as err:
        raise XlgmError(f"{err}; {advice}") from None
    keys = {"checkpoint_id", "name", "data"}
    bad = [i for i, r in enumerate(records) if not isinstance(r, dict) or not keys <= r.keys()]
    if bad:
        raise XlgmError(f"{path}: entry {bad[0]} is not a measure record (checkpoint_id, name, data); {advice}")
    return records


def write_records(records: list[dict], path: Path) -> None:
    """Merge into an existing JSON file, keyed by (checkpoint, measure, data, seed); written atomically."""
    merged = {_record_key(r): r for r in read_records(path)}
    merged.update({_record_key(r): r for r in records})
    write_json(path, list(merged.values()), sort_keys=False)
