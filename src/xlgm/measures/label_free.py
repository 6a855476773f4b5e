"""Label-free measures: what a model's outputs on unlabelled target-language text say about its accuracy there.

A model fine-tuned on English is used on Swahili text nobody has labelled. These measures need only the
logits and sentence embeddings of one forward pass over that text (`TextOutputs`), and, for some, the same
model's outputs on source-language text (labelled: we have English labels) or other models' outputs on the
same text. They are the inputs of `xlgm predict` (analysis/predict.py), which maps them to accuracy.

Outputs measures (kind="outputs"; `compute_output_measure(name, target, source=..., peers=...)`):

- confidence-margin     mean over rows of p(ŷ|x) - max_{j≠ŷ} p(j|x), ŷ the model's own prediction: the margin of
                        Bassi et al. (2024, Sec. 3) with pseudo-labels.
- prediction-entropy    mean predictive entropy H(p(·|x)) in nats.
- atc-accuracy          Average Thresholded Confidence (Garg et al., ICLR 2022, Eq. 1): the threshold t on
                        max-probability at which the share of labelled source rows above t equals the source
                        accuracy; the prediction is the share of target rows above t.
- doc-accuracy          Difference of Confidences (Guillory et al., ICCV 2021, Sec. 3): source accuracy minus
                        (mean max-probability on source - on target).
- translation-agreement the share of rows whose prediction equals the prediction on the parallel source row
                        (parallel text; a cross-lingual consistency in the spirit of Jiang et al., ICLR 2022).
- translation-gap       the expected accuracy change from source to target on parallel text under the source
                        posterior: mean over rows of p_src(ŷ_tgt|x_src) - p_src(ŷ_src|x_src), ŷ the predictions on
                        each side (xlgm's own estimator; no labels; <= 0 by construction).
- checkpoint-agreement  the mean share of rows on which the model agrees with each peer (other checkpoints or
                        seeds on the same text): Jiang et al. (ICLR 2022) disagreement; Baek et al. (NeurIPS
                        2022) agreement-on-the-line.
- linear-cka            linear CKA between source and target sentence embeddings (Kornblith et al., ICML 2019,
                        Eq. 5; parallel text: row i of both is the same sentence).
- embedding-distance    the Euclidean distance between the mean source and mean target sentence embeddings,
                        relative to the source embeddings' RMS norm (any text; parallel not needed).
- retrieval-accuracy    translation retrieval by nearest neighbour under cosine similarity, both directions
                        averaged, after centering each language (parallel text; XTREME's Tatoeba/BUCC protocol,
                        Hu et al., ICML 2020; centering after Libovický et al., 2020).

Token outputs (`TextOutputs.is_token_level`: UD-POS, PAN-X; one row a labelled word, one embedding a sentence):

- confidence-margin, prediction-entropy, atc-accuracy, doc-accuracy and checkpoint-agreement are the same
  formulas over words (each word's first-subword logits). The first four give their spread and count over
  sentences (the std of the per-sentence means), since the words of one sentence are not independent samples;
  checkpoint-agreement's spread stays over peers.
- atc-accuracy and doc-accuracy read the source's word accuracy and estimate the target's word accuracy. That is
  UD-POS's metric (token accuracy). For PAN-X, whose metric is entity F1, it stays a word-accuracy estimate: the
  predictor (analysis/predict.py) uses its gap to the source's word accuracy as a feature and learns how it maps
  to the F1 gap; it is no F1 estimate by itself.
- embedding-distance reads the sentence embeddings; it never needed parallel text.
- translation-agreement, translation-gap, linear-cka and retrieval-accuracy refuse token outputs: they pair row
  i of the target with row i of the source, and token data (UD-POS, PAN-X) is not parallel across languages.

Model measures with pseudo-labels (kind="model", the labels of the batches are replaced by the model's own
predictions, so the data may be unlabelled): sharpness-diff-pseudo and sharpness-avg-pseudo.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import torch

from xlgm.core import validation
from xlgm.core.errors import XlgmError
from xlgm.core.options import check_fields, option
from xlgm.core.types import TextOutputs
from xlgm.data.tagging import IGNORE_INDEX
from xlgm.measures import sharpness_avg, sharpness_diff
from xlgm.measures.base import MeasureContext, MeasureResult, register_measure
from xlgm.measures.loss import logits_of, num_examples

# ---------------------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------------------


def _result(name: str, value: float, per_row: np.ndarray | None = None, **details) -> MeasureResult:
    """Per-row values give the spread (std over rows, ddof=1) and the count."""
    spread = float(per_row.std(ddof=1)) if per_row is not None and per_row.size >= 2 else None
    n = int(per_row.size) if per_row is not None else None
    clean = {k: (float(v) if isinstance(v, (np.floating, np.integer)) else v) for k, v in details.items()}
    return MeasureResult(name, float(value), spread, n, clean)


def _samples(per_row: np.ndarray, outputs: TextOutputs) -> np.ndarray:
    """What a measure's spread and count are over: its rows, or for token outputs each sentence's mean over its
    words (the sentences are the independent samples)."""
    if not outputs.is_token_level:
        return per_row
    return np.array([words.mean() for words in outputs.by_sentence(per_row)])


def _refuse_tokens(name: str, *outputs: TextOutputs) -> None:
    if any(o.is_token_level for o in outputs):
        raise XlgmError(
            f"{name} needs parallel text (row i of both languages the same sentence), and token outputs are not: "
            "token data is not parallel across languages"
        )


def _need_source(
    name: str,
    source: TextOutputs | None,
    labels: bool = False,
    parallel_to: TextOutputs | None = None,
    embeddings: bool = False,
) -> TextOutputs:
    if source is None:
        raise XlgmError(f"{name} needs the model's outputs on source-language text (source=...)")
    if parallel_to is not None:
        _refuse_tokens(name, parallel_to, source)
    if labels and source.accuracy is None:
        raise XlgmError(f"{name} needs labelled source rows (every source label known)")
    if parallel_to is not None and len(source.logits) != len(parallel_to.logits):
        raise XlgmError(
            f"{name} needs parallel text: {len(parallel_to.logits)} target rows but {len(source.logits)} source rows"
        )
    if embeddings and source.embeddings is None:
        raise XlgmError(f"{name} needs sentence embeddings of the source text")
    if (
        embeddings
        and parallel_to is not None
        and parallel_to.embeddings is not None
        and source.embeddings is not None
        and len(source.embeddings) != len(parallel_to.embeddings)
    ):
        raise XlgmError(
            f"{name} needs parallel text: embeddings of {len(parallel_to.embeddings)} target rows but "
            f"{len(source.embeddings)} source rows"
        )
    return source


def _need_embeddings(name: str, outputs: TextOutputs) -> np.ndarray:
    if outputs.embeddings is None:
        raise XlgmError(f"{name} needs sentence embeddings (predict_outputs(..., embeddings=True))")
    return outputs.embeddings.astype(np.float64)


def top_two(probabilities: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The largest and second-largest probability of each row."""
    part = np.sort(probabilities, axis=-1)
    return part[:, -1], part[:, -2]


