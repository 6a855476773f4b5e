"""Fine-tune a classifier on the source language: `xlgm train`.

Built on `accelerate`: `python -m torch.distributed.run --nproc_per_node N -m xlgm.cli train ...` (or
`accelerate launch`) runs the same loop in N processes (DDP), and `--mixed-precision` picks fp16/bf16 where
the device has it. The loop owns AdamW, the linear schedule with warm-up, clipping and accumulation; what
one micro-batch does (plain cross-entropy, SAM, Fisher Penalty, MVR) is the objective's business (see
objectives/base.py).

Steps are global. One optimizer step takes `grad_accum × processes` consecutive micro-batches of the
epoch's shuffled order, process r the r-th run of `grad_accum` of them, and the random draws of a
micro-batch (dropout, the objective's sampling) are seeded from (seed, its global index). So N processes
train exactly as one process with N times the accumulation, and a run resumed from a checkpoint
continues as if it had never stopped.

`train` reads top to bottom: claim the run folder (`prepare_run_dir`), load the rows, build the model and the
objective, take the step schedule (recipes/schedule.py), find a resume's starting point, write the run's files,
build the optimizer, run the loop (`run_steps`: `TrainingLoop.optimizer_step`, `CheckpointSaver.save`) and
`finish_run`. The accelerate side (device, trackers, collectives) is recipes/accelerator.py; the training state
a checkpoint keeps for resuming is written by xlgm.runs.
"""

from __future__ import annotations

import contextlib
import json
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal, TextIO

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.tracking import GeneralTracker
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

import xlgm.objectives as objectives
from xlgm.core import validation
from xlgm.core.devices import Precision
from xlgm.core.errors import ArgumentError, XlgmError
from xlgm.core.files import sha256_problem
from xlgm.core.machine import describe_machine, machine_kind, machine_record
from xlgm.core.options import check_fields, option
from xlgm.data.batching import MAX_LENGTH, BatchCollator, TokenizedSet, bucketed_shuffled_batches, tokenize_examples
from xlgm.data.loading import DataSource, load_task_rows
from xlgm.data.splits import SPLIT_HELP, check_split, group_holdout, sentence_holdout
from xlgm.data.tagging import TaggedBatchCollator, TaggedTokenizedSet, tokenize_tagged
from xlgm.data.tasks import TASKS, Task, get_task, write_run_task
from xlgm.models.load import EMBEDDED, load_classifier, load_tokenizer
from xlgm.objectives.base import StepContext
from xlgm.recipes.accelerator import broadcast_flag, check_report_to, global_means, make_accelerator, wait_for_everyone
from xlgm.recipes.evaluate import accuracy
from xlgm.recipes.schedule import StepSchedule, config_schedule
from xlgm.recipes.tokens import token_score
from xlgm.results import ResultsDB, config_hash
from xlgm.runs import (
    CONFIG,
    LOG,
    WEIGHTS,
    RunDir,
    checkpoint_name,
    claim_run_dir,
    clear_run_dir,
    load_checkpoint_into,
    restore_training_state,
    save_checkpoint,
    save_initial_head,
    training_state,
    write_json,
)

# What a run freezes; `auto` is the model's default (`default_freeze`), resolved when the config is made.
Freeze = Literal["auto", "none", "word", "embeddings"]
# Held-out rows for checkpoint selection are drawn with a fixed seed, not the run's, so every run of a
# study selects on the same rows.
HOLDOUT_SEED = 1234
# Options added after run ids were first published, with the value that leaves training as it was: left out
# of the hash at that value.
RUN_ID_NEUTRAL = {"patience": 0}


