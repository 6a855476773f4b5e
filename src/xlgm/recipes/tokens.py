"""Token tasks (UD-POS, PAN-X) in the train and evaluate stages: predictions on words and the task's metric.

A token task's rows are tagged sentences (`xlgm.data.tagging`): each word's tag sits on its first subword, and
a sentence longer than `max_length` is split into windows of whole words, one model row each. Logits come back
per row ([length, num_labels], unpadded), are mapped back to words (`word_outputs`) and scored with the task's
metric (`analysis.token_metrics`): token accuracy with a Wilson interval (UD-POS) or entity F1 with a
bootstrap over sentences (PAN-X). What tokenizing did to the words (`AlignmentCounts`) goes with every score.

An evaluation report has the shape of a sentence-pair one (`recipes/evaluate.py`): each language's
`accuracy` holds the value of the task's metric, and the report says which (`metric`), so the results
database, the mean over targets and the gaps read it as they read accuracy.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import asdict

import numpy as np
import torch
from tqdm.auto import tqdm
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from xlgm.analysis.token_metrics import WordScore, score_words
from xlgm.core.devices import autocast
from xlgm.core.tensors import model_inputs
from xlgm.core.types import TaggedSentence, TextOutputs
from xlgm.data.batching import MAX_LENGTH, length_sorted_batches
from xlgm.data.loading import DataSource, load_tagged_sentences
from xlgm.data.tagging import AlignmentCounts, TaggedBatchCollator, TaggedTokenizedSet, tokenize_tagged, word_outputs
from xlgm.data.tasks import Task
from xlgm.recipes.evaluate import (
    evaluate_each_language,
    evaluate_languages,
    load_languages,
    model_device,
    pooled_hidden,
)


def evaluation_stage(task: Task) -> tuple[Callable[..., dict], Callable[..., dict]]:
    """(read every language's rows, evaluate them) for the task: words scored with the task's metric here, or
    sentence pairs by accuracy (`recipes.evaluate`); both take the same arguments and report the same shape."""
    if task.is_token_task:
        return load_token_languages, evaluate_token_languages
    return load_languages, evaluate_languages


@torch.inference_mode()
def predict_rows(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TaggedTokenizedSet,
    batch_size: int = 64,
    progress: tqdm | None = None,
    precision: str = "no",
    layer: int | None = None,
) -> tuple[list[np.ndarray], np.ndarray | None]:
    """Each row's logits [row length, num_labels] (float32, padding removed), in row order, from one forward pass
    per length-sorted batch on the model's device; with `layer`, also each row's hidden states at that layer
    mean-pooled over its tokens ([rows, hidden], as `recipes.evaluate` pools a sentence pair), else None. The
    model is left in the mode it was in."""
    device = model_device(model)
    was_training = model.training
    model.eval()
    collator = TaggedBatchCollator(tokenizer, data)
    left = tokenizer.padding_side == "left"
    rows: list[np.ndarray] = [np.empty(0)] * len(data)
    pooled: np.ndarray | None = None
    try:
        for indices in length_sorted_batches(data.lengths, batch_size):
            batch = {k: v.to(device) for k, v in model_inputs(collator(indices)).items()}
            with autocast(precision, device):
                out = model(**batch, output_hidden_states=layer is not None)
            logits = out.logits.float().cpu().numpy()
            for j, r in enumerate(indices):
                n = len(data.labels[r])
                rows[r] = logits[j, logits.shape[1] - n :] if left else logits[j, :n]
            if layer is not None:
                hidden = pooled_hidden(out, batch["attention_mask"], layer).cpu().numpy()
                if pooled is None:
                    pooled = np.zeros((len(data), hidden.shape[1]), dtype=np.float32)
                pooled[indices] = hidden
            if progress is not None:
                progress.update(len(indices))
    finally:
        model.train(was_training)
    return rows, pooled


def predict_row_logits(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    data: TaggedTokenizedSet,
    batch_size: int = 64,
    progress: tqdm | None = None,
    precision: str = "no",
) -> list[np.ndarray]:
    """Each row's logits [row length, num_labels] (float32, padding removed), in row order (`predict_rows`)."""
    return predict_rows(model, tokenizer, data, batch_size, progress, precision)[0]


def sentence_embeddings(data: TaggedTokenizedSet, row_pooled: np.ndarray) -> np.ndarray:
    """Each sentence's embedding [sentences, hidden]: the mean over the tokens of all its rows, from each row's
    mean (`predict_rows`) weighted by the row's length. A sentence of one row (nearly all) gets its row's mean,
    the embedding a sentence pair gets; a sentence split into windows counts the windows' special tokens too."""
    lengths = np.asarray(data.lengths, dtype=np.float64)
    sums = np.zeros((data.counts.sentences, row_pooled.shape[1]), dtype=np.float64)
    np.add.at(sums, np.asarray(data.sentence), row_pooled * lengths[:, None])
    tokens = np.bincount(data.sentence, weights=lengths, minlength=data.counts.sentences)
    return (sums / tokens[:, None]).astype(np.float32)


def token_outputs(
    language: str,
    sentences: Sequence[TaggedSentence],
    data: TaggedTokenizedSet,
    row_logits: Sequence[np.ndarray],
    row_pooled: np.ndarray | None = None,
) -> TextOutputs:
    """One language's outputs on words: each word's first-subword logits [words, num_labels] and gold tag
    [words], in sentence then word order, the sentence each word is in [words], and (from `row_pooled`) each
    sentence's embedding [sentences, hidden]."""
    words = word_outputs(data, row_logits)
    return TextOutputs(
        language,
        np.concatenate(words).astype(np.float32),
        None if row_pooled is None else sentence_embeddings(data, row_pooled),
        np.concatenate([np.asarray(s.tags, dtype=np.int64) for s in sentences]),
        np.repeat(np.arange(len(words), dtype=np.int64), [len(w) for w in words]),
    )


def score_rows(
    task: Task, sentences: Sequence[TaggedSentence], data: TaggedTokenizedSet, row_logits: Sequence[np.ndarray]
) -> WordScore:
    """The task's metric on the words of `sentences`, predicted by each word's first-subword logits."""
    predicted = [words.argmax(-1) for words in word_outputs(data, row_logits)]
    gold = [np.asarray(s.tags) for s in sentences]
    return score_words(task.metric, predicted, gold, task.label_names)


def token_score(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: Task,
    sentences: Sequence[TaggedSentence],
    max_length: int = MAX_LENGTH,
    batch_size: int = 64,
    precision: str = "no",
) -> WordScore:
    """The task's metric of `model` on tagged sentences (training's held-out selection score)."""
    data = tokenize_tagged(tokenizer, sentences, max_length)
    return score_rows(task, sentences, data, predict_row_logits(model, tokenizer, data, batch_size, None, precision))


def load_token_languages(
    task: Task,
    languages: Sequence[str],
    source: DataSource = DataSource(),
    split: str = "test",
    max_examples: int | None = None,
) -> dict[str, list[TaggedSentence]]:
    """Every language's tagged sentences, read (and validated) up front: a bad file fails before any model work."""
    return {lang: load_tagged_sentences(task, split, lang, source, max_examples) for lang in languages}


def evaluate_token_languages(
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
    examples: dict[str, list[TaggedSentence]] | None = None,
    precision: str = "no",
    embeddings: bool = False,
    layer: int = -1,
    on_language: Callable[[str, TextOutputs, float, float], None] | None = None,
    desc: str = "evaluate",
    leave: bool = True,
) -> dict:
    """The evaluation stage of a token task on one loaded model, as `evaluate_languages` for sentence pairs: per
    language the task's metric (under `accuracy`) with its interval (`low`, `high`), the sentences
    (`num_examples`) and words scored and what tokenizing did to them (`alignment`); the mean over target
    languages and each one's gap to the source. `examples` (language -> sentences) skips reading the files.
    `on_language(language, outputs, seconds, metric)` is called as each language finishes, with its outputs on
    words (`token_outputs`; with `embeddings`, each sentence's embedding at `layer`)."""
    per_language = examples or load_token_languages(task, languages, source, split, max_examples)
    tokenized = {lang: tokenize_tagged(tokenizer, rows, max_length) for lang, rows in per_language.items()}
    intervals: set[str] = set()

    def score(lang: str, rows: list[TaggedSentence], bar: tqdm) -> tuple[dict, TextOutputs | None, float]:
        data = tokenized[lang]
        if not rows:
            return {"accuracy": math.nan, "low": math.nan, "high": math.nan, "num_examples": 0}, None, math.nan
        row_logits, row_pooled = predict_rows(
            model, tokenizer, data, batch_size, bar, precision, layer if embeddings else None
        )
        result = score_rows(task, rows, data, row_logits)
        intervals.add(result.interval)
        row = {
            "accuracy": result.value,
            "low": result.low,
            "high": result.high,
            "num_examples": result.sentences,
            "words": result.words,
            "alignment": asdict(data.counts),
        }
        return row, token_outputs(lang, rows, data, row_logits, row_pooled), result.value

    bar = dict(total=sum(len(data) for data in tokenized.values()), unit="row", desc=desc, leave=leave)
    report = evaluate_each_language(
        model, task, per_language, score, split, source, precision, bar, show_progress, on_language
    )
    return {**report, "metric": task.metric, "interval": f"95% {' / '.join(sorted(intervals))}"}


def alters_words(counts: AlignmentCounts) -> bool:
    """Whether tokenizing split a sentence, cut a word or read a word as the unknown token."""
    return bool(counts.split_sentences or counts.cut_words or counts.empty_words)


def format_token_table(report: dict) -> str:
    """A token-task report as a table: the metric and its interval per language, the gap to the source, the
    sentences and words scored; then one line per language whose words tokenizing split, cut or replaced."""
    metric = report["metric"]
    lines = [f"{'lang':<6}{metric:>15}{'95% interval':>17}{'gap':>8}{'sentences':>11}{'words':>8}"]
    gaps = report.get("gap_to_source", {})
    altered = []
    for lang, r in report["languages"].items():
        gap = f"{gaps[lang]:+8.3f}" if lang in gaps else f"{'':>8}"
        bounds = f"{r['low']:.3f}-{r['high']:.3f}" if not math.isnan(r["low"]) else "-"
        lines.append(f"{lang:<6}{r['accuracy']:15.3f}{bounds:>17}{gap}{r['num_examples']:11d}{r.get('words', 0):8d}")
        counts = AlignmentCounts(**r["alignment"]) if "alignment" in r else None
        if counts is not None and alters_words(counts):
            altered.append(f"{lang}: {counts.describe()}")
    if report.get("target_mean_accuracy") is not None:
        lines.append(f"mean of targets {report['target_mean_accuracy']:.3f}")
    lines.append(f"intervals: {report['interval']}")
    return "\n".join(lines + [f"alignment {line}" for line in altered])