def atc_threshold(source_scores: np.ndarray, source_correct: np.ndarray) -> float:
    """The t with mean(source_scores > t) = source accuracy (Garg et al. 2022, Eq. 1): the (1 - acc) quantile,
    taken as the score of the k-th lowest row, k = #wrong, so exactly #correct rows lie strictly above it when
    scores are distinct."""
    n_wrong = int(len(source_correct) - source_correct.sum())
    ordered = np.sort(source_scores)
    if n_wrong == 0:
        return float(-np.inf)
    return float(ordered[n_wrong - 1])


# ---------------------------------------------------------------------------------------------------------
# Outputs measures
# ---------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class NoConfig:
    pass


@register_measure(
    "confidence-margin",
    reference="Bassi et al. 2024, Sec. 3 (margin), with the model's own predictions as labels",
    config_cls=NoConfig,
    kind="outputs",
    expected_sign=1,
    direction_reference="Hendrycks & Gimpel 2017: more confident, more accurate",
)
def confidence_margin(target: TextOutputs, config: NoConfig, source=None, peers=()) -> MeasureResult:
    """Mean of p(ŷ|x) - max_{j≠ŷ} p(j|x) over the rows, ŷ = argmax: the probability margin with pseudo-labels."""
    first, second = top_two(target.probabilities)
    margins = first - second
    return _result(
        "confidence-margin",
        margins.mean(),
        _samples(margins, target),
        min=float(margins.min()),
        mean_confidence=float(first.mean()),
    )