@dataclass(frozen=True)
class TrainConfig:
    # Each field is a flag of `xlgm train` (`--max-length`) and a key of a study spec's `train:` section, with
    # this type, default and help (xlgm.core.options); shared rules are validation.FIELD_RULES.
    model: str = field(default="embedded", metadata=option(help="`embedded`, a Hub id or a local folder"))
    task: str = field(default="xnli", metadata=option(help=f"{', '.join(TASKS)} or a task file (a .yaml path)"))
    source_language: str = field(default="en", metadata=option(help="the language trained on"))
    data: str = "bundled"  # bundled | local | hf
    data_dir: str | None = None
    # None: the task's (default_splits), resolved when the config is made, so the run id hashes the split in use
    train_split: str | None = field(
        default=None, metadata=option(help=f"{SPLIT_HELP} (default: dev; train for token tasks, which have one)")
    )
    select_split: str | None = field(
        default=None,
        metadata=option(
            help="split for checkpoint selection (a held-out part, whole premises or sentences, when it equals the "
            "train split; default: dev; the train split for token tasks)"
        ),
    )
    holdout_fraction: float = field(
        default=0.1, metadata=option(help="the held-out part when --select-split is the train split")
    )
    max_train_examples: int | None = field(
        default=None, metadata=option(help="train on at most N rows (token tasks: sentences) (all)")
    )
    max_length: int = field(default=MAX_LENGTH, metadata=option(help="tokens a row is truncated to"))
    epochs: float = field(default=1.0, metadata=option(help="passes over the training rows (may be fractional)"))
    batch_size: int = field(default=32, metadata=option(help="micro-batch size per device"))
    grad_accum: int = field(default=1, metadata=option(help="micro-batches an optimizer step accumulates"))
    # suits the small embedded model; the paper's mBERT runs use 2e-5 (studies/)
    lr: float = field(default=1e-4, metadata=option(help="peak learning rate (linear warm-up and decay)"))
    weight_decay: float = field(default=0.01, metadata=option(help="AdamW's decoupled weight decay"))
    warmup_ratio: float = field(default=0.1, metadata=option(help="the share of steps warming up"))
    max_grad_norm: float = field(default=1.0, metadata=option(help="gradient clipping norm (0: no clipping)"))
    seed: int = field(default=0, metadata=option(help="seeds the head, the data order and the objective"))
    mixed_precision: Precision = field(
        default="auto",
        metadata=option(
            help="auto: bf16 (else fp16) on a GPU, bf16 on a CPU with native bf16 (AMX, AVX512-BF16), else no"
        ),
    )
    freeze: Freeze = field(
        default="auto",
        metadata=option(help="freeze word embeddings or all embeddings (auto: word for the embedded model, else none)"),
    )
    save_every: int = field(default=0, metadata=option(help="checkpoint every N steps (0: the last only)"))
    # Early stopping (the learning-rate schedule still spans `epochs`).
    patience: int = field(
        default=0,
        metadata=option(
            help="stop once N checkpoints in a row have not beaten the best held-out accuracy (0: train every epoch)"
        ),
    )
    log_every: int = field(default=10, metadata=option(help="a train_log.jsonl record every N steps"))
    objective: str = "adamw"
    objective_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.freeze == "auto":  # the config holds what the run freezes: its run id hashes that
            object.__setattr__(self, "freeze", default_freeze(self.model))
        train_split, select_split = self.train_split, self.select_split
        if train_split is None or select_split is None:
            default_train, default_select = default_splits(get_task(self.task))
            train_split = train_split or default_train
            select_split = select_split or default_select or train_split
            object.__setattr__(self, "train_split", train_split)
            object.__setattr__(self, "select_split", select_split)
        check_fields(self)
        validation.one_of("--data", self.data, ("bundled", "local", "hf"))
        check_split(train_split)
        check_split(select_split)
        # A sentence-pair task's bundled train split is built from English dev; a token task's is its own.
        holds_dev = train_split.startswith("train-minus-test") or (
            (self.data, train_split) == ("bundled", "train") and not get_task(self.task).is_token_task
        )
        if self.patience and not self.save_every:
            raise XlgmError("--patience counts checkpoints: give --save-every N too")
        if self.patience and self.holdout_fraction == 0 and self.select_split == self.train_split:
            raise XlgmError("--patience needs held-out rows: --holdout-fraction 0 leaves none")
        if holds_dev and self.select_split == "dev":
            raise XlgmError(
                f"--select-split dev: the {self.train_split} split holds the English dev rows, so "
                f"selecting on them selects on training rows; use --select-split {self.train_split} "
                "(a held-out part of it)"
            )

    @property
    def run_id(self) -> str:
        fields = asdict(self)
        for name, neutral in RUN_ID_NEUTRAL.items():  # runs that do not use a later option keep their ids
            if fields[name] == neutral:
                del fields[name]
        return config_hash(fields)

    @property
    def source(self) -> DataSource:
        return DataSource(self.data, self.data_dir)


