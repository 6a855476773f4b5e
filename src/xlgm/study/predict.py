"""`xlgm predict STUDY`: predict each checkpoint's accuracy in each language from unlabelled text alone.

1. Label-free measures. The study's evaluations kept their outputs (logits + sentence embeddings, one .npz per
   checkpoint and language, `units.outputs_path`). For every checkpoint and target language the outputs
   measures of measures/label_free.py are computed from them: the target's labels are dropped before anything
   is computed, the source language (English) keeps its labels. They are stored in the study's `measures` table
   (data `LANG-SPLIT-text`) and in OUT/prediction/label_free.csv.
2. The predictor (analysis/predict.py) is cross-validated leave-one-language-out, leave-one-run-out and
   leave-one-configuration-out (a run and its seed-mates) and compared with the baselines "same as the
   source", "source plus the language's mean gap in the other models" and "mean of the other languages", and
   with itself anchored on the source alone: OUT/prediction/{cv.csv, summary.json}. baselines.csv has one row
   per (scheme, baseline): both MAEs, their ratio and difference with a paired bootstrap interval over
   languages, whether the predictor beats it, whether the baseline uses the predicted checkpoint's own target
   labels, and which baseline is the best rival (`analysis.predict.compare_with_baselines`).
3. `--text FILE --language XX`: the predictor, fitted on the study's labelled target languages (XX's own
   rows left out if the study has them) and anchored on them, predicts the accuracy of the study's
   checkpoints on the language's unlabelled text (a TSV of text_a, text_b; a label column is ignored).
   Sentence-pair tasks only.

On a token task (UD-POS, PAN-X) the kept outputs have a row a word and an embedding a sentence
(`TextOutputs.sentences`); the accuracy predicted is the task's metric (the evaluations' value: token accuracy
or entity F1), and the source side is that metric on the source outputs. The task's files are not parallel
across languages, so the parallel-text measures and features are left out whatever `prediction.parallel`
says (`not_parallel`), and naming one in `prediction.features` is refused.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from tqdm.auto import tqdm

from xlgm.analysis.predict import (
    FEATURES,
    PARALLEL_ONLY,
    SCHEMES,
    SOURCE_WORD_ACCURACY,
    GapRegressor,
    applicable_features,
    available_features,
    compare_with_baselines,
    cross_validate,
    derive_features,
    summarize,
)
from xlgm.analysis.token_metrics import metric_value
from xlgm.core.devices import resolve_device
from xlgm.core.errors import XlgmError
from xlgm.core.machine import machine_record
from xlgm.core.types import TextOutputs
from xlgm.data.batching import tokenize_examples
from xlgm.data.tasks import Task, get_task
from xlgm.data.tsv import read_tsv
from xlgm.measures.base import compute_output_measure
from xlgm.recipes.evaluate import predict_outputs
from xlgm.study.db import StudyDB
from xlgm.study.executors import load_run_model
from xlgm.study.spec import StudySpec
from xlgm.study.units import DB_NAME, eval_data_label, outputs_path, seed_group_id, train_unit_id

OUTPUT_MEASURES = ("confidence-margin", "prediction-entropy", "atc-accuracy", "doc-accuracy")
PARALLEL_MEASURES = ("translation-agreement", "translation-gap", "linear-cka", "retrieval-accuracy")
EMBEDDING_MEASURES = ("linear-cka", "retrieval-accuracy", "embedding-distance")
FOLDER = "prediction"


def unlabelled(outputs: TextOutputs) -> TextOutputs:
    """The outputs without labels: what a target language contributes to its own prediction."""
    return replace(outputs, labels=None)


def label_free_measures(
    target: TextOutputs, source: TextOutputs, peers: Sequence[TextOutputs] = (), parallel: bool = True
) -> dict[str, float]:
    """Every label-free measure the inputs allow, for one checkpoint and target language."""
    target = unlabelled(target)
    names = list(OUTPUT_MEASURES)
    has_embeddings = target.embeddings is not None and source.embeddings is not None
    if has_embeddings:
        names.append("embedding-distance")
    if parallel:
        names += [m for m in PARALLEL_MEASURES if has_embeddings or m not in EMBEDDING_MEASURES]
    if peers:
        names.append("checkpoint-agreement")
    return {name: compute_output_measure(name, target, source=source, peers=peers).value for name in names}


def not_parallel(spec: StudySpec, task: Task) -> str | None:
    """Why the study's evaluation files are not row-by-row translations of each other; None when they are."""
    if task.is_token_task:
        return f"task {task.name} labels words, and token data is not parallel across languages"
    return None if spec.prediction.parallel else "the spec says prediction.parallel: false"