@register_measure(
    "prediction-entropy",
    reference="Shannon entropy of the predictive distribution",
    config_cls=NoConfig,
    kind="outputs",
    expected_sign=-1,
    direction_reference="Hendrycks & Gimpel 2017: less certain, less accurate",
)
def prediction_entropy(target: TextOutputs, config: NoConfig, source=None, peers=()) -> MeasureResult:
    """Mean of H(p(·|x)) = -Σ_j p_j log p_j (nats) over the rows; details also give it divided by log K."""
    p = target.probabilities
    h = -(p * np.log(np.clip(p, 1e-300, None))).sum(-1)
    return _result("prediction-entropy", h.mean(), _samples(h, target), normalized=float(h.mean() / np.log(p.shape[1])))


@dataclass(frozen=True)
class AtcConfig:
    score: Literal["max-probability", "negative-entropy"] = field(
        default="max-probability", metadata=option(help="the confidence score thresholded (Garg et al. report both)")
    )

    def __post_init__(self) -> None:
        check_fields(self, label=str)


def _scores(outputs: TextOutputs, score: str) -> np.ndarray:
    p = outputs.probabilities
    if score == "max-probability":
        return p.max(-1)
    return (p * np.log(np.clip(p, 1e-300, None))).sum(-1)


@register_measure(
    "atc-accuracy",
    reference="Garg et al. 2022, Leveraging Unlabeled Data to Predict "
    "Out-of-Distribution Performance, ICLR, Eq. 1 (ATC)",
    config_cls=AtcConfig,
    kind="outputs",
    inputs=("source",),
    expected_sign=1,
    direction_reference="Garg et al. 2022: an estimate of the accuracy",
)
def atc_accuracy(target: TextOutputs, config: AtcConfig, source=None, peers=()) -> MeasureResult:
    """Predicted target accuracy: the share of target rows whose confidence score exceeds the threshold t at
    which the share of labelled source rows above t equals the source accuracy."""
    src = _need_source("atc-accuracy", source, labels=True)
    correct = (src.predictions == src.labels).astype(np.float64)
    t = atc_threshold(_scores(src, config.score), correct)
    above = (_scores(target, config.score) > t).astype(np.float64)
    return _result(
        "atc-accuracy", above.mean(), _samples(above, target), threshold=t, source_accuracy=float(correct.mean())
    )


@register_measure(
    "doc-accuracy",
    reference="Guillory et al. 2021, Predicting with Confidence on Unseen Distributions, ICCV, Sec. 3 (DoC)",
    config_cls=NoConfig,
    kind="outputs",
    inputs=("source",),
    expected_sign=1,
    direction_reference="Guillory et al. 2021: an estimate of the accuracy",
)
def doc_accuracy(target: TextOutputs, config: NoConfig, source=None, peers=()) -> MeasureResult:
    """Predicted target accuracy: source accuracy - (mean max-probability on source - on target)."""
    src = _need_source("doc-accuracy", source, labels=True)
    conf_src = src.probabilities.max(-1)
    conf_tgt = target.probabilities.max(-1)
    acc = float((src.predictions == src.labels).mean())
    return _result(
        "doc-accuracy",
        acc - (conf_src.mean() - conf_tgt.mean()),
        _samples(conf_tgt, target),
        source_accuracy=acc,
        source_confidence=float(conf_src.mean()),
        target_confidence=float(conf_tgt.mean()),
    )


@register_measure(
    "translation-agreement",
    reference="cross-lingual consistency of predictions on parallel "
    "text; cf. Jiang et al. 2022, Assessing Generalization of SGD via Disagreement, ICLR",
    config_cls=NoConfig,
    kind="outputs",
    inputs=("source",),
    expected_sign=1,
    direction_reference="a prediction that survives translation keeps its correctness",
)
def translation_agreement(target: TextOutputs, config: NoConfig, source=None, peers=()) -> MeasureResult:
    """Share of rows i whose prediction on the target text equals the prediction on source row i (its
    translation). No labels are used."""
    src = _need_source("translation-agreement", source, parallel_to=target)
    same = (target.predictions == src.predictions).astype(np.float64)
    return _result("translation-agreement", same.mean(), same)


@register_measure(
    "translation-gap",
    reference="xlgm: expected accuracy change on parallel text under the source "
    "posterior (no paper; see the module docstring)",
    config_cls=NoConfig,
    kind="outputs",
    inputs=("source",),
    expected_sign=1,
    direction_reference="xlgm: an expected target-minus-source accuracy change",
)
def translation_gap(target: TextOutputs, config: NoConfig, source=None, peers=()) -> MeasureResult:
    """Mean over parallel rows i of p_src,i(ŷ_tgt,i) - p_src,i(ŷ_src,i): how much probability the model's
    source-language posterior gives the target prediction, minus its own prediction. If that posterior were
    the true label distribution, this would be the expected target-minus-source accuracy. Zero on rows whose
    prediction survives translation."""
    src = _need_source("translation-gap", source, parallel_to=target)
    p = src.probabilities
    rows = np.arange(len(p))
    shift = p[rows, target.predictions] - p[rows, src.predictions]
    return _result("translation-gap", shift.mean(), shift)