def default_splits(task: Task) -> tuple[str, str | None]:
    """(train split, selection split) of a config that names none; a selection split of None is the train
    split (a held-out part of it). Sentence-pair tasks train on English dev (their bundled data has no train
    file) and select on it; token tasks have a real train split, and select on a held-out part of it."""
    return ("train", None) if task.is_token_task else ("dev", "dev")


def default_freeze(model: str) -> Freeze:
    """What `--freeze auto` freezes: `word` for the embedded model (AdamW over its 96M word-embedding parameters
    would dominate a CPU step, and they are most of its size), `none` for every other model."""
    return "word" if model == EMBEDDED else "none"


def freeze_parameters(model: PreTrainedModel, what: str) -> int:
    """Freeze word embeddings or all embeddings; returns the number of frozen parameters."""
    if what == "none":
        return 0
    frozen = 0
    emb = model.get_input_embeddings()
    targets: list[torch.Tensor] = []
    if what == "word":
        weight = emb.weight
        assert isinstance(weight, torch.Tensor)  # an embedding layer's weight, a Parameter
        targets = [weight]
    if what == "embeddings":
        targets = [p for n, p in model.named_parameters() if "embed" in n or p is emb.weight]
    for p in targets:
        p.requires_grad_(False)
        frozen += p.numel()
    return frozen


def checkpoints_without_gain(index: dict) -> int:
    """How many checkpoints in a row, at the end of a run's index, have not beaten the best held-out accuracy
    before them (ties do not count as a gain)."""
    best, since = None, 0
    for c in index["checkpoints"]:
        acc = c["dev_accuracy"]
        if acc is not None and (best is None or acc > best):
            best, since = acc, 0
        else:
            since += 1
    return since


def split_train_select(config: TrainConfig, task: Task, rows: list, select_rows: list | None):
    """Hold out a fixed part of the training rows for selection when both come from the same split: whole
    premises (PAWS-X: sentences) at a time, so no held-out premise is also trained on; a token task's tagged
    sentences, with every copy of a repeated one."""
    if select_rows is not None:
        return rows, select_rows
    if config.holdout_fraction == 0:
        return rows, []
    if task.is_token_task:
        return sentence_holdout(rows, config.holdout_fraction, HOLDOUT_SEED)
    return group_holdout(task, rows, config.holdout_fraction, HOLDOUT_SEED)


def micro_batch_seeds(seed: int, index: int) -> tuple[int, int]:
    """Seeds of the global RNG (dropout) and of the objective's generator for global micro-batch `index`."""
    torch_seed, objective_seed = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint64)
    return int(torch_seed), int(objective_seed)