def source_score(source: TextOutputs, task: Task) -> float | None:
    """The task's metric on the labelled source outputs (None if a label is unknown): accuracy, or a token task's
    metric over its words regrouped into sentences."""
    if not source.is_token_level or source.accuracy is None:
        return source.accuracy
    assert source.labels is not None  # accuracy is None without them
    predicted, gold = source.by_sentence(source.predictions), source.by_sentence(source.labels)
    return metric_value(task.metric, predicted, gold, task.label_names)


def source_measures(source: TextOutputs, task: Task) -> dict[str, float | None]:
    """A checkpoint's source side: the score its target gaps are taken to, its margin and entropy, and on a
    token task its word accuracy (what ATC and DoC estimate)."""
    out = {
        "source_accuracy": source_score(source, task),
        "source_confidence-margin": compute_output_measure("confidence-margin", source).value,
        "source_prediction-entropy": compute_output_measure("prediction-entropy", source).value,
    }
    if source.is_token_level:
        out[SOURCE_WORD_ACCURACY] = source.accuracy
    return out


def _study_checkpoints(spec: StudySpec, db: StudyDB) -> pd.DataFrame:
    run_ids = [c.run_id for c in spec.run_configs()]
    done = db.done_units()
    trained = [r for r in run_ids if train_unit_id(r) in done]
    marks = ",".join("?" * len(trained))
    rows = db.query(
        "SELECT c.checkpoint_id, c.run_id, c.step, c.is_last, r.run_dir FROM checkpoints c "
        f"JOIN runs r ON r.run_id = c.run_id WHERE c.run_id IN ({marks})",
        tuple(trained),
    )
    frame = pd.DataFrame(rows, columns=["checkpoint_id", "run_id", "step", "is_last", "run_dir"])
    frame["run_dir"] = [str(db.resolve_path(r)) for r in frame["run_dir"]]  # stored relative to the study folder
    keep = spec.checkpoints.selects(list(frame.run_id), list(frame.step))
    return frame[keep].reset_index(drop=True)


def load_outputs(spec: StudySpec, checkpoints: pd.DataFrame, languages: Sequence[str]) -> dict[tuple[str, str], Path]:
    """(checkpoint_id, language) -> its outputs file, for those that exist."""
    found = {}
    for row in checkpoints.itertuples():
        name = row.checkpoint_id.split("/", 1)[1]
        for lang in languages:
            path = outputs_path(spec, Path(row.run_dir), name, lang)
            if path.is_file():
                found[(row.checkpoint_id, lang)] = path
    return found


def _read_outputs(path: Path) -> TextOutputs:
    try:
        return TextOutputs.load(path)
    except (ValueError, OSError, EOFError, KeyError, zipfile.BadZipFile) as err:
        what = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise XlgmError(
            f"{path}: not readable kept outputs ({what}); run `xlgm study run` on the study again "
            "to redo its evaluation"
        ) from None


def label_free_frame(spec: StudySpec, out: Path, show_progress: bool = True) -> pd.DataFrame:
    """One row per (checkpoint, target language): keys, accuracy, source-side values, label-free measures.
    Also writes the measures into the study's SQLite file."""
    if not spec.prediction.enabled:
        raise XlgmError(f"{spec.source}: prediction.enabled is false, so the study kept no outputs to predict from")
    src_lang = spec.source_language
    task = get_task(spec.task)
    parallel = not_parallel(spec, task) is None
    with StudyDB(out / DB_NAME) as db:
        ckpts = _study_checkpoints(spec, db)
        evals = pd.DataFrame(
            db.query(
                "SELECT checkpoint_id, language, accuracy FROM evaluations WHERE task=? AND split=? AND data=?",
                (spec.task, spec.evaluation.split, eval_data_label(spec)),
            ),
            columns=["checkpoint_id", "language", "accuracy"],
        )
    files = load_outputs(spec, ckpts, spec.languages)
    usable = [c for c in ckpts.checkpoint_id if (c, src_lang) in files]
    if not usable:
        raise XlgmError(
            f"{out}: no kept outputs of the source language {src_lang} yet; run the study "
            "(with prediction.enabled) first"
        )
    # Every kept output is read once (embeddings: at most prediction.embedding_rows rows each); peers get
    # copies without embeddings, since agreement needs predictions only.
    logits = {key: _read_outputs(path) for key, path in files.items() if key[0] in usable}
    rows: list[dict[str, Any]] = []
    run_of = dict(zip(ckpts.checkpoint_id, ckpts.run_id))
    targets = [lang for lang in spec.languages if lang != src_lang]
    for cid in tqdm(usable, desc="label-free measures", unit="checkpoint", disable=not show_progress):
        source = logits[(cid, src_lang)]
        src_side = source_measures(source, task)
        for lang in targets:
            if (cid, lang) not in logits:
                continue
            peers = [
                replace(logits[(other, lang)], embeddings=None)
                for other in usable
                if other != cid and (other, lang) in logits
            ]
            values = label_free_measures(logits[(cid, lang)], source, peers, parallel)
            rows.append({"checkpoint_id": cid, "run_id": run_of[cid], "language": lang, **src_side, **values})
    frame = pd.DataFrame(rows)
    if frame.empty:
        raise XlgmError(f"{out}: no kept outputs of any target language yet")
    acc = evals.set_index(["checkpoint_id", "language"])["accuracy"]
    frame["accuracy"] = [acc.get((c, lang), np.nan) for c, lang in zip(frame.checkpoint_id, frame.language)]
    _store(spec, out, frame)
    return frame


