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
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import random
import subprocess
import sys
import time
import typing
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal, cast

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.state import AcceleratorState, GradientState
from accelerate.tracking import GeneralTracker
from accelerate.utils import ProjectConfiguration, parse_flag_from_env, set_seed
from tqdm.auto import tqdm
from transformers import PreTrainedModel, get_linear_schedule_with_warmup

import xlgm.objectives as objectives
from xlgm.core import validation
from xlgm.core.devices import Precision, resolve_device, resolve_precision
from xlgm.core.errors import XlgmError
from xlgm.core.options import check_fields, option
from xlgm.data.batching import MAX_LENGTH, BatchCollator, bucketed_shuffled_batches, tokenize_examples
from xlgm.data.loading import DataSource, load_examples
from xlgm.data.splits import SPLIT_HELP, check_split, group_holdout
from xlgm.data.tasks import Example, Task, get_task, write_run_task
from xlgm.models.load import EMBEDDED, load_classifier, load_tokenizer
from xlgm.objectives.base import StepContext
from xlgm.recipes.evaluate import accuracy
from xlgm.results import ResultsDB, config_hash
from xlgm.runs import (
    CONFIG,
    INIT,
    INIT_HEAD,
    LOG,
    TRACKERS_FOLDER,
    RunDir,
    claim_run_dir,
    clear_run_dir,
    load_checkpoint_into,
    save_checkpoint,
    save_tensors,
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
    task: str = field(default="xnli", metadata=option(help="xnli, pawsx or a task file (a .yaml path)"))
    source_language: str = field(default="en", metadata=option(help="the language trained on"))
    data: str = "bundled"  # bundled | local | hf
    data_dir: str | None = None
    train_split: str = field(default="dev", metadata=option(help=SPLIT_HELP))
    select_split: str = field(
        default="dev",
        metadata=option(
            help="split for checkpoint selection (a held-out part, whole premises, when it equals the train split)"
        ),
    )
    holdout_fraction: float = field(
        default=0.1, metadata=option(help="the held-out part when --select-split is the train split")
    )
    max_train_examples: int | None = field(default=None, metadata=option(help="train on at most N rows (all)"))
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
        check_fields(self)
        validation.one_of("--data", self.data, ("bundled", "local", "hf"))
        check_split(self.train_split)
        check_split(self.select_split)
        holds_dev = self.train_split.startswith("train-minus-test") or (self.data, self.train_split) == (
            "bundled",
            "train",
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


def default_freeze(model: str) -> Freeze:
    """What `--freeze auto` freezes: `word` for the embedded model: AdamW over its 96M word-embedding parameters would dominate a CPU step and
    they are most of its size; `none` for every other model."""
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


def split_train_select(config: TrainConfig, task: Task, rows: list[Example], select_rows: list[Example] | None):
    """Hold out a fixed part of the training rows for selection when both come from the same split: whole
    premises (PAWS-X: sentences) at a time, so no held-out premise is also trained on."""
    if select_rows is not None:
        return rows, select_rows
    if config.holdout_fraction == 0:
        return rows, []
    return group_holdout(task, rows, config.holdout_fraction, HOLDOUT_SEED)


# --report-to: accelerate's trackers, each with the package it needs and the extra that installs it.
TRACKERS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlflow"}


def check_report_to(report_to: str | GeneralTracker | Sequence[str | GeneralTracker] | None) -> list:
    """The trackers to log to: names of `TRACKERS` (a string may be a comma list) or accelerate
    `GeneralTracker` instances. A name whose package is not installed is refused here, before training:
    accelerate would only warn and drop it."""
    from accelerate.utils import is_mlflow_available, is_tensorboard_available, is_wandb_available

    available = {"tensorboard": is_tensorboard_available, "wandb": is_wandb_available, "mlflow": is_mlflow_available}
    items = [report_to] if isinstance(report_to, (str, GeneralTracker)) else list(report_to or ())
    trackers: list = []
    for item in items:
        if isinstance(item, GeneralTracker):
            trackers.append(item)
            continue
        for name in validation.comma_list("--report-to", item):
            if name == "none":
                continue
            validation.one_of("--report-to", name, ("none", *TRACKERS))
            if not available[name]():
                raise XlgmError(
                    f"--report-to {name}: the {TRACKERS[name]} package is not installed (pip install 'xlgm[{name}]')"
                )
            if name not in trackers:
                trackers.append(name)
    return trackers


def _tracker_config(config: TrainConfig) -> dict:
    """The config as the flat str/int/float/bool values trackers store as hyperparameters."""
    flat = {**asdict(config), "run_id": config.run_id}
    return {k: v if isinstance(v, (str, int, float, bool)) else json.dumps(v) for k, v in flat.items()}


def _track(accelerator: Accelerator, record: dict) -> None:
    """A train_log.jsonl record's numbers, to the trackers (if any; on the main process)."""
    values = {
        k: v for k, v in record.items() if k != "step" and isinstance(v, (int, float)) and not isinstance(v, bool)
    }
    if accelerator.trackers and values:
        accelerator.log(values, step=record["step"])


# Variables a launcher sets in each of the processes it starts (torch.distributed.run, accelerate, mpirun).
_LAUNCHED_PROCESS_VARIABLES = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_SIZE",
)


def make_accelerator(
    device: str = "auto", mixed_precision: str = "auto", report_to: list | None = None, run_dir: Path | None = None
) -> Accelerator:
    """An Accelerator on `device` (auto|cpu|cuda|cuda:N|mps) in `mixed_precision` (auto: resolve_precision),
    logging to the trackers `report_to` (checked ones, see `check_report_to`) under RUN/trackers.

    Under a multi-process launcher each process takes the device of its LOCAL_RANK (`--device cuda`), or
    the CPU with gloo (`--device cpu`, or `accelerate launch --cpu`)."""
    processes = int(os.environ.get("WORLD_SIZE", "1"))
    launcher_cpu = parse_flag_from_env("ACCELERATE_USE_CPU")
    wanted = resolve_device("cpu" if device == "auto" and launcher_cpu else device)
    if launcher_cpu and wanted.type != "cpu":
        raise XlgmError(f"--device {device}: the launcher asked for the CPU (accelerate launch --cpu)")
    if processes > 1 and (wanted.index is not None or wanted.type == "mps"):
        raise XlgmError(
            f"--device {device} names one device, but {processes} processes were launched; pass "
            f"--device cuda (each process takes the GPU of its LOCAL_RANK) or --device cpu"
        )
    precision = resolve_precision(mixed_precision, wanted)
    if precision == "fp16" and wanted.type != "cuda":
        raise XlgmError(f"--mixed-precision fp16 needs a CUDA GPU, not {wanted.type}; use bf16 or no")
    if wanted.type == "cuda" and wanted.index is not None:
        torch.cuda.set_device(wanted)
    if not torch.distributed.is_initialized():
        # accelerate keeps its device and precision for the life of the process; a single-process caller
        # (a study, the tests) may train on another device or in another precision next time.
        AcceleratorState._reset_state(reset_partial_state=True)
        GradientState._reset_state()
    tracking = {}
    if report_to:
        if run_dir is None:
            raise XlgmError("--report-to needs the run folder to write the trackers' logs into")
        project = ProjectConfiguration(project_dir=str(run_dir), logging_dir=str(Path(run_dir) / TRACKERS_FOLDER))
        tracking = {"log_with": report_to, "project_config": project}
    accelerator = Accelerator(mixed_precision=precision, cpu=wanted.type == "cpu", **tracking)
    if accelerator.device.type != wanted.type:
        raise XlgmError(f"--device {device}: accelerate placed training on {accelerator.device}")
    return accelerator


def lost_cpu_processes() -> int | None:
    """N when this process was started by `accelerate launch --cpu --num_processes N` with N > 1.

    accelerate's launcher starts several CPU processes only through mpirun (`--mpirun_hostfile`); without it
    `--cpu` starts this one process and DDP never begins. N is read from the launcher's command line."""
    if not parse_flag_from_env("ACCELERATE_USE_CPU") or "MASTER_ADDR" not in os.environ:
        return None  # the launcher sets MASTER_ADDR only when asked for several processes
    if any(name in os.environ for name in _LAUNCHED_PROCESS_VARIABLES):
        return None
    import psutil
    from accelerate.commands.launch import launch_command_parser

    try:
        command = psutil.Process().parent().cmdline()
    except (psutil.Error, AttributeError):
        return None
    starts = [
        i
        for i, part in enumerate(command)
        if part == "launch" or Path(part).name in ("accelerate-launch", "accelerate.commands.launch")
    ]
    if not starts:
        return None
    try:
        with contextlib.redirect_stderr(open(os.devnull, "w")):
            launch = launch_command_parser().parse_args(command[starts[0] + 1 :])
    except SystemExit:
        raise XlgmError(
            "accelerate launch --cpu started one process and its command line could not be read; run "
            "python -m torch.distributed.run --nproc_per_node N -m xlgm.cli train ... instead"
        ) from None
    if (launch.num_machines or 1) > 1:
        raise XlgmError("accelerate launch --cpu on several machines needs mpirun (--mpirun_hostfile)")
    return launch.num_processes if (launch.num_processes or 1) > 1 else None


def relaunch_in_processes(processes: int, argv: list[str]) -> int:
    """Run `xlgm argv` in `processes` CPU processes with torch.distributed.run; its exit code."""
    print(
        f"xlgm: accelerate launch --cpu starts one process; starting {processes} with torch.distributed.run",
        file=sys.stderr,
    )
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node",
        str(processes),
        "--master_addr",
        os.environ["MASTER_ADDR"],
        "--master_port",
        os.environ.get("MASTER_PORT", "29500"),
        "-m",
        "xlgm.cli",
        *argv,
    ]
    return subprocess.call(command)