def train(
    config: TrainConfig,
    run_dir: str | Path,
    show_progress: bool = True,
    db_path: str | Path | None = None,
    objective=None,
    *,
    device: str = "auto",
    resume: bool = False,
    overwrite: bool = False,
    report_to: str | Sequence[str | GeneralTracker] = (),
) -> Path:
    """Train and write the run directory; returns its path.

    A folder that already holds a run is refused unless `resume` (the same config: continue from its last
    checkpoint; a finished run is returned as it is) or `overwrite` (delete what the old run wrote first).
    `device` is where to train (auto|cpu|cuda|cuda:N|mps); it is not part of the run id. `report_to`: trackers
    that hear what train_log.jsonl records (tensorboard, wandb, mlflow, or accelerate GeneralTracker
    instances), beside it; not part of the run id either."""
    task = get_task(config.task)
    if config.source_language not in task.languages:
        raise XlgmError(f"unknown source language {config.source_language!r} for {task.name}")
    trackers = check_report_to(report_to)
    accelerator = make_accelerator(device, config.mixed_precision, trackers, Path(run_dir))
    main = accelerator.is_main_process
    run, mode = prepare_run_dir(accelerator, config, Path(run_dir), resume=resume, overwrite=overwrite)
    if mode == "finished":
        if main and show_progress:
            print(f"{run.path}: the run finished before; nothing to resume", file=sys.stderr)
        return run.path
    set_seed(config.seed)

    # The model, the objective and the schedule
    train_rows, select_rows = load_rows(config, task)
    tokenizer, model, new_parameters = build_model(config, task)
    frozen = freeze_parameters(model, config.freeze)
    if objective is None:
        objective = build_objective(config)
    # Before the run's files: an objective that cannot train this task (MVR on tokens) refuses here.
    objective.setup(model, tokenizer, train_rows)
    data, collator = tokenize_rows(tokenizer, task, train_rows, config.max_length)
    schedule = config_schedule(config, len(data), accelerator.num_processes)
    session = {
        "device": str(accelerator.device),
        "processes": accelerator.num_processes,
        "mixed_precision": accelerator.mixed_precision,
    }
    machine = machine_record(accelerator.device, accelerator.mixed_precision)
    resumed = resume_point(run, model, session, len(train_rows), schedule) if mode == "resume" else None
    start_step = resumed.step if resumed is not None else 0
    if main and mode == "new":
        counts: dict[str, Any] = {
            "num_train": len(train_rows),
            "num_select": len(select_rows),
            "frozen_parameters": frozen,
        }
        if task.is_token_task:  # what the held-out score is, and what tokenizing did to the training words
            counts |= {"selection_metric": task.metric, "alignment": asdict(data.counts)}
        write_run_files(run, config, task, model, new_parameters, {**session, **first_session(machine)}, counts)
    elif main:  # what a resumed run wrote after its last checkpoint is forgotten
        run.rewind(start_step)
        run.write_state(
            resumed_at=[*(run.state or {}).get("resumed_at", []), start_step],
            machines=resumed_sessions(run, machine, start_step),
            **session,
        )
    if trackers:
        start_trackers(accelerator, config, run)

    # The optimizer, then the loop
    optimizer, scheduler = build_optimizer(config, model, schedule.total_steps)
    # The scheduler is not prepared: accelerate's AcceleratedScheduler steps it once per process on each
    # optimizer step (split_batches=False), and the loop's steps are already global.
    model, optimizer = accelerator.prepare(model, optimizer)
    loop = TrainingLoop(
        config, accelerator, schedule, model, optimizer, scheduler, torch.Generator().manual_seed(config.seed)
    )
    if resumed is not None:
        loop.restore(resumed)
    db = ResultsDB(db_path or run.path / "results.sqlite") if main else None
    if db:
        db.add_run(config.run_id, asdict(config), str(run.path), status="training", machine=run.machine)
    log = TrainLog(accelerator, (run.path / LOG).open("a") if main else None)
    checkpoints = CheckpointSaver(run, loop, tokenizer, task, select_rows, db, log)
    step, stopped = run_steps(
        loop, checkpoints, data, collator, objective, start_step, resumed is not None, show_progress
    )
    if main:
        finish_run(run, config, db, log, step, stopped, schedule.total_steps)
    if trackers:
        accelerator.end_training()
    wait_for_everyone(accelerator)
    return run.path


# ------------------------------------------------------------------------------------------------------------
# Before the loop: the run folder, the rows, the model, the objective, a resume's starting point, the optimizer
# ------------------------------------------------------------------------------------------------------------


