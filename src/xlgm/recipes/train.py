"""Fine-tune a classifier on the source language: `xlgm train`.

Built on `accelerate`, so `accelerate launch -m xlgm.cli train ...` runs the same loop on several GPUs
(DDP) and `--mixed-precision` picks fp16/bf16 where the device has it. The loop owns AdamW, the linear
schedule with warm-up, clipping and accumulation; what one micro-batch does (plain cross-entropy, SAM,
Fisher Penalty, MVR) is the objective's business (see objectives/base.py).
"""

from __future__ import annotations

import contextlib
import json
import math
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import set_seed
from tqdm.auto import tqdm
from transformers import get_linear_schedule_with_warmup

from xlgm.data.batching import BatchCollator, bucketed_shuffled_batches, tokenize_examples
from xlgm.data.loading import DataSource, load_examples
from xlgm.data.tasks import Example, get_task
from xlgm.errors import XlgmError
from xlgm.models.load import load_classifier, load_tokenizer
from xlgm.objectives.base import StepContext
from xlgm.recipes.evaluate import accuracy
from xlgm.results import ResultsDB, config_hash
from xlgm.runs import INIT, INIT_HEAD, CONFIG, RunDir, save_checkpoint, save_tensors, write_json

FREEZE_CHOICES = ("none", "word", "embeddings")
# Held-out rows for checkpoint selection are drawn with a fixed seed, not the run's, so every run of a
# study selects on the same rows.
HOLDOUT_SEED = 1234


@dataclass(frozen=True)
class TrainConfig:
    model: str = "embedded"
    task: str = "xnli"
    source_language: str = "en"
    data: str = "bundled"  # bundled | local | hf
    data_dir: str | None = None
    train_split: str = "dev"
    select_split: str = "dev"
    holdout_fraction: float = 0.1  # used when train_split == select_split
    max_train_examples: int | None = None
    max_length: int = 128
    epochs: float = 1.0
    batch_size: int = 32  # micro-batch, per process
    grad_accum: int = 1
    lr: float = 1e-4  # suits the small embedded model; the paper's mBERT runs use 2e-5 (studies/)
    weight_decay: float = 0.01
    warmup_ratio: float = 0.1
    max_grad_norm: float = 1.0
    seed: int = 0
    mixed_precision: str = "auto"  # auto | no | fp16 | bf16
    freeze: str = "none"  # none | word (word embeddings) | embeddings (all embedding parameters)
    save_every: int = 0  # steps between checkpoints; 0 = only the last
    log_every: int = 10
    objective: str = "adamw"
    objective_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        checks = [
            (self.epochs > 0, "epochs must be > 0"),
            (self.batch_size >= 1, "batch_size must be >= 1"),
            (self.grad_accum >= 1, "grad_accum must be >= 1"),
            (self.lr > 0, "lr must be > 0"),
            (0 <= self.warmup_ratio < 1, "warmup_ratio must be in [0, 1)"),
            (0 <= self.holdout_fraction < 1, "holdout_fraction must be in [0, 1)"),
            (self.max_grad_norm >= 0, "max_grad_norm must be >= 0 (0 disables clipping)"),
            (self.save_every >= 0, "save_every must be >= 0"),
            (self.freeze in FREEZE_CHOICES, f"freeze must be one of {FREEZE_CHOICES}"),
            (self.mixed_precision in ("auto", "no", "fp16", "bf16"), "mixed_precision must be auto/no/fp16/bf16"),
        ]
        for ok, message in checks:
            if not ok:
                raise XlgmError(message)

    @property
    def run_id(self) -> str:
        return config_hash(self)

    @property
    def source(self) -> DataSource:
        return DataSource(self.data, self.data_dir)


def resolve_mixed_precision(choice: str) -> str:
    if choice != "auto":
        return choice
    if torch.cuda.is_available():
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "no"


