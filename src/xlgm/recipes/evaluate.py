"""Zero-shot evaluation: accuracy of one model on every language of a task.

Fast by construction: each language is tokenized once, batches are sorted by length and padded only to
their longest member, and the forward passes run under `torch.inference_mode` (and, when asked, autocast:
bf16/fp16 matrix products, float32 logits). Batches go to whichever device the model is on.
"""

from __future__ import annotations

import math
import time
import typing
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from xlgm.core import validation
from xlgm.core.devices import Precision, autocast
from xlgm.core.errors import XlgmError
from xlgm.core.files import write_json
from xlgm.core.machine import machine_record
from xlgm.core.options import check_fields, option
from xlgm.core.tensors import model_inputs
from xlgm.core.types import TextOutputs as TextOutputs  # re-exported: what `predict_outputs` returns
from xlgm.data.batching import MAX_LENGTH, BatchCollator, TokenizedSet, length_sorted_batches, tokenize_examples
from xlgm.data.loading import DataSource, load_examples
from xlgm.data.splits import Split
from xlgm.data.tasks import TASKS, Example, Task, check_task

SPLITS: tuple[str, ...] = typing.get_args(Split)
CHECKPOINT_CHOICES = ("best", "last")
TASK_HELP = f"a task name ({', '.join(TASKS)}) or a task file, path/to/task.yaml (default: the run's task, else xnli)"
MAX_LENGTH_HELP = "tokens a row is cut to: at least 8, at most the model's positions"
DEVICE_HELP = "auto (a CUDA GPU, else MPS, else the CPU), cpu, cuda, cuda:N or mps"


@dataclass(frozen=True)
class EvaluateConfig:
    """What `xlgm evaluate` does with a TARGET. Every field is checked when the config is made (errors name
    the command-line flag); the maximum length is checked against the model's positions once it is loaded.
    The fields with help are `xlgm evaluate`'s flags (xlgm.core.options)."""

    task: str | None = field(default=None, metadata=option(help=TASK_HELP))
    languages: tuple[str, ...] | None = None  # None: every language of the task
    # None: the task's evaluation split (`Task.evaluation_split`)
    split: Split | None = field(
        default=None,
        metadata=option(
            help="the split of every language evaluated (default: the task's evaluation split: test, dev for "
            "PAN-X, whose test files have no labels)"
        ),
    )
    checkpoint: Literal["best", "last"] = field(default="best", metadata=option(help="which checkpoint of a run"))
    max_examples: int | None = field(default=None, metadata=option(help="at most N (>= 1) examples per language"))
    batch_size: int = field(default=64, metadata=option(help="rows a forward pass"))
    max_length: int = field(default=MAX_LENGTH, metadata=option(help=MAX_LENGTH_HELP))
    source: DataSource = field(default_factory=DataSource)
    device: str = field(default="auto", metadata=option(help=DEVICE_HELP))
    mixed_precision: Precision = field(
        default="auto",
        metadata=option(
            help="autocast of the forward passes; auto: bf16 on a GPU or on a CPU with native bf16 (AMX, "
            "AVX512-BF16), else fp32"
        ),
    )

    def __post_init__(self) -> None:
        v, flag = validation, validation.flag
        if self.task is not None:
            check_task(flag("task"), self.task)
        if self.languages is not None:
            object.__setattr__(self, "languages", tuple(v.non_empty_list(flag("languages"), list(self.languages))))
        check_fields(self)  # split, checkpoint, max_examples, batch_size, max_length, device, mixed_precision


def pooled_hidden(outputs, attention_mask: torch.Tensor, layer: int) -> torch.Tensor:
    """Mean of the encoder's hidden states at `layer` over non-padding tokens (encoder-decoder models: the
    encoder's)."""
    states = getattr(outputs, "hidden_states", None) or getattr(outputs, "encoder_hidden_states", None)
    if states is None:
        raise XlgmError("the model returned no hidden states; it cannot give sentence embeddings")
    hidden = states[layer].float()
    mask = attention_mask.unsqueeze(-1).to(hidden.dtype)
    return (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)