def prepare_run_dir(
    accelerator: Accelerator, config: TrainConfig, path: Path, *, resume: bool, overwrite: bool
) -> tuple[RunDir, str]:
    """Claim the run folder (`runs.claim_run_dir`: `new`, `resume` or `finished`) and, unless the run finished,
    make it ready: emptied for a new run. Every process has looked at the folder before the main one changes it."""
    run = RunDir(path)
    mode = claim_run_dir(run.path, asdict(config), config.run_id, resume=resume, overwrite=overwrite)
    wait_for_everyone(accelerator)
    if mode == "finished":
        return run, mode
    if accelerator.is_main_process:
        if mode == "new":
            clear_run_dir(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
    wait_for_everyone(accelerator)
    return run, mode


def load_rows(config: TrainConfig, task: Task) -> tuple[list, list]:
    """The rows trained on and the held-out rows checkpoints are selected on: sentence pairs (`Example`), or a
    token task's tagged sentences (`TaggedSentence`)."""
    assert config.train_split is not None and config.select_split is not None  # resolved by TrainConfig
    rows: list = load_task_rows(
        task, config.train_split, config.source_language, config.source, config.max_train_examples
    )
    select = None
    if config.select_split != config.train_split:
        select = load_task_rows(task, config.select_split, config.source_language, config.source)
    return split_train_select(config, task, rows, select)


def tokenize_rows(tokenizer, task: Task, rows: list, max_length: int) -> tuple[Any, Any]:
    """The training rows tokenized once, and the collator that pads index lists of them into batches: a token
    task's words with each tag on the first subword (`xlgm.data.tagging`), else sentence pairs."""
    if task.is_token_task:
        tagged = tokenize_tagged(tokenizer, rows, max_length)
        return tagged, TaggedBatchCollator(tokenizer, tagged)
    data = tokenize_examples(tokenizer, rows, max_length)
    return data, BatchCollator(tokenizer, data)


def held_out_score(model: PreTrainedModel, tokenizer, task: Task, rows: list, max_length: int) -> float:
    """What checkpoints are selected on: accuracy on held-out sentence pairs, or the token task's metric
    (token accuracy, entity F1) on held-out tagged sentences."""
    if task.is_token_task:
        return token_score(model, tokenizer, task, rows, max_length).value
    return accuracy(model, tokenizer, rows, max_length)


def build_model(config: TrainConfig, task: Task) -> tuple[Any, PreTrainedModel, set[str]]:
    """The tokenizer, the classifier and the names of its newly initialised parameters (the head)."""
    tokenizer = load_tokenizer(config.model)
    set_seed(config.seed)  # the head's initialisation depends on the seed alone
    model, new_parameters = load_classifier(
        config.model, task.num_labels, task.label_names, return_new=True, output=task.output
    )
    return tokenizer, model, new_parameters


def build_objective(config: TrainConfig):
    """The objective the config names, with its options (`xlgm.objectives`)."""
    options = dict(config.objective_options)
    if "max_length" in objectives.config_fields(config.objective):  # MVR re-tokenizes with the loop's max_length
        options.setdefault("max_length", config.max_length)
    return objectives.build_objective(config.objective, task=config.task, batch_size=config.batch_size, **options)


@dataclass(frozen=True)
class Resumed:
    """Where a resumed run starts: the step of its last checkpoint and that checkpoint's training state."""

    step: int
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any]


def resume_point(run: RunDir, model: PreTrainedModel, session: dict, num_train: int, schedule: StepSchedule):
    """Check that an unfinished run can go on in this session and load its last checkpoint into `model`; None
    when the run has no checkpoint yet (it starts again from step 0)."""
    recorded = run.state or {}
    for key in ("processes", "mixed_precision"):
        if key in recorded and recorded[key] != session[key]:
            raise XlgmError(
                f"{run.path}: the run trained with {key} {recorded[key]}, this process has "
                f"{session[key]}; resume it with the same"
            )
    if run.config.get("num_train") != num_train:
        raise XlgmError(
            f"{run.path}: the run trained on {run.config.get('num_train')} rows, the data now "
            f"gives {num_train}; the training data changed since"
        )
    last = run.last_checkpoint
    if last is None:
        return None
    if not run.has_training_state(last["name"]):
        raise XlgmError(f"{run.checkpoint_dir(last['name'])}: no training state to resume from")
    weights = run.checkpoint_dir(last["name"]) / WEIGHTS
    problem = sha256_problem(weights, run.checksums(last["name"]).get(WEIGHTS))
    if problem:  # checked here, not by the loader: its advice (verify=False) is no way to resume
        raise ArgumentError(
            lambda pick: (
                f"{weights}: {problem}; the run cannot resume from it: pass "
                f"{pick('overwrite=True', '--overwrite')} to train it again"
            )
        )
    load_checkpoint_into(model, run.checkpoint_dir(last["name"]))
    tensors, meta = run.load_training_state(last["name"])
    if meta["total_steps"] != schedule.total_steps:
        raise XlgmError(f"{run.path}: the run has {meta['total_steps']} steps, this config {schedule.total_steps} here")
    return Resumed(meta["step"], tensors, meta)


def first_session(machine: dict[str, Any]) -> dict[str, Any]:
    """state.json's `machines` of a new run: this session's machine from step 0."""
    return {"machines": [{"from_step": 0, "machine": machine}]}