def freeze_parameters(model: torch.nn.Module, what: str) -> int:
    """Freeze word embeddings or all embeddings; returns the number of frozen parameters."""
    if what == "none":
        return 0
    frozen = 0
    emb = model.get_input_embeddings()
    targets = [emb.weight] if what == "word" else []
    if what == "embeddings":
        targets = [p for n, p in model.named_parameters() if "embed" in n or p is emb.weight]
    for p in targets:
        p.requires_grad_(False)
        frozen += p.numel()
    return frozen


def split_train_select(config: TrainConfig, rows: list[Example], select_rows: list[Example] | None):
    """Hold out a fixed slice of the training rows for selection when both come from the same split."""
    if select_rows is not None:
        return rows, select_rows
    if config.holdout_fraction == 0:
        return rows, []
    order = list(range(len(rows)))
    random.Random(HOLDOUT_SEED).shuffle(order)
    n_hold = max(1, int(round(len(rows) * config.holdout_fraction)))
    hold = set(order[:n_hold])
    return [r for i, r in enumerate(rows) if i not in hold], [rows[i] for i in sorted(hold)]


def train(config: TrainConfig, run_dir: str | Path, show_progress: bool = True, db_path: str | Path | None = None,
          objective=None, device: str | torch.device = "auto") -> Path:
    """Train and write the run directory; returns its path. `device`: auto, cpu, cuda or cuda:N (one process)."""
    from xlgm.core.devices import resolve_device

    task = get_task(config.task)
    if config.source_language not in task.languages:
        raise XlgmError(f"unknown source language {config.source_language!r} for {task.name}")
    device = resolve_device(str(device))
    if device.type == "cuda" and device.index is not None:
        torch.cuda.set_device(device)  # accelerate's one-process device is `cuda`, the current one
    run = RunDir(Path(run_dir))
    run.path.mkdir(parents=True, exist_ok=True)
    precision = config.mixed_precision if config.mixed_precision != "auto" or device.type == "cuda" else "no"
    accelerator = Accelerator(mixed_precision=resolve_mixed_precision(precision), cpu=device.type == "cpu")
    set_seed(config.seed)

    rows = load_examples(task, config.train_split, config.source_language, config.source, config.max_train_examples)
    select = None
    if config.select_split != config.train_split:
        select = load_examples(task, config.select_split, config.source_language, config.source)
    train_rows, select_rows = split_train_select(config, rows, select)

    tokenizer = load_tokenizer(config.model)
    set_seed(config.seed)  # the head's initialisation depends on the seed alone
    model, new_parameters = load_classifier(config.model, task.num_labels, task.label_names, return_new=True)
    frozen = freeze_parameters(model, config.freeze)
    if objective is None:
        from xlgm.objectives import build_objective, config_fields

        options = dict(config.objective_options)
        if "max_length" in config_fields(config.objective):  # MVR re-tokenizes with the loop's max_length
            options.setdefault("max_length", config.max_length)
        objective = build_objective(config.objective, **options)

    if accelerator.is_main_process:
        write_json(run.path / CONFIG, {**asdict(config), "run_id": config.run_id, "num_train": len(train_rows),
                                        "num_select": len(select_rows), "frozen_parameters": frozen,
                                        "versions": _versions()})
        head = {n: p for n, p in model.named_parameters() if n in new_parameters}
        save_tensors(head, run.path / INIT_HEAD)
        write_json(run.path / INIT, {"model": config.model, "head": INIT_HEAD, "head_parameters": sorted(head)})

    data = tokenize_examples(tokenizer, train_rows, config.max_length)
    collator = BatchCollator(tokenizer, data)
    objective.setup(model, tokenizer, train_rows)

    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if p.requires_grad:
            (no_decay if p.ndim < 2 else decay).append(p)
    optimizer = torch.optim.AdamW([{"params": decay, "weight_decay": config.weight_decay},
                                   {"params": no_decay, "weight_decay": 0.0}], lr=config.lr)
    micro_per_epoch = math.ceil(len(data) / config.batch_size / accelerator.num_processes)
    steps_per_epoch = max(1, micro_per_epoch // config.grad_accum)
    total_steps = max(1, int(round(steps_per_epoch * config.epochs)))
    scheduler = get_linear_schedule_with_warmup(optimizer, int(config.warmup_ratio * total_steps), total_steps)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    generator = torch.Generator().manual_seed(config.seed)
    trainable = [p for p in model.parameters() if p.requires_grad]

    db = ResultsDB(db_path or run.path / "results.sqlite") if accelerator.is_main_process else None
    if db:
        db.add_run(config.run_id, asdict(config), str(run.path), status="training")
    log = (run.path / "train_log.jsonl").open("a") if accelerator.is_main_process else None

    def evaluate_and_save(step: int, epoch: float, last: bool) -> float | None:
        dev_acc = None
        if select_rows:
            dev_acc = accuracy(accelerator.unwrap_model(model), tokenizer, select_rows, config.max_length)
        if accelerator.is_main_process:
            name = f"step-{step:06d}"
            save_checkpoint(run, accelerator.unwrap_model(model), name,
                            {"step": step, "epoch": epoch, "dev_accuracy": dev_acc, "run_id": config.run_id})
            index = run.record_checkpoint(name, step, epoch, dev_acc, last)
            for c in index["checkpoints"]:
                db.add_checkpoint(f"{config.run_id}/{c['name']}", config.run_id, c["step"], c["epoch"],
                                  str(run.checkpoint_dir(c["name"])), c["dev_accuracy"],
                                  is_best=c["name"] == index["best"], is_last=c["name"] == index["last"])
            _log(log, {"step": step, "epoch": epoch, "dev_accuracy": dev_acc, "checkpoint": name})
        return dev_acc

    step, start = 0, time.perf_counter()
    model.train()
    bar = tqdm(total=total_steps, desc=f"train {config.objective}", unit="step",
               disable=not (show_progress and accelerator.is_main_process))
    running: dict[str, list[float]] = {}
    epoch = 0
    while step < total_steps:
        batches = bucketed_shuffled_batches(data.lengths, config.batch_size, seed=config.seed * 1000 + epoch)
        batches = batches[accelerator.process_index::accelerator.num_processes][:steps_per_epoch * config.grad_accum]
        for first in range(0, len(batches), config.grad_accum):
            if step >= total_steps:
                break
            group = batches[first:first + config.grad_accum]
            for i, indices in enumerate(group):
                batch = {k: v.to(accelerator.device) for k, v in collator(indices).items()}
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
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            bar.update(1)
            if running.get("loss"):
                bar.set_postfix(loss=f"{np.mean(running['loss'][-20:]):.3f}")
            if step % config.log_every == 0 or step == total_steps:
                _log(log, {"step": step, "epoch": step / steps_per_epoch, "lr": scheduler.get_last_lr()[0],
                           "grad_norm": grad_norm, "seconds": time.perf_counter() - start,
                           **{k: float(np.mean(v)) for k, v in running.items()}})
                running = {}
            if config.save_every and step % config.save_every == 0 and step < total_steps:
                evaluate_and_save(step, step / steps_per_epoch, last=False)
                model.train()
        epoch += 1
    bar.close()
    evaluate_and_save(step, step / steps_per_epoch, last=True)
    if db:
        db.set_run_status(config.run_id, "trained")
        db.close()
    if log:
        log.close()
    accelerator.wait_for_everyone()
    return run.path


def _log(handle, record: dict) -> None:
    if handle is not None:
        handle.write(json.dumps(record) + "\n")
        handle.flush()


def _versions() -> dict:
    import accelerate
    import transformers

    import xlgm

    return {"xlgm": xlgm.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
            "accelerate": accelerate.__version__}