@torch.inference_mode()
def predict_outputs(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TokenizedSet,
    batch_size: int = 64,
    progress: tqdm | None = None,
    embeddings: bool = False,
    layer: int = -1,
    language: str = "",
    precision: str = "no",
) -> TextOutputs:
    """Logits (and, with `embeddings`, mean-pooled hidden states at `layer`) for every example, from one
    forward pass per length-sorted batch on the model's device, in the original order; float32 whatever
    the `precision` (a resolved one: no, fp16, bf16) of the forward pass. The model is left in the mode it
    was in."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    collator = BatchCollator(tokenizer, data)
    num_labels: int = model.config.num_labels  # type: ignore[assignment]  # always set on a classifier config
    logits_out = np.zeros((len(data), num_labels), dtype=np.float32)
    emb_out: np.ndarray | None = None
    try:
        for indices in length_sorted_batches(data.lengths, batch_size):
            batch = {k: v.to(device) for k, v in model_inputs(collator(indices)).items()}
            with autocast(precision, device):
                out = model(**batch, output_hidden_states=embeddings)
            logits_out[indices] = out.logits.float().cpu().numpy()
            if embeddings:
                pooled = pooled_hidden(out, batch["attention_mask"], layer).cpu().numpy()
                if emb_out is None:
                    emb_out = np.zeros((len(data), pooled.shape[1]), dtype=np.float32)
                emb_out[indices] = pooled
            if progress is not None:
                progress.update(len(indices))
    finally:
        model.train(was_training)
    return TextOutputs(language, logits_out, emb_out, np.asarray(data.labels, dtype=np.int64))


def model_device(model: torch.nn.Module) -> torch.device:
    """Where the model's weights are: its inputs go there."""
    return next(model.parameters()).device


def predict_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TokenizedSet,
    batch_size: int = 64,
    progress: tqdm | None = None,
    precision: str = "no",
) -> np.ndarray:
    """Logits for every example, in the original order (float32)."""
    return predict_outputs(model, tokenizer, data, batch_size, progress, precision=precision).logits


def accuracy(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    examples: Sequence[Example],
    max_length: int = MAX_LENGTH,
    batch_size: int = 64,
    precision: str = "no",
) -> float:
    data = tokenize_examples(tokenizer, examples, max_length)
    logits = predict_logits(model, tokenizer, data, batch_size, precision=precision)
    return float((logits.argmax(-1) == np.asarray(data.labels)).mean())


def evaluate_languages(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    languages: Sequence[str],
    source: DataSource = DataSource(),
    split: str = "test",
    max_examples: int | None = None,
    max_length: int = MAX_LENGTH,
    batch_size: int = 64,
    show_progress: bool = True,
    examples: dict[str, list[Example]] | None = None,
    precision: str = "no",
    embeddings: bool = False,
    layer: int = -1,
    on_language: Callable[[str, TextOutputs, float, float], None] | None = None,
    desc: str = "evaluate",
    leave: bool = True,
) -> dict:
    """The evaluation stage on one loaded model: accuracy per language, the mean over target languages and each
    language's gap to the source, with the machine that computed them (`xlgm.core.machine`).

    `examples` (language -> rows) skips reading the files again when the caller already has them;
    `precision` (no, fp16, bf16) is the autocast of the forward passes. `on_language(language, outputs, seconds,
    accuracy)` is called as each language finishes, with its logits (and, with `embeddings`, its sentence
    embeddings at `layer`): a study keeps them and records each language as it is done.
    """
    per_language = examples or load_languages(task, languages, source, split, max_examples)

    def score(lang: str, rows: list[Example], bar: tqdm) -> tuple[dict, TextOutputs, float]:
        data = tokenize_examples(tokenizer, rows, max_length)
        outputs = predict_outputs(
            model,
            tokenizer,
            data,
            batch_size,
            bar,
            embeddings=embeddings,
            layer=layer,
            language=lang,
            precision=precision,
        )
        acc = float((outputs.logits.argmax(-1) == np.asarray(data.labels)).mean()) if len(data) else math.nan
        return {"accuracy": acc, "num_examples": len(rows)}, outputs, acc

    bar = dict(total=sum(len(rows) for rows in per_language.values()), unit="ex", desc=desc, leave=leave)
    return evaluate_each_language(
        model, task, per_language, score, split, source, precision, bar, show_progress, on_language
    )