@register_measure(
    "checkpoint-agreement",
    reference="Jiang et al. 2022, Assessing Generalization of SGD via "
    "Disagreement, ICLR; Baek et al. 2022, Agreement-on-the-Line, NeurIPS",
    config_cls=NoConfig,
    kind="outputs",
    inputs=("peers",),
    expected_sign=1,
    direction_reference="Jiang et al. 2022: agreement tracks accuracy",
)
def checkpoint_agreement(target: TextOutputs, config: NoConfig, source=None, peers=()) -> MeasureResult:
    """Mean over peers (other checkpoints or seeds, outputs on the same rows) of the share of rows on which
    the two predictions agree; the spread is over peers."""
    if not peers:
        raise XlgmError("checkpoint-agreement needs the outputs of at least one other model on the same text")
    pred = target.predictions
    rates = []
    for i, peer in enumerate(peers):
        if len(peer.logits) != len(pred):
            raise XlgmError(f"checkpoint-agreement: peer {i} has {len(peer.logits)} rows, the target {len(pred)}")
        rates.append(float((peer.predictions == pred).mean()))
    arr = np.asarray(rates)
    return _result("checkpoint-agreement", arr.mean(), arr, per_peer=rates)


def linear_cka(x: np.ndarray, y: np.ndarray) -> float:
    """Linear CKA of two representations of the same n rows (Kornblith et al. 2019, Eq. 5):
    ||Y_c^T X_c||_F^2 / (||X_c^T X_c||_F ||Y_c^T Y_c||_F), X_c, Y_c column-centred."""
    xc = x - x.mean(0, keepdims=True)
    yc = y - y.mean(0, keepdims=True)
    cross = np.linalg.norm(yc.T @ xc) ** 2
    return float(cross / (np.linalg.norm(xc.T @ xc) * np.linalg.norm(yc.T @ yc)))


@register_measure(
    "linear-cka",
    reference="Kornblith et al. 2019, Similarity of Neural Network Representations Revisited, ICML, Eq. 5 (linear CKA)",
    config_cls=NoConfig,
    kind="outputs",
    inputs=("source",),
    expected_sign=1,
    direction_reference="Conneau et al. 2020: closer to the source, better transfer",
)
def linear_cka_measure(target: TextOutputs, config: NoConfig, source=None, peers=()) -> MeasureResult:
    """Linear CKA between the sentence embeddings of source rows and their translations (1 = identical up to
    rotation and scale)."""
    src = _need_source("linear-cka", source, parallel_to=target, embeddings=True)
    return _result(
        "linear-cka",
        linear_cka(_need_embeddings("linear-cka", src), _need_embeddings("linear-cka", target)),
        num_rows=len(target.logits),
    )


@register_measure(
    "embedding-distance",
    reference="distance between language centroids of sentence embeddings "
    "(cf. Libovický et al. 2020, On the Language Neutrality of Pre-trained Multilingual "
    "Representations)",
    config_cls=NoConfig,
    kind="outputs",
    inputs=("source",),
    expected_sign=-1,
    direction_reference="Conneau et al. 2020: farther from the source, worse transfer",
)
def embedding_distance(target: TextOutputs, config: NoConfig, source=None, peers=()) -> MeasureResult:
    """||mean(source embeddings) - mean(target embeddings)||_2 / RMS norm of the source embeddings; the text
    need not be parallel. Details: the unscaled distance and the cosine distance of the two means."""
    src = _need_source("embedding-distance", source, embeddings=True)
    xs, xt = _need_embeddings("embedding-distance", src), _need_embeddings("embedding-distance", target)
    mu_s, mu_t = xs.mean(0), xt.mean(0)
    dist = float(np.linalg.norm(mu_s - mu_t))
    scale = float(np.sqrt((xs**2).sum(-1).mean()))
    cosine = 1.0 - float(mu_s @ mu_t / (np.linalg.norm(mu_s) * np.linalg.norm(mu_t)))
    return _result("embedding-distance", dist / scale, distance=dist, source_rms_norm=scale, cosine_distance=cosine)