def micro_batch_seeds(seed: int, index: int) -> tuple[int, int]:
    """Seeds of the global RNG (dropout) and of the objective's generator for global micro-batch `index`."""
    torch_seed, objective_seed = np.random.SeedSequence([seed, index]).generate_state(2, dtype=np.uint64)
    return int(torch_seed), int(objective_seed)


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
    run = RunDir(Path(run_dir))
    mode = claim_run_dir(run.path, asdict(config), config.run_id, resume=resume, overwrite=overwrite)
    _wait_for_everyone(accelerator)  # every process has looked at the folder before it changes
    if mode == "finished":
        if main and show_progress:
            print(f"{run.path}: the run finished before; nothing to resume", file=sys.stderr)
        return run.path
    if main:
        if mode == "new":
            clear_run_dir(run.path)
        run.path.mkdir(parents=True, exist_ok=True)
    _wait_for_everyone(accelerator)
    set_seed(config.seed)

    rows = load_examples(task, config.train_split, config.source_language, config.source, config.max_train_examples)
    select = None
    if config.select_split != config.train_split:
        select = load_examples(task, config.select_split, config.source_language, config.source)
    train_rows, select_rows = split_train_select(config, task, rows, select)

    tokenizer = load_tokenizer(config.model)
    set_seed(config.seed)  # the head's initialisation depends on the seed alone
    model, new_parameters = load_classifier(config.model, task.num_labels, task.label_names, return_new=True)
    frozen = freeze_parameters(model, config.freeze)
    if objective is None:
        options = dict(config.objective_options)
        if "max_length" in objectives.config_fields(config.objective):  # MVR re-tokenizes with the loop's max_length
            options.setdefault("max_length", config.max_length)
        objective = objectives.build_objective(
            config.objective, task=config.task, batch_size=config.batch_size, **options
        )

    processes, accumulation = accelerator.num_processes, config.grad_accum
    per_step = accumulation * processes  # micro-batches of one optimizer step, all processes together
    data = tokenize_examples(tokenizer, train_rows, config.max_length)
    micro_per_epoch = math.ceil(len(data) / config.batch_size)
    if processes > 1 and micro_per_epoch < per_step:
        raise XlgmError(
            f"{len(data)} training rows make {micro_per_epoch} micro-batches of {config.batch_size}, "
            f"fewer than one step of {processes} processes x --grad-accum {accumulation} needs"
        )
    steps_per_epoch = max(1, micro_per_epoch // per_step)
    total_steps = max(1, int(round(steps_per_epoch * config.epochs)))
    session = {
        "device": str(accelerator.device),
        "processes": processes,
        "mixed_precision": accelerator.mixed_precision,
    }

    start_step, resumed = 0, None
    if mode == "resume":
        recorded = run.state or {}
        for key in ("processes", "mixed_precision"):
            if key in recorded and recorded[key] != session[key]:
                raise XlgmError(
                    f"{run.path}: the run trained with {key} {recorded[key]}, this process has "
                    f"{session[key]}; resume it with the same"
                )
        if run.config.get("num_train") != len(train_rows):
            raise XlgmError(
                f"{run.path}: the run trained on {run.config.get('num_train')} rows, the data now "
                f"gives {len(train_rows)}; the training data changed since"
            )
        last = run.last_checkpoint
        if last is not None:
            if not run.has_training_state(last["name"]):
                raise XlgmError(f"{run.checkpoint_dir(last['name'])}: no training state to resume from")
            load_checkpoint_into(model, run.checkpoint_dir(last["name"]))
            resumed = run.load_training_state(last["name"])
            start_step = resumed[1]["step"]
            if resumed[1]["total_steps"] != total_steps:
                raise XlgmError(
                    f"{run.path}: the run has {resumed[1]['total_steps']} steps, this config {total_steps} here"
                )

    if main:
        if mode == "new":  # config.json last: a folder holds a run once its config is there
            run.write_state(run_id=config.run_id, finished=False, resumed_at=[], **session)
            write_run_task(task, run.path)
            head = {n: p for n, p in model.named_parameters() if n in new_parameters}
            save_tensors(head, run.path / INIT_HEAD)
            write_json(run.path / INIT, {"model": config.model, "head": INIT_HEAD, "head_parameters": sorted(head)})
            write_json(
                run.path / CONFIG,
                {
                    **asdict(config),
                    "run_id": config.run_id,
                    "num_train": len(train_rows),
                    "num_select": len(select_rows),
                    "frozen_parameters": frozen,
                    "versions": _versions(),
                },
            )
        else:
            run.rewind(start_step)
            run.write_state(resumed_at=[*(run.state or {}).get("resumed_at", []), start_step], **session)

    if trackers:
        accelerator.init_trackers(
            "xlgm",
            config=_tracker_config(config),
            init_kwargs={"wandb": {"name": run.path.name}, "mlflow": {"run_name": run.path.name}},
        )
    collator = BatchCollator(tokenizer, data)
    objective.setup(model, tokenizer, train_rows)

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
    # The scheduler is not prepared: accelerate's AcceleratedScheduler steps it once per process on each
    # optimizer step (split_batches=False), and the loop's steps are already global.
    model, optimizer = accelerator.prepare(model, optimizer)
    generator = torch.Generator().manual_seed(config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]
    batch_device = next(model.parameters()).device
    running: dict[str, list[float]] = {}
    elapsed = 0.0
    if resumed is not None:
        tensors, meta = resumed
        restore_training_state(tensors, meta, optimizer, scheduler, accelerator.scaler, generator)
        running, elapsed = meta["running"], meta["elapsed_seconds"]

    db = ResultsDB(db_path or run.path / "results.sqlite") if main else None
    if db:
        db.add_run(config.run_id, asdict(config), str(run.path), status="training")
    log = (run.path / LOG).open("a") if main else None
    start = time.perf_counter()

    def evaluate_and_save(step: int) -> None:
        epoch = step / steps_per_epoch
        if not main:
            return
        assert db is not None  # opened on the main process
        dev_acc = (
            accuracy(accelerator.unwrap_model(model), tokenizer, select_rows, config.max_length)
            if select_rows
            else None
        )
        name = f"step-{step:06d}"
        previous = run.last_checkpoint
        save_checkpoint(
            run,
            accelerator.unwrap_model(model),
            name,
            {"step": step, "epoch": epoch, "dev_accuracy": dev_acc, "run_id": config.run_id},
        )
        tensors, meta = training_state(optimizer, scheduler, accelerator.scaler, generator)
        meta.update(
            step=step,
            epoch=step // steps_per_epoch,
            total_steps=total_steps,
            steps_per_epoch=steps_per_epoch,
            processes=processes,
            running=running,
            elapsed_seconds=elapsed + time.perf_counter() - start,
        )
        run.save_training_state(name, tensors, meta)
        record = {"step": step, "epoch": epoch, "dev_accuracy": dev_acc, "checkpoint": name}
        _log(log, record)
        _track(accelerator, record)
        # The index names the checkpoint only once all its files are written: resuming starts from it.
        index = run.record_checkpoint(name, step, epoch, dev_acc)
        for c in index["checkpoints"]:
            db.add_checkpoint(
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

    def stops_early() -> bool:
        return bool(config.patience) and checkpoints_without_gain(run.index) >= config.patience

    step = start_step
    saved = start_step if resumed is not None else None  # the step of the newest checkpoint on disk
    stopped = stops_early() if resumed is not None else False  # killed after the stop was decided
    model.train()
    bar = tqdm(
        total=total_steps,
        initial=start_step,
        desc=f"train {config.objective}",
        unit="step",
        disable=not (show_progress and main),
    )
    schedule_epoch, batches = None, []
    while step < total_steps and not stopped:
        epoch, position = divmod(step, steps_per_epoch)
        if epoch != schedule_epoch:
            batches = bucketed_shuffled_batches(data.lengths, config.batch_size, seed=config.seed * 1000 + epoch)
            schedule_epoch = epoch
        first = position * per_step + accelerator.process_index * accumulation
        group = batches[first : first + accumulation]
        for i, indices in enumerate(group):
            torch_seed, objective_seed = micro_batch_seeds(config.seed, step * per_step + first % per_step + i)
            torch.manual_seed(torch_seed)
            generator.manual_seed(objective_seed)
            batch = {k: v.to(batch_device) for k, v in collator(indices).items()}
            ctx = StepContext(accelerator, step, i, len(group), generator)
            sync = accelerator.no_sync(model) if i < len(group) - 1 else contextlib.nullcontext()
            with sync:
                logs = objective.micro_step(model, batch, ctx)
            for k, v in logs.items():
                running.setdefault(k, []).append(float(v))
        grad_norm = None
        if config.max_grad_norm > 0:
            grad_norm = float(accelerator.clip_grad_norm_(trainable, config.max_grad_norm))
        optimizer.step()
        if not accelerator.optimizer_step_was_skipped:  # an fp16 overflow skips the step, and its schedule
            scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        step += 1
        bar.update(1)
        if running.get("loss"):
            bar.set_postfix(loss=f"{np.mean(running['loss'][-20:]):.3f}")
        if step % config.log_every == 0 or step == total_steps:
            record = {
                "step": step,
                "epoch": step / steps_per_epoch,
                "lr": scheduler.get_last_lr()[0],
                "grad_norm": grad_norm,
                "seconds": elapsed + time.perf_counter() - start,
                **_global_means(running, accelerator, batch_device),
            }
            _log(log, record)
            _track(accelerator, record)
            running = {}
        if config.save_every and step % config.save_every == 0 and step < total_steps:
            evaluate_and_save(step)
            saved = step
            stopped = _broadcast_flag(accelerator, stops_early() if main else False, batch_device)
            model.train()
    bar.close()
    if saved != step:  # a run resumed from its final checkpoint has it already
        evaluate_and_save(step)
    if main:
        assert db is not None and log is not None  # opened on the main process
        db.set_run_status(config.run_id, "trained")
        db.close()
        log.close()
        if stopped:
            print(
                f"{run.path}: stopped early at step {step} of {total_steps}: {config.patience} checkpoint(s) "
                "without a better held-out accuracy",
                file=sys.stderr,
            )
        run.write_state(finished=True, stopped_early=step if stopped else None)
        last_checkpoint = run.last_checkpoint
        assert last_checkpoint is not None  # the final checkpoint, saved above or before a resume
        run.drop_training_state(last_checkpoint["name"])  # a finished run is not resumed
    if trackers:
        accelerator.end_training()
    _wait_for_everyone(accelerator)
    return run.path


def _broadcast_flag(accelerator: Accelerator, flag: bool, device: torch.device) -> bool:
    """The main process's decision, on every process (only it evaluates the held-out rows)."""
    if accelerator.num_processes == 1:
        return flag
    value = torch.tensor([1.0 if flag else 0.0], device=device)
    torch.distributed.broadcast(value, src=0)
    return bool(value.item())


def _wait_for_everyone(accelerator: Accelerator) -> None:
    """A barrier. accelerate's hands gloo a GPU ordinal too (device_ids=[local rank]), which fails on a
    machine with fewer GPUs than CPU processes ("invalid device ordinal")."""
    if accelerator.num_processes == 1:
        return
    if accelerator.device.type == "cpu":
        torch.distributed.barrier()
    else:
        accelerator.wait_for_everyone()


def _global_means(running: dict[str, list[float]], accelerator: Accelerator, device: torch.device) -> dict:
    """Each logged value's mean over the micro-batches of every process (every process calls this with
    the same keys: one objective, the same micro-batches per step)."""
    keys = sorted(running)
    if accelerator.num_processes == 1:
        return {k: float(np.mean(running[k])) for k in keys}
    sums = torch.tensor([[sum(running[k]), len(running[k])] for k in keys], dtype=torch.float64, device=device)
    sums = accelerator.reduce(sums, reduction="sum").cpu().tolist()
    return {k: total / count for k, (total, count) in zip(keys, sums)}


def _log(handle, record: dict) -> None:
    if handle is not None:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


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