def _store(spec: StudySpec, out: Path, frame: pd.DataFrame) -> None:
    skip = {"checkpoint_id", "run_id", "language", "accuracy"}
    measure_cols = [c for c in frame.columns if c not in skip and not c.startswith("source_")]
    config = {"label_free": True, "parallel": not_parallel(spec, get_task(spec.task)) is None}
    machine = machine_record("cpu", "no")  # computed from the kept outputs, in numpy
    with StudyDB(out / DB_NAME) as db:
        for rec in frame.to_dict("records"):
            data = f"{rec['language']}-{spec.evaluation.split}-text"
            for col in measure_cols:
                if pd.notna(rec[col]):
                    value = float(rec[col])
                    db.add_measure(rec["checkpoint_id"], col, config, data, value, None, None, 0.0, {}, machine)


def predict_study(spec: StudySpec, out: Path, echo: bool = True, show_progress: bool = True) -> dict[str, Any]:
    """Label-free measures, cross-validated predictions and their errors; written to OUT/prediction/."""
    return write_predictions(spec, label_free_frame(spec, out, show_progress), out, echo)


def write_predictions(spec: StudySpec, label_free: pd.DataFrame, out: Path, echo: bool = True) -> dict[str, Any]:
    """The predictor cross-validated on a label-free frame (`label_free_frame`, or its label_free.csv read
    back): OUT/prediction/{label_free,cv,baselines}.csv and summary.json."""
    frame = derive_features(label_free)
    frame = frame[frame["accuracy"].notna()].reset_index(drop=True)
    configurations = {c.run_id: seed_group_id(c) for c in spec.run_configs()}
    frame["configuration"] = frame["run_id"].map(configurations)
    task = get_task(spec.task)
    features = available_features(frame, applicable_features(spec.prediction.features, not_parallel(spec, task)))
    if not features:
        raise XlgmError("none of the predictor's features could be computed from the kept outputs")
    folder = out / FOLDER
    folder.mkdir(parents=True, exist_ok=True)
    frame.to_csv(folder / "label_free.csv", index=False)
    results: dict[str, Any] = {"features": features, "rows": len(frame), "schemes": {}}
    if task.is_token_task:  # the accuracy columns hold another metric (sentence-pair tables stay as they were)
        results["metric"] = task.metric
    cvs = []
    for scheme in SCHEMES:
        try:
            cv = cross_validate(frame, features, scheme, spec.prediction.alphas)
        except XlgmError as err:
            results["schemes"][scheme] = {"skipped": str(err)}
            continue
        cvs.append(cv)
        results["schemes"][scheme] = summarize(cv)
    if cvs:
        pd.concat(cvs).to_csv(folder / "cv.csv", index=False)
        pd.concat([compare_with_baselines(cv) for cv in cvs]).to_csv(folder / "baselines.csv", index=False)
    model = GapRegressor(features, spec.prediction.alphas).fit(frame)
    results["coefficients"] = model.coefficients()
    (folder / "summary.json").write_text(json.dumps(results, indent=2) + "\n")
    if echo:
        print(format_summary(results))
        print(f"prediction tables: {folder}")
    return results


def format_summary(results: dict[str, Any]) -> str:
    target = f", predicting {results['metric']}" if "metric" in results else ""
    lines = [
        f"predictor: ridge on {', '.join(results['features'])} ({results['rows']} checkpoint x language rows{target})",
        f"{'scheme':<28}{'MAE':>8}{'en anchor only':>16}{'same as en':>12}{'en + lang gap':>15}"
        f"{'other langs':>13}{'ratio to best rival':>21}",
    ]
    for scheme, s in results["schemes"].items():
        if "skipped" in s:
            lines.append(f"{scheme:<28} skipped: {s['skipped']}")
            continue
        m = s["mae"]
        lines.append(
            f"{scheme:<28}{m['predicted']:8.4f}{m['predicted_source_anchor']:16.4f}"
            f"{m['same_as_source']:12.4f}{m['language_gap']:15.4f}{m['other_languages']:13.4f}"
            f"{s['ratio_to_best_rival']:8.2f} ({s['best_rival']})"
        )
    lines.append("against each rival (MAE difference, predictor - rival, 95% interval resampling languages):")
    for scheme, s in results["schemes"].items():
        for name, v in s.get("versus", {}).items():
            verdict = "beats it" if v["beats"] else "does not beat it"
            best = " (best rival)" if v["best_rival"] else ""
            own = ", uses the checkpoint's target labels" if v.get("uses_own_target_labels") else ""
            lines.append(
                f"  {scheme:<28}{name + best:<32}{v['difference']:+8.4f} [{v['ci_low']:+.4f}, "
                f"{v['ci_high']:+.4f}]  ratio {v['ratio']:.2f}, {verdict}{own}"
            )
    return "\n".join(lines)