def resumed_sessions(run: RunDir, machine: dict[str, Any], start_step: int) -> list[dict[str, Any]]:
    """state.json's `machines` once this session resumes the run at `start_step`: the sessions whose steps are
    kept, then this one. Warns on one line when this machine is of another kind than the one that trained the
    steps before: the run then no longer matches an uninterrupted one bit for bit."""
    kept = [s for s in (run.state or {}).get("machines") or [] if s["from_step"] < start_step]
    if start_step and not kept:  # trained before runs recorded their machine
        kept = [{"from_step": 0, "machine": None}]
    before = kept[-1]["machine"] if kept else None
    if before is not None and machine_kind(before) != machine_kind(machine):
        print(
            f"xlgm: warning: {run.path}: resuming at step {start_step} on another kind of machine "
            f"({describe_machine(machine)}) than trained it so far ({describe_machine(before)}); "
            "its numbers will not match an uninterrupted run's bit for bit",
            file=sys.stderr,
        )
    return [*kept, {"from_step": start_step, "machine": machine}]


def write_run_files(
    run: RunDir, config: TrainConfig, task: Task, model: PreTrainedModel, new_parameters, session: dict, counts: dict
) -> None:
    """A new run's files: state.json (`session`: the device, the processes, the resolved precision and the machine),
    the task, the initial head and init.json, and config.json last (a folder holds a run once its config is there).
    `counts`: the rows trained on and held out, the frozen parameters."""
    run.write_state(run_id=config.run_id, finished=False, resumed_at=[], **session)
    write_run_task(task, run.path)
    head: dict[str, torch.Tensor] = {n: p for n, p in model.named_parameters() if n in new_parameters}
    save_initial_head(run, head, config.model)
    write_json(run.path / CONFIG, {**asdict(config), "run_id": config.run_id, **counts, "versions": _versions()})


def start_trackers(accelerator: Accelerator, config: TrainConfig, run: RunDir) -> None:
    """Tell `--report-to`'s trackers the run's name and its config as hyperparameters."""
    accelerator.init_trackers(
        "xlgm",
        config=_tracker_config(config),
        init_kwargs={"wandb": {"name": run.path.name}, "mlflow": {"run_name": run.path.name}},
    )


def build_optimizer(config: TrainConfig, model: PreTrainedModel, total_steps: int):
    """AdamW (no weight decay on biases and norms) and its linear schedule with warm-up."""
    decay: list[torch.nn.Parameter] = []
    no_decay: list[torch.nn.Parameter] = []
    for _name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": config.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=config.lr,
    )
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    return optimizer, scheduler


# ------------------------------------------------------------------------------------------------------------
# The loop
# ------------------------------------------------------------------------------------------------------------


class TrainLog:
    """Where the loop's records go: train_log.jsonl (on the main process) and the trackers."""

    def __init__(self, accelerator: Accelerator, handle: TextIO | None):
        self.accelerator, self.handle = accelerator, handle

    def write(self, record: dict) -> None:
        if self.handle is not None:
            self.handle.write(json.dumps(record) + "\n")
            self.handle.flush()
        values = {
            k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
        }
        if self.accelerator.trackers and values:
            self.accelerator.log(values, step=record["step"])

    def close(self) -> None:
        if self.handle is not None:
            self.handle.close()