# Scores one language's rows, advancing the progress bar: (its row of the report, its outputs for `on_language`
# or None, the value of the task's metric).
LanguageScorer = Callable[[str, list, tqdm], tuple[dict, "TextOutputs | None", float]]


def evaluate_each_language(
    model: PreTrainedModel,
    task: Task,
    per_language: dict[str, list],
    score: LanguageScorer,
    split: str,
    source: DataSource,
    precision: str,
    bar: dict,
    show_progress: bool = True,
    on_language: Callable[[str, TextOutputs, float, float], None] | None = None,
) -> dict:
    """The evaluation loop of every kind of task: each language scored in turn under one progress bar (`bar`:
    tqdm's total, unit, desc and leave), `on_language(language, outputs, seconds, value)` as each finishes, then
    the report: per language, the mean over the targets and each target's gap to the source, the machine and the
    time."""
    results: dict[str, dict] = {}
    start = time.perf_counter()
    with tqdm(**bar, disable=not show_progress) as progress:
        for lang, rows in per_language.items():
            progress.set_postfix_str(lang)
            began = time.perf_counter()
            results[lang], outputs, value = score(lang, rows, progress)
            if on_language is not None and outputs is not None:
                on_language(lang, outputs, time.perf_counter() - began, value)
    seconds = time.perf_counter() - start
    device = model_device(model)
    return {
        "task": task.name,
        "split": split,
        "data": source.describe(),
        "languages": results,
        **summarize(results, task.source_language),
        "device": str(device),
        "precision": precision,
        "machine": machine_record(device, precision),
        "seconds": seconds,
        "examples_per_second": sum(len(rows) for rows in per_language.values()) / seconds if seconds else None,
    }


def load_languages(
    task: Task,
    languages: Sequence[str],
    source: DataSource = DataSource(),
    split: str = "test",
    max_examples: int | None = None,
) -> dict[str, list[Example]]:
    """Every language's rows, read (and validated) up front: a bad file fails before any model work."""
    return {lang: load_examples(task, split, lang, source, max_examples) for lang in languages}


def summarize(results: dict[str, dict], source_language: str) -> dict:
    targets = [lang for lang in results if lang != source_language]
    src = results.get(source_language, {}).get("accuracy")
    return {
        "source_language": source_language,
        "source_accuracy": src,
        "target_mean_accuracy": float(np.mean([results[t]["accuracy"] for t in targets])) if targets else None,
        "gap_to_source": {t: src - results[t]["accuracy"] for t in targets} if src is not None else {},
    }


def format_table(report: dict) -> str:
    lines = [f"{'lang':<6}{'acc':>8}{'gap':>8}{'n':>7}"]
    gaps = report.get("gap_to_source", {})
    for lang, r in report["languages"].items():
        gap = f"{gaps[lang]:+8.3f}" if lang in gaps else f"{'':>8}"
        lines.append(f"{lang:<6}{r['accuracy']:8.3f}{gap}{r['num_examples']:7d}")
    if report.get("target_mean_accuracy") is not None:
        lines.append(f"mean of targets {report['target_mean_accuracy']:.3f}")
    return "\n".join(lines)


def write_report(report: dict, path: Path) -> None:
    write_json(path, report, sort_keys=False)