# ------------------------------------------------------------------------------------------------------------
# A new language's unlabelled text
# ------------------------------------------------------------------------------------------------------------


def predict_text(
    spec: StudySpec,
    out: Path,
    text_file: str | Path,
    language: str,
    parallel: bool = False,
    which: str = "last",
    batch_size: int = 64,
    show_progress: bool = True,
    device=None,
    precision: str = "no",
) -> pd.DataFrame:
    """Predicted accuracy of the study's checkpoints (`which`: last per run, or all) on unlabelled text.

    With `parallel`, row i of the file must be the translation of row i of the study's source evaluation
    rows; otherwise only the features that need no parallel text are used. The checkpoints run on `device`
    (default: resolve_device("auto")) under autocast `precision` (a resolved one: no, fp16, bf16)."""

    task = get_task(spec.task)
    if task.is_token_task:
        raise XlgmError(
            f"xlgm predict --text reads sentence pairs; task {task.name} labels words, and predicting a token "
            "study's checkpoints on new text is not supported yet (xlgm predict STUDY works)"
        )
    rows = read_tsv(text_file, task, labelled=False)
    rows = [replace(r, label=-1) for r in rows]  # a label column, if any, is never read
    study = derive_features(label_free_frame(spec, out, show_progress))
    study = study[study["accuracy"].notna()].reset_index(drop=True)
    wanted = [f for f in (spec.prediction.features or FEATURES) if parallel or f not in PARALLEL_ONLY]
    configs = {c.run_id: c for c in spec.run_configs()}
    with StudyDB(out / DB_NAME) as db:
        ckpts = _study_checkpoints(spec, db)
    if which == "last":
        ckpts = ckpts[ckpts.is_last.astype(bool)]
    files = load_outputs(spec, ckpts, [spec.source_language])
    device = device if device is not None else resolve_device("auto")
    found = []
    for row in tqdm(list(ckpts.itertuples()), desc=f"predict {language}", unit="checkpoint", disable=not show_progress):
        if (row.checkpoint_id, spec.source_language) not in files:
            continue
        source = _read_outputs(files[(row.checkpoint_id, spec.source_language)])
        if parallel and len(rows) != len(source.logits):
            raise XlgmError(
                f"{text_file}: --parallel needs one row per source evaluation row ({len(source.logits)}), "
                f"got {len(rows)}"
            )
        config = configs[row.run_id]
        name = row.checkpoint_id.split("/", 1)[1]
        run_dir = Path(row.run_dir)
        model, tokenizer = load_run_model(config, run_dir, run_dir / "checkpoints" / name, task, device)
        data = tokenize_examples(tokenizer, rows, spec.eval_max_length())
        embed = spec.prediction.embedding_rows > 0
        target = predict_outputs(
            model,
            tokenizer,
            data,
            batch_size,
            embeddings=embed,
            layer=spec.prediction.embedding_layer,
            language=language,
            precision=precision,
        )
        if embed:
            assert target.embeddings is not None  # asked for with embeddings=embed
            target = replace(target, embeddings=target.embeddings[: spec.prediction.embedding_rows])
        values = label_free_measures(target, source, (), parallel)
        found.append(
            {
                "checkpoint_id": row.checkpoint_id,
                "run_id": row.run_id,
                "language": language,
                **source_measures(source, task),
                **values,
            }
        )
        del model
    if not found:
        raise XlgmError(f"{out}: no checkpoint with kept source outputs to compare the text with")
    new = derive_features(pd.DataFrame(found))
    features = [f for f in available_features(study, wanted) if f in new.columns and new[f].notna().all()]
    # every labelled target language of the study trains the predictor and anchors its checkpoints, except
    # the text's own language if the study has it: its labels must not reach its prediction
    known = study[study["language"] != language]
    model = GapRegressor(features, spec.prediction.alphas).fit(known)
    new["predicted_accuracy"] = model.predict(new, anchors=known)
    return new[["checkpoint_id", "run_id", "language", "source_accuracy", "predicted_accuracy", *features]]
