"""The `xlgm` command line: train, evaluate, measure, study, demo.

Each subcommand parses its flags into a config and calls a recipe; recipes never parse arguments.
Problems with user input (`XlgmError`) are printed as one line, with no traceback, and exit with code 2.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path

from xlgm.errors import XlgmError
from xlgm.study.cli import add_study_parser, cmd_study


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="a folder in XTREME's layout ({split}-{lang}.tsv); default: the bundled subset")
    p.add_argument("--hub", action="store_true", help="load the task from Hugging Face datasets (cache honoured)")


def _train_parser(sub) -> None:
    from xlgm.objectives import add_objective_arguments
    from xlgm.recipes.train import FREEZE_CHOICES, TrainConfig

    d = TrainConfig()
    p = sub.add_parser("train", help="fine-tune on the source language and write a run directory")
    p.add_argument("--model", default=d.model, help="`embedded`, a Hub id or a local folder (default: embedded)")
    p.add_argument("--task", default=d.task, choices=["xnli", "pawsx"])
    p.add_argument("--source-language", default=d.source_language)
    _add_data_arguments(p)
    p.add_argument("--train-split", default=d.train_split, choices=["train", "dev"])
    p.add_argument("--select-split", default=d.select_split, choices=["dev", "test"],
                   help="split for checkpoint selection (a held-out slice when it equals the train split)")
    p.add_argument("--holdout-fraction", type=float, default=d.holdout_fraction)
    p.add_argument("--max-train-examples", type=int)
    p.add_argument("--max-length", type=int, default=d.max_length)
    p.add_argument("--epochs", type=float, default=d.epochs)
    p.add_argument("--batch-size", type=int, default=d.batch_size, help="micro-batch size per device")
    p.add_argument("--grad-accum", type=int, default=d.grad_accum)
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--weight-decay", type=float, default=d.weight_decay)
    p.add_argument("--warmup-ratio", type=float, default=d.warmup_ratio)
    p.add_argument("--max-grad-norm", type=float, default=d.max_grad_norm)
    p.add_argument("--seed", type=int, default=d.seed)
    p.add_argument("--mixed-precision", default=d.mixed_precision, choices=["auto", "no", "fp16", "bf16"])
    p.add_argument("--freeze", default=None, choices=FREEZE_CHOICES,
                   help="freeze word embeddings or all embeddings (default: word for the embedded model, else none)")
    p.add_argument("--save-every", type=int, default=d.save_every, help="checkpoint every N steps (0: last only)")
    p.add_argument("--out", help="run directory (default: runs/TASK-OBJECTIVE-RUNID)")
    add_objective_arguments(p)


def _evaluate_parser(sub) -> None:
    p = sub.add_parser("evaluate", help="zero-shot accuracy on every language of a task")
    p.add_argument("target", help="a run directory, a checkpoint, or a model (embedded, a Hub id, a path)")
    p.add_argument("--task", default=None, choices=["xnli", "pawsx"], help="default: the run's task, else xnli")
    p.add_argument("--languages", default="all", help="`all` or a comma list, e.g. en,de,sw")
    _add_data_arguments(p)
    p.add_argument("--split", default="test", choices=["dev", "test", "train"])
    p.add_argument("--checkpoint", default="best", choices=["best", "last"], help="which checkpoint of a run")
    p.add_argument("--max-examples", type=int, help="at most N examples per language")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--max-length", type=int, default=128)
    p.add_argument("--out", help="JSON report (default: RUN/eval-SPLIT.json, or ./eval-SPLIT.json)")
    p.add_argument("--db", help="SQLite results file (default: RUN/results.sqlite, or ./xlgm-results.sqlite)")


def _measure_parser(sub) -> None:
    p = sub.add_parser("measure", help="generalization measures of a checkpoint, or of every checkpoint of a run")
    p.add_argument("target", nargs="?", help="a run directory (every checkpoint), a checkpoint directory, or a model")
    p.add_argument("--measures", default="margin,sharpness-diff,frobenius-distance",
                   help="comma list of measure names, or `all` (see `xlgm measure --list`)")
    p.add_argument("--data", default="en-dev", help="LANGUAGE-SPLIT of the examples the measures see")
    _add_data_arguments(p)
    p.add_argument("--task", default=None, choices=["xnli", "pawsx"], help="default: the run's task, else xnli")
    p.add_argument("--checkpoint", default="all", choices=["all", "best", "last"], help="which checkpoints of a run")
    p.add_argument("--max-examples", type=int, default=256)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--params", default=None, help="parameter filter, a regex on names (default: trained parameters)")
    p.add_argument("--set", action="append", default=[], metavar="MEASURE.OPTION=VALUE",
                   help="a measure option, e.g. --set sharpness-diff.k=5 (repeatable)")
    p.add_argument("--out", help="JSON results (default: RUN/measures.json, or ./measures.json)")
    p.add_argument("--db", help="SQLite results file (default: RUN/results.sqlite, or ./xlgm-results.sqlite)")
    p.add_argument("--list", action="store_true", help="list the measures with their references and exit")


def _demo_parser(sub) -> None:
    p = sub.add_parser("demo", help="the embedded demo study: train, evaluate, measure, analyse, report (no downloads)")
    p.add_argument("--out", default="runs/study-demo", help="where the demo writes (default: runs/study-demo)")
    p.add_argument("--spec", default=None, help="another spec than the shipped studies/demo.yaml")


def _predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="predict accuracy per language from unlabelled text (label-free measures)",
                       description="Label-free measures of a study's kept outputs, a ridge predictor of accuracy "
                                   "per (checkpoint, language), cross-validated leave-one-language-out and "
                                   "leave-one-run-out against the baselines; or, with --text, predictions for "
                                   "a new language's unlabelled text.")
    p.add_argument("target", help="a study folder, or its spec (then --out or the default folder)")
    p.add_argument("--out", help="the study folder when TARGET is a spec")
    p.add_argument("--text", help="unlabelled text of a new language: a TSV of text_a, text_b (a label column is "
                                  "ignored)")
    p.add_argument("--language", help="the language code of --text (a name for the output)")
    p.add_argument("--parallel", action="store_true",
                   help="--text is a row-by-row translation of the study's source evaluation rows")
    p.add_argument("--checkpoints", default="last", choices=["last", "all"],
                   help="with --text: the last checkpoint of every run, or every measured one (default: last)")


def cmd_predict(args: argparse.Namespace) -> None:
    from xlgm.study.analyze import resolve_study
    from xlgm.study.predict import predict_study, predict_text

    spec, out = resolve_study(args.target, args.out)
    if not args.text:
        predict_study(spec, out)
        return
    if not args.language:
        raise XlgmError("--text needs --language (the code to report the prediction under)")
    table = predict_text(spec, out, args.text, args.language, args.parallel, args.checkpoints)
    print(table[["checkpoint_id", "source_accuracy", "predicted_accuracy"]].to_string(index=False,
                                                                                      float_format="%.3f"))


def cmd_train(args: argparse.Namespace) -> None:
    from xlgm.objectives import objective_options
    from xlgm.recipes.train import TrainConfig, train

    name, options = objective_options(args)
    freeze = args.freeze or ("word" if args.model == "embedded" else "none")
    config = TrainConfig(
        model=args.model, task=args.task, source_language=args.source_language,
        data="hf" if args.hub else ("local" if args.data_dir else "bundled"), data_dir=args.data_dir,
        train_split=args.train_split, select_split=args.select_split, holdout_fraction=args.holdout_fraction,
        max_train_examples=args.max_train_examples, max_length=args.max_length, epochs=args.epochs,
        batch_size=args.batch_size, grad_accum=args.grad_accum, lr=args.lr, weight_decay=args.weight_decay,
        warmup_ratio=args.warmup_ratio, max_grad_norm=args.max_grad_norm, seed=args.seed,
        mixed_precision=args.mixed_precision, freeze=freeze, save_every=args.save_every,
        objective=name, objective_options=options)
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise XlgmError(f"{args.data_dir}: expected a folder in XTREME's layout ({{split}}-{{lang}}.tsv)")
    out = Path(args.out or f"runs/{config.task}-{config.objective}-{config.run_id[:8]}")
    run_dir = train(config, out)
    print(f"run directory: {run_dir}")
    index = json.loads((run_dir / "checkpoints.json").read_text())
    best = next(c for c in index["checkpoints"] if c["name"] == index["best"]) if index.get("best") else None
    if best:
        print(f"best checkpoint: {best['name']} (held-out {config.source_language} accuracy {best['dev_accuracy']:.3f})")


def cmd_evaluate(args: argparse.Namespace) -> dict:
    from xlgm.data.loading import DataSource
    from xlgm.data.tasks import get_task
    from xlgm.models.load import load_target
    from xlgm.recipes.evaluate import evaluate_languages, format_table, load_languages, write_report
    from xlgm.results import ResultsDB
    from xlgm.runs import RunDir, resolve_target

    target = resolve_target(args.target, args.checkpoint)
    run_config = RunDir(target.run_dir).config if target.run_dir else {}
    task_name = args.task or run_config.get("task", "xnli")
    if run_config and task_name != run_config["task"]:
        raise XlgmError(f"{args.target} was trained on {run_config['task']}, not {task_name}")
    task = get_task(task_name)
    languages = task.resolve_languages(args.languages)
    source = DataSource.from_args(args.data_dir, args.hub)
    # Read every data file before loading the model: a malformed file fails in a second, not a minute.
    examples = load_languages(task, languages, source, args.split, args.max_examples)
    model, tokenizer = load_target(target, task.num_labels, task.label_names)
    report = evaluate_languages(model, tokenizer, task, languages, source, args.split, args.max_examples,
                                args.max_length, args.batch_size, examples=examples)
    report["target"] = target.label
    base = target.run_dir or Path(".")
    out = Path(args.out) if args.out else base / f"eval-{args.split}.json"
    write_report(report, out)
    checkpoint_id = f"{run_config['run_id']}/{target.checkpoint.name}" if target.run_dir else target.model
    with ResultsDB(args.db or (base / ("results.sqlite" if target.run_dir else "xlgm-results.sqlite"))) as db:
        for lang, r in report["languages"].items():
            db.add_evaluation(checkpoint_id, task.name, lang, args.split, report["data"], r["num_examples"], r["accuracy"])
    print(format_table(report))
    print(f"{report['examples_per_second']:.0f} examples/s; report: {out}")
    return report


def cmd_measure(args: argparse.Namespace) -> list[dict]:
    from xlgm.data.loading import DataSource
    from xlgm.data.tasks import get_task
    from xlgm.measures.base import get_measure, list_measures
    from xlgm.recipes.measure import (MeasureData, expand_targets, measure_checkpoints, parse_measure_options,
                                      resolve_measures, write_records)
    from xlgm.results import ResultsDB
    from xlgm.runs import RunDir

    if args.list:
        for kind, title in (("model", "measures of a checkpoint on labelled data (xlgm measure)"),
                            ("group", "measures of a group of runs (computed by studies when the group exists)"),
                            ("outputs", "label-free measures of outputs on unlabelled text (xlgm predict)")):
            print(f"# {title}")
            for name in list_measures(kind):
                spec = get_measure(name)
                sign = {1: "+", -1: "-"}.get(spec.expected_sign, "?")
                print(f"{name:<26} {spec.reference}\n{'':<26} expected vs accuracy: {sign} {spec.direction}")
        print("# expected: + higher value goes with higher accuracy (better transfer), - with lower, ? not claimed")
        return []
    if not args.target:
        raise XlgmError("xlgm measure needs a TARGET: a run directory, a checkpoint directory or a model")
    measures = resolve_measures(args.measures)
    options = parse_measure_options(args.set)
    unknown = sorted(set(options) - set(measures))
    if unknown:
        raise XlgmError(f"--set names measure(s) not requested: {', '.join(unknown)}")
    targets = expand_targets(args.target, args.checkpoint)
    run_dir = targets[0].run_dir
    task_name = args.task or (RunDir(run_dir).config["task"] if run_dir else "xnli")
    task = get_task(task_name)
    data = MeasureData.parse(args.data, max_examples=args.max_examples, batch_size=args.batch_size)
    task.resolve_languages([data.language])
    base = run_dir or Path(".")
    with ResultsDB(args.db or (base / ("results.sqlite" if run_dir else "xlgm-results.sqlite"))) as db:
        records = measure_checkpoints(targets, task, measures, options, data, DataSource.from_args(args.data_dir, args.hub),
                                      seed=args.seed, param_filter=args.params, db=db)
    out = Path(args.out) if args.out else base / "measures.json"
    write_records(records, out)
    for r in records:
        spread = f" ± {r['spread']:.4g}" if r.get("spread") is not None else ""
        print(f"{r['checkpoint_id']:<32} {r['name']:<24} {r['value']:.6g}{spread}  ({r['seconds']:.1f} s)")
    print(f"results: {out}")
    return records


def cmd_demo(args: argparse.Namespace) -> None:
    """The shipped demo study, then its analysis and report (a rerun resumes where it stopped)."""
    import time

    from xlgm.study.analyze import analyze_study
    from xlgm.study.predict import predict_study
    from xlgm.study.report import report_study
    from xlgm.study.runner import run_study
    from xlgm.study.spec import load_spec

    spec_path = Path(args.spec) if args.spec else Path(__file__).parent / "studies" / "demo.yaml"
    spec = load_spec(spec_path)
    start = time.perf_counter()
    result = run_study(spec, args.out, "local", None, None, show_progress=True,
                       spec_text=spec_path.read_text(encoding="utf-8"))
    analyze_study(result.out)  # prints the top correlations
    predict_study(spec, result.out)  # prints the label-free predictor's errors
    report_study(result.out)
    print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min; results: {result.out / 'study.sqlite'}")


COMMANDS = {"train": cmd_train, "evaluate": cmd_evaluate, "measure": cmd_measure, "predict": cmd_predict,
            "demo": cmd_demo, "study": cmd_study}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="xlgm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    _train_parser(sub)
    _evaluate_parser(sub)
    _measure_parser(sub)
    _predict_parser(sub)
    _demo_parser(sub)
    add_study_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        COMMANDS[args.command](args)
    except XlgmError as err:
        print(f"xlgm: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("xlgm: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