@dataclass(frozen=True)
class RetrievalConfig:
    center: bool = field(
        default=True,
        metadata=option(
            help="subtract each language's mean embedding first (Libovický et al. 2020)", rule=validation.boolean
        ),
    )

    def __post_init__(self) -> None:
        check_fields(self, label=str)


def retrieval_hits(queries: np.ndarray, keys: np.ndarray) -> np.ndarray:
    """1.0 where the nearest key (cosine similarity) of query i is key i; ties broken by the lowest index."""
    q = queries / np.clip(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12, None)
    k = keys / np.clip(np.linalg.norm(keys, axis=1, keepdims=True), 1e-12, None)
    return ((q @ k.T).argmax(1) == np.arange(len(q))).astype(np.float64)


@register_measure(
    "retrieval-accuracy",
    reference="translation retrieval by nearest neighbour, XTREME "
    "Tatoeba protocol (Hu et al. 2020, ICML); centering after Libovický et al. 2020",
    config_cls=RetrievalConfig,
    kind="outputs",
    inputs=("source",),
    expected_sign=1,
    direction_reference="Hu et al. 2020 (XTREME): better aligned, better transfer",
)
def retrieval_accuracy(target: TextOutputs, config: RetrievalConfig, source=None, peers=()) -> MeasureResult:
    """Share of rows whose nearest neighbour (cosine) among the other language's rows is their translation,
    averaged over both directions (target->source, source->target)."""
    src = _need_source("retrieval-accuracy", source, parallel_to=target, embeddings=True)
    xs, xt = _need_embeddings("retrieval-accuracy", src), _need_embeddings("retrieval-accuracy", target)
    if config.center:
        xs, xt = xs - xs.mean(0), xt - xt.mean(0)
    t2s, s2t = retrieval_hits(xt, xs), retrieval_hits(xs, xt)
    return _result(
        "retrieval-accuracy",
        (t2s.mean() + s2t.mean()) / 2,
        (t2s + s2t) / 2,
        target_to_source=float(t2s.mean()),
        source_to_target=float(s2t.mean()),
    )


# ---------------------------------------------------------------------------------------------------------
# Sharpness with pseudo-labels (model measures)
# ---------------------------------------------------------------------------------------------------------


@torch.no_grad()
def pseudo_labelled(ctx: MeasureContext) -> list[dict[str, torch.Tensor]]:
    """The context's batches with `labels` replaced by the model's predictions at the current weights. A token
    batch keeps its labelled positions (the words' first subwords) and predicts the tag there."""
    out = []
    for batch in ctx.batches:
        logits = logits_of(ctx.model, batch)
        predicted = logits.argmax(-1)
        if logits.dim() == 3:
            if "labels" not in batch:
                raise XlgmError(
                    "pseudo-labels of a token task need the batch's `labels`: they mark which positions are words"
                )
            predicted = predicted.masked_fill(batch["labels"] == IGNORE_INDEX, IGNORE_INDEX)
        ctx.meter.forward(num_examples({**batch, "labels": predicted}))
        out.append({**batch, "labels": predicted})
    return out


def _with_pseudo_labels(ctx: MeasureContext) -> MeasureContext:
    return dataclasses.replace(ctx, batches=pseudo_labelled(ctx))


@register_measure(
    "sharpness-diff-pseudo",
    reference="Bassi et al. 2024, Algorithm 1 (sharpness-diff) with the model's own predictions as labels",
    config_cls=sharpness_diff.SharpnessDiffConfig,
    expected_sign=-1,
    direction_reference="Bassi et al. 2024: sharper minima transfer worse",
)
def sharpness_diff_pseudo(ctx: MeasureContext, config) -> MeasureResult:
    """sharpness-diff on pseudo-labels: the loss is the cross-entropy against the model's own predictions at
    the measured weights, so the data needs no labels (e.g. target-language text)."""
    return sharpness_diff.sharpness_diff(_with_pseudo_labels(ctx), config)


@register_measure(
    "sharpness-avg-pseudo",
    reference="Andriushchenko et al. 2023, average-case sharpness, with the model's own predictions as labels",
    config_cls=sharpness_avg.SharpnessAvgConfig,
    expected_sign=-1,
    direction_reference="Keskar et al. 2017; tested by Andriushchenko et al. 2023",
)
def sharpness_avg_pseudo(ctx: MeasureContext, config) -> MeasureResult:
    """sharpness-avg on pseudo-labels (see sharpness-diff-pseudo)."""
    return sharpness_avg.sharpness_avg(_with_pseudo_labels(ctx), config)