@dataclass
class TrainingLoop:
    """What the optimizer steps and the checkpoints share: the prepared model and optimizer, the schedule, the
    objective's generator, the values logged since the last record and the seconds trained."""

    config: TrainConfig
    accelerator: Accelerator
    schedule: StepSchedule
    model: Any
    optimizer: Any
    scheduler: Any
    generator: torch.Generator
    running: dict[str, list[float]] = field(default_factory=dict)
    elapsed: float = 0.0  # seconds trained before this process started (by the runs it resumes)
    started: float = 0.0  # time.perf_counter() when this process began its steps

    def __post_init__(self) -> None:
        self.trainable = [p for p in self.model.parameters() if p.requires_grad]
        self.device = next(self.model.parameters()).device

    def seconds(self) -> float:
        return self.elapsed + time.perf_counter() - self.started

    def restore(self, resumed: Resumed) -> None:
        scaler = self.accelerator.scaler
        restore_training_state(resumed.tensors, resumed.meta, self.optimizer, self.scheduler, scaler, self.generator)
        self.running, self.elapsed = resumed.meta["running"], resumed.meta["elapsed_seconds"]

    def training_state(self, step: int) -> tuple[dict, dict]:
        """What resuming after `step` needs (`runs.training_state`), with the loop's position and logged values."""
        tensors, meta = training_state(self.optimizer, self.scheduler, self.accelerator.scaler, self.generator)
        meta.update(
            step=step,
            epoch=step // self.schedule.steps_per_epoch,
            total_steps=self.schedule.total_steps,
            steps_per_epoch=self.schedule.steps_per_epoch,
            processes=self.accelerator.num_processes,
            running=self.running,
            elapsed_seconds=self.seconds(),
        )
        return tensors, meta

    def optimizer_step(
        self, step: int, batches: list, collator: BatchCollator | TaggedBatchCollator, objective
    ) -> float | None:
        """Optimizer step `step` over this process's micro-batches of the epoch's order `batches`; the gradient
        norm before clipping (None without clipping)."""
        accumulation, per_step = self.config.grad_accum, self.schedule.micro_batches_per_step
        position = step % self.schedule.steps_per_epoch
        first = position * per_step + self.accelerator.process_index * accumulation
        group = batches[first : first + accumulation]
        for i, indices in enumerate(group):
            torch_seed, objective_seed = micro_batch_seeds(self.config.seed, step * per_step + first % per_step + i)
            torch.manual_seed(torch_seed)
            self.generator.manual_seed(objective_seed)
            batch = {k: v.to(self.device) for k, v in collator(indices).items()}
            ctx = StepContext(self.accelerator, step, i, len(group), self.generator)
            sync = self.accelerator.no_sync(self.model) if i < len(group) - 1 else contextlib.nullcontext()
            with sync:
                logs = objective.micro_step(self.model, batch, ctx)
            for k, v in logs.items():
                self.running.setdefault(k, []).append(float(v))
        grad_norm = None
        if self.config.max_grad_norm > 0:
            grad_norm = float(self.accelerator.clip_grad_norm_(self.trainable, self.config.max_grad_norm))
        self.optimizer.step()
        if not self.accelerator.optimizer_step_was_skipped:  # an fp16 overflow skips the step, and its schedule
            self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        return grad_norm

    def step_record(self, step: int, grad_norm: float | None) -> dict:
        """The train_log.jsonl record after `step`: the values logged since the last record, averaged over the
        micro-batches of every process (every process calls this), which then start again."""
        record = {
            "step": step,
            "epoch": step / self.schedule.steps_per_epoch,
            "lr": self.scheduler.get_last_lr()[0],
            "grad_norm": grad_norm,
            "seconds": self.seconds(),
            **global_means(self.running, self.accelerator, self.device),
        }
        self.running = {}
        return record


@dataclass
class CheckpointSaver:
    """Saves the checkpoint of a step, on the main process: its held-out accuracy, the trained weights, the
    training state a resume needs, a log record, the run's index and the database's checkpoint rows. Only the
    newest checkpoint keeps its training state (it is twice the weights' size)."""

    run: RunDir
    loop: TrainingLoop
    tokenizer: Any
    task: Task
    select_rows: list  # Example, or a token task's TaggedSentence
    db: ResultsDB | None
    log: TrainLog

    def save(self, step: int) -> None:
        if not self.loop.accelerator.is_main_process:
            return
        assert self.db is not None  # opened on the main process
        config, run = self.loop.config, self.run
        model = self.loop.accelerator.unwrap_model(self.loop.model)
        epoch = step / self.loop.schedule.steps_per_epoch
        dev_acc = (
            held_out_score(model, self.tokenizer, self.task, self.select_rows, config.max_length)
            if self.select_rows
            else None
        )
        name = checkpoint_name(step)
        previous = run.last_checkpoint
        checksums = save_checkpoint(
            run, model, name, {"step": step, "epoch": epoch, "dev_accuracy": dev_acc, "run_id": config.run_id}
        )
        run.save_training_state(name, *self.loop.training_state(step))
        self.log.write({"step": step, "epoch": epoch, "dev_accuracy": dev_acc, "checkpoint": name})
        # The index names the checkpoint only once all its files are written: resuming starts from it.
        index = run.record_checkpoint(name, step, epoch, dev_acc, checksums)
        for c in index["checkpoints"]:
            self.db.add_checkpoint(
                f"{config.run_id}/{c['name']}",
                config.run_id,
                c["step"],
                c["epoch"],
                str(run.checkpoint_dir(c["name"])),
                c["dev_accuracy"],
                is_best=c["name"] == index["best"],
                is_last=c["name"] == index["last"],
            )
        if previous is not None and previous["name"] != name:
            run.drop_training_state(previous["name"])

    def stops_early(self) -> bool:
        """Whether the last `patience` checkpoints have not beaten the best held-out accuracy."""
        patience = self.loop.config.patience
        return bool(patience) and checkpoints_without_gain(self.run.index) >= patience


def run_steps(
    loop: TrainingLoop,
    checkpoints: CheckpointSaver,
    data: TokenizedSet | TaggedTokenizedSet,
    collator: BatchCollator | TaggedBatchCollator,
    objective,
    start_step: int,
    resumed: bool,
    show_progress: bool,
) -> tuple[int, bool]:
    """Train from `start_step` to the end of the schedule or an early stop, saving checkpoints on the way and at
    the end; returns (the last step, whether training stopped early)."""
    config, schedule, accelerator = loop.config, loop.schedule, loop.accelerator
    loop.started = time.perf_counter()
    step = start_step
    saved = start_step if resumed else None  # the step of the newest checkpoint on disk
    stopped = checkpoints.stops_early() if resumed else False  # killed after the stop was decided
    loop.model.train()
    bar = tqdm(
        total=schedule.total_steps,
        initial=start_step,
        desc=f"train {config.objective}",
        unit="step",
        disable=not (show_progress and accelerator.is_main_process),
    )
    batches_epoch, batches = None, []
    while step < schedule.total_steps and not stopped:
        epoch = step // schedule.steps_per_epoch
        if epoch != batches_epoch:  # each epoch its own shuffled order
            batches = bucketed_shuffled_batches(data.lengths, config.batch_size, seed=config.seed * 1000 + epoch)
            batches_epoch = epoch
        grad_norm = loop.optimizer_step(step, batches, collator, objective)
        step += 1
        bar.update(1)
        if loop.running.get("loss"):
            bar.set_postfix(loss=f"{np.mean(loop.running['loss'][-20:]):.3f}")
        if step % config.log_every == 0 or step == schedule.total_steps:
            checkpoints.log.write(loop.step_record(step, grad_norm))
        if schedule.saves_before_the_end(step):
            checkpoints.save(step)
            saved = step
            stop = checkpoints.stops_early() if accelerator.is_main_process else False
            stopped = broadcast_flag(accelerator, stop, loop.device)
            loop.model.train()
    bar.close()
    if saved != step:  # a run resumed from its final checkpoint has it already
        checkpoints.save(step)
    return step, stopped


def finish_run(
    run: RunDir, config: TrainConfig, db: ResultsDB | None, log: TrainLog, step: int, stopped: bool, total: int
) -> None:
    """Mark the run trained and finished (main process); a finished run is not resumed, so its last checkpoint's
    training state goes."""
    assert db is not None  # opened on the main process
    db.set_run_status(config.run_id, "trained")
    db.close()
    log.close()
    if stopped:
        print(
            f"{run.path}: stopped early at step {step} of {total}: {config.patience} checkpoint(s) "
            "without a better held-out accuracy",
            file=sys.stderr,
        )
    run.write_state(finished=True, stopped_early=step if stopped else None)
    last_checkpoint = run.last_checkpoint
    assert last_checkpoint is not None  # the final checkpoint, saved above or before a resume
    run.drop_training_state(last_checkpoint["name"])


def _versions() -> dict:
    import accelerate
    import transformers

    import xlgm

    return {
        "xlgm": xlgm.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "accelerate": accelerate.__version__,
    }


def _tracker_config(config: TrainConfig) -> dict:
    """The config as the flat str/int/float/bool values trackers store as hyperparameters."""
    flat = {**asdict(config), "run_id": config.run_id}
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in flat.items()}
