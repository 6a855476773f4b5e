"""The `xlgm` command line: train, evaluate, measure, predict, export, study, demo.

Each subcommand parses its flags into a config and calls a recipe; recipes never parse arguments.
Problems with user input (`XlgmError`, and flags argparse rejects) are printed as one line, with no
traceback, and exit with code 2.

The subcommands import the library inside their functions, on purpose: `xlgm --help`, `--version` and a bad
flag answer without importing torch, transformers or the study's analysis stack.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from xlgm.core.errors import OneLineParser, XlgmError, exit_status
from xlgm.study.cli import STUDY_DESCRIPTION, STUDY_HELP, add_study_arguments, cmd_study


def _add_device_arguments(p: argparse.ArgumentParser, precision_default: str, precision_help: str) -> None:
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a CUDA GPU, else MPS, else the CPU), cpu, cuda, cuda:N or mps (default: auto)",
    )
    p.add_argument(
        "--mixed-precision", default=precision_default, choices=["auto", "no", "fp16", "bf16"], help=precision_help
    )


def _add_data_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--data-dir", help="a folder in XTREME's layout ({split}-{lang}.tsv); default: the bundled subset")
    p.add_argument("--hub", action="store_true", help="load the task from Hugging Face datasets (cache honoured)")


def _split(text: str) -> str:
    from xlgm.data.splits import check_split

    try:
        return check_split(text)
    except XlgmError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _task(text: str) -> str:
    """`--task`: a task name or a task file (read now, so later stages find it by name) -> the task's name."""
    from xlgm.data.tasks import get_task

    try:
        return get_task(text).name
    except XlgmError as err:
        raise argparse.ArgumentTypeError(str(err)) from None


def _add_no_verify_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--no-verify",
        action="store_true",
        help="load a run's weights without checking them against the SHA-256 the run recorded",
    )


def _add_random_head_argument(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--random-head",
        type=int,
        nargs="?",
        const=0,
        default=None,
        metavar="SEED",
        help="for a base model without a trained head for the task: use a random head drawn from SEED "
        "(default 0) instead of refusing; its accuracy is chance",
    )


# TrainConfig fields that are not flags of their own: --data-dir/--hub give data and data_dir, the objective
# flags (xlgm.objectives) give objective and objective_options.
NOT_TRAIN_FLAGS = ("data", "data_dir", "objective", "objective_options")


def _train_parser(p: argparse.ArgumentParser) -> None:
    from xlgm.core.options import add_config_arguments
    from xlgm.objectives import add_objective_arguments
    from xlgm.recipes.train import TrainConfig

    group = p.add_argument_group("training (TrainConfig; a study spec's `train:` takes the same options)")
    add_config_arguments(
        group,
        TrainConfig,
        exclude=NOT_TRAIN_FLAGS,
        types_={"task": _task, "train_split": _split, "select_split": _split},
    )
    _add_data_arguments(p)
    p.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU, else MPS, else the CPU), cpu, cuda, cuda:N or mps; not part of the run id",
    )
    p.add_argument("--out", help="run directory (default: runs/TASK-OBJECTIVE-RUNID)")
    p.add_argument(
        "--resume", action="store_true", help="continue the run in --out from its last checkpoint (the same config)"
    )
    p.add_argument("--overwrite", action="store_true", help="delete the run in --out first and train anew")
    p.add_argument(
        "--report-to",
        action="append",
        default=[],
        metavar="TRACKER",
        help="also log to tensorboard, wandb or mlflow (repeatable or a comma list; files under "
        "RUN/trackers; needs the extra, e.g. pip install 'xlgm[tensorboard]'; default: none)",
    )
    add_objective_arguments(p)


def _evaluate_parser(p: argparse.ArgumentParser) -> None:
    from xlgm.core.options import add_config_arguments
    from xlgm.recipes.evaluate import EvaluateConfig

    p.add_argument("target", help="a run directory, a checkpoint, or a model (embedded, a Hub id, a path)")
    p.add_argument("--languages", default="all", help="`all` or a comma list, e.g. en,de,sw")
    add_config_arguments(p, EvaluateConfig, exclude=EVALUATE_NOT_FLAGS, types_={"task": _task})
    _add_data_arguments(p)
    _add_random_head_argument(p)
    p.add_argument("--out", help="JSON report (default: RUN/eval-SPLIT.json, or ./eval-SPLIT.json)")
    p.add_argument("--db", help="SQLite results file (default: RUN/results.sqlite, or ./xlgm-results.sqlite)")
    p.add_argument("--allow-partial", action="store_true", help="use a run whose training did not finish")
    _add_no_verify_argument(p)


# Config fields that are not flags of their own: --languages, --measures, --set and --data are read by hand
# (comma lists, MEASURE.OPTION=VALUE, LANGUAGE-SPLIT), --data-dir/--hub give the source.
EVALUATE_NOT_FLAGS = ("languages", "source")
MEASURE_NOT_FLAGS = ("measures", "options", "data", "source")
MEASURE_DATA_NOT_FLAGS = ("language", "split")


def _measure_parser(p: argparse.ArgumentParser) -> None:
    from xlgm.core.options import add_config_arguments
    from xlgm.recipes.measure import MeasureConfig, MeasureData

    d = MeasureConfig()
    p.add_argument("target", nargs="?", help="a run directory (every checkpoint), a checkpoint directory, or a model")
    p.add_argument(
        "--measures",
        default=",".join(d.measures),
        help="comma list of measure names, or `all` (see `xlgm measure --list`)",
    )
    p.add_argument(
        "--data", default=f"{d.data.language}-{d.data.split}", help="LANGUAGE-SPLIT of the examples the measures see"
    )
    add_config_arguments(p, MeasureData, exclude=MEASURE_DATA_NOT_FLAGS)
    add_config_arguments(p, MeasureConfig, exclude=MEASURE_NOT_FLAGS, types_={"task": _task})
    _add_data_arguments(p)
    p.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="MEASURE.OPTION=VALUE",
        help="a measure option, e.g. --set sharpness-diff.num_draws=5 (repeatable; options: `xlgm measure --list`)",
    )
    _add_random_head_argument(p)
    p.add_argument("--out", help="JSON results (default: RUN/measures.json, or ./measures.json)")
    p.add_argument("--db", help="SQLite results file (default: RUN/results.sqlite, or ./xlgm-results.sqlite)")
    p.add_argument("--allow-partial", action="store_true", help="use a run whose training did not finish")
    _add_no_verify_argument(p)
    p.add_argument(
        "--list",
        action="store_true",
        help="list the measures with their references, and their options with help and default, and exit",
    )


def _export_parser(p: argparse.ArgumentParser) -> None:
    from xlgm.recipes.export import CHECKPOINT_CHOICES, ExportConfig

    d = ExportConfig()
    p.add_argument("run", help="a run directory")
    p.add_argument("out", help="the folder to write (must not exist or be empty, unless --overwrite)")
    p.add_argument("--checkpoint", default=d.checkpoint, choices=CHECKPOINT_CHOICES, help="which checkpoint")
    p.add_argument("--overwrite", action="store_true", help="replace a non-empty OUT")
    p.add_argument("--allow-partial", action="store_true", help="export a run whose training did not finish")
    _add_no_verify_argument(p)


def cmd_export(args: argparse.Namespace) -> None:
    from xlgm.recipes.export import ExportConfig, export_run
    from xlgm.runs import RunDir

    config = ExportConfig(
        checkpoint=args.checkpoint,
        overwrite=args.overwrite,
        allow_partial=args.allow_partial,
        verify=not args.no_verify,
    )
    out = export_run(args.run, args.out, config)
    run = RunDir(Path(args.run))
    index = run.index
    chosen = next(c for c in index["checkpoints"] if c["name"] == index[config.checkpoint])
    metric = selection_metric(run.config)
    accuracy = f", held-out {metric} {chosen['dev_accuracy']:.3f}" if chosen.get("dev_accuracy") is not None else ""
    print(f"exported {args.run} ({config.checkpoint} checkpoint: step {chosen['step']}{accuracy}) to {out}")


def selection_metric(run_config: dict) -> str:
    """What a run's held-out score (`dev_accuracy`) is: accuracy, or a token task's metric (its config says)."""
    return run_config.get("selection_metric", "accuracy")


# The shipped demo of each kind of task: its spec under xlgm/studies/ and the folder it writes by default.
DEMOS = {"xnli": ("demo.yaml", "runs/study-demo"), "udpos": ("demo-udpos.yaml", "runs/study-demo-udpos")}


def _demo_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--task",
        choices=sorted(DEMOS),
        default="xnli",
        help="xnli: sentence pairs (studies/demo.yaml); udpos: part-of-speech tags, a token task "
        "(studies/demo-udpos.yaml) (default: xnli)",
    )
    p.add_argument("--out", default=None, help="where the demo writes (default: runs/study-demo, -udpos for udpos)")
    p.add_argument("--spec", default=None, help="another spec than the task's shipped demo")


def _predict_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("target", help="a study folder, or its spec (then --out or the default folder)")
    p.add_argument("--out", help="the study folder when TARGET is a spec")
    p.add_argument(
        "--text", help="unlabelled text of a new language: a TSV of text_a, text_b (a label column is ignored)"
    )
    p.add_argument("--language", help="the language code of --text (a name for the output)")
    p.add_argument(
        "--parallel",
        action="store_true",
        help="--text is a row-by-row translation of the study's source evaluation rows",
    )
    p.add_argument(
        "--checkpoints",
        default="last",
        choices=["last", "all"],
        help="with --text: the last checkpoint of every run, or every measured one (default: last)",
    )
    _add_device_arguments(
        p,
        "auto",
        "with --text: autocast of the forward passes; auto: bf16 on a GPU or on a CPU "
        "with native bf16 (AMX, AVX512-BF16), else fp32 (default: auto)",
    )


def cmd_predict(args: argparse.Namespace) -> None:
    from xlgm.core import validation
    from xlgm.core.devices import resolve_device, resolve_precision
    from xlgm.study.analyze import resolve_study
    from xlgm.study.predict import predict_study, predict_text

    validation.device("--device", args.device)
    if args.text and not args.language:
        raise XlgmError("--text needs --language (the code to report the prediction under)")
    spec, out = resolve_study(args.target, args.out)
    if not args.text:
        predict_study(spec, out)
        return
    device = resolve_device(args.device)
    precision = resolve_precision(args.mixed_precision, device)
    table = predict_text(
        spec, out, args.text, args.language, args.parallel, args.checkpoints, device=device, precision=precision
    )
    print(table[["checkpoint_id", "source_accuracy", "predicted_accuracy"]].to_string(index=False, float_format="%.3f"))


# ------------------------------------------------------------------------------------------------------------
# `accelerate launch --cpu --num_processes N`: the launcher starts one process; `xlgm train` starts the N
# ------------------------------------------------------------------------------------------------------------

# Variables a launcher sets in each of the processes it starts (torch.distributed.run, accelerate, mpirun).
LAUNCHED_PROCESS_VARIABLES = (
    "WORLD_SIZE",
    "RANK",
    "LOCAL_RANK",
    "PMI_SIZE",
    "OMPI_COMM_WORLD_SIZE",
    "MV2_COMM_WORLD_SIZE",
)


def lost_cpu_processes() -> int | None:
    """N when this process was started by `accelerate launch --cpu --num_processes N` with N > 1.

    accelerate's launcher starts several CPU processes only through mpirun (`--mpirun_hostfile`); without it
    `--cpu` starts this one process and DDP never begins. N is read from the launcher's command line."""
    from accelerate.utils import parse_flag_from_env

    if not parse_flag_from_env("ACCELERATE_USE_CPU") or "MASTER_ADDR" not in os.environ:
        return None  # the launcher sets MASTER_ADDR only when asked for several processes
    if any(name in os.environ for name in LAUNCHED_PROCESS_VARIABLES):
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


def train_config(args: argparse.Namespace):
    """The TrainConfig of `xlgm train`'s flags."""
    from xlgm.core.options import config_kwargs
    from xlgm.objectives import objective_options
    from xlgm.recipes.train import TrainConfig

    name, options = objective_options(args)
    return TrainConfig(
        **config_kwargs(args, TrainConfig, exclude=NOT_TRAIN_FLAGS),
        data="hf" if args.hub else ("local" if args.data_dir else "bundled"),
        data_dir=args.data_dir,
        objective=name,
        objective_options=options,
    )


def cmd_train(args: argparse.Namespace) -> None:
    from xlgm.recipes.train import train

    processes = lost_cpu_processes()
    if processes:  # `accelerate launch --cpu --num_processes N` started this one process only
        raise SystemExit(relaunch_in_processes(processes, sys.argv[1:]))
    config = train_config(args)
    if args.data_dir and not Path(args.data_dir).is_dir():
        raise XlgmError(f"{args.data_dir}: expected a folder in XTREME's layout ({{split}}-{{lang}}.tsv)")
    out = Path(args.out or f"runs/{config.task}-{config.objective}-{config.run_id[:8]}")
    run_dir = train(
        config, out, device=args.device, resume=args.resume, overwrite=args.overwrite, report_to=args.report_to
    )
    print(f"run directory: {run_dir}")
    index = json.loads((run_dir / "checkpoints.json").read_text())
    best = next(c for c in index["checkpoints"] if c["name"] == index["best"]) if index.get("best") else None
    if best:
        metric = selection_metric(json.loads((run_dir / "config.json").read_text()))
        print(
            f"best checkpoint: {best['name']} (held-out {config.source_language} {metric} {best['dev_accuracy']:.3f})"
        )


def cmd_evaluate(args: argparse.Namespace) -> dict:
    import torch

    from xlgm.core import validation
    from xlgm.core.devices import resolve_device, resolve_precision
    from xlgm.core.options import config_kwargs
    from xlgm.data.loading import DataSource
    from xlgm.data.tasks import get_task, read_run_task
    from xlgm.models.load import load_target
    from xlgm.recipes.evaluate import EvaluateConfig, format_table, write_report
    from xlgm.recipes.tokens import evaluation_stage, format_token_table
    from xlgm.results import ResultsDB
    from xlgm.runs import RunDir, require_finished, resolve_target

    languages = None if args.languages == "all" else tuple(validation.comma_list("--languages", args.languages))
    config = EvaluateConfig(
        **config_kwargs(args, EvaluateConfig, exclude=EVALUATE_NOT_FLAGS),
        languages=languages,
        source=DataSource.from_args(args.data_dir, args.hub),
    )
    device = resolve_device(config.device)
    precision = resolve_precision(config.mixed_precision, device)
    target = resolve_target(args.target, config.checkpoint, verify=not args.no_verify)
    if target.run_dir:
        require_finished(target.run_dir, args.allow_partial)
    read_run_task(target.run_dir)
    run_config = RunDir(target.run_dir).config if target.run_dir else {}
    task_name = config.task or run_config.get("task", "xnli")
    if run_config and task_name != run_config["task"]:
        raise XlgmError(f"{args.target} was trained on {run_config['task']}, not {task_name}")
    task = get_task(task_name)
    codes = task.resolve_languages(config.languages)
    split = config.split or task.evaluation_split
    # Token tasks score words with the task's metric (recipes/tokens.py), sentence pairs by accuracy.
    load, evaluate = evaluation_stage(task)
    # Read every data file before loading the model: a malformed file fails in a second, not a minute.
    examples = load(task, codes, config.source, split, config.max_examples)
    model, tokenizer = load_target(
        target, task.num_labels, task.label_names, random_head=args.random_head, output=task.output
    )
    validation.max_length("--max-length", config.max_length, validation.model_positions(model.config))
    module: torch.nn.Module = model  # transformers' `to` is typed through functools.wraps, unbound to mypy
    module.to(device)
    report = evaluate(
        model,
        tokenizer,
        task,
        codes,
        config.source,
        split,
        config.max_examples,
        config.max_length,
        config.batch_size,
        examples=examples,
        precision=precision,
    )
    report["target"] = target.label
    base = target.run_dir or Path(".")
    out = Path(args.out) if args.out else base / f"eval-{split}.json"
    checkpoint_id = (
        f"{run_config['run_id']}/{target.checkpoint.name}" if target.run_dir and target.checkpoint else target.model
    )
    with ResultsDB(args.db or (base / ("results.sqlite" if target.run_dir else "xlgm-results.sqlite"))) as db:
        write_report(report, out)  # after the results file opened: a damaged one leaves the report as it was
        for lang, r in report["languages"].items():
            db.add_evaluation(
                checkpoint_id,
                task.name,
                lang,
                split,
                report["data"],
                r["num_examples"],
                r["accuracy"],
                report["machine"],
            )
    print(format_token_table(report) if task.is_token_task else format_table(report))
    print(f"{report['examples_per_second']:.0f} examples/s; report: {out}")
    return report


def cmd_measure(args: argparse.Namespace) -> list[dict]:
    from xlgm.core.options import config_kwargs
    from xlgm.data.loading import DataSource
    from xlgm.data.tasks import get_task, read_run_task
    from xlgm.measures.base import get_measure, list_measures, option_help
    from xlgm.recipes.measure import (
        MeasureConfig,
        MeasureData,
        expand_targets,
        measure_checkpoints,
        parse_measure_options,
        read_records,
        resolve_measures,
        write_records,
    )
    from xlgm.results import ResultsDB
    from xlgm.runs import RunDir, require_finished

    if args.list:
        for kind, title in (
            ("model", "measures of a checkpoint on labelled data (xlgm measure)"),
            ("group", "measures of a group of runs (computed by studies when the group exists)"),
            ("outputs", "label-free measures of outputs on unlabelled text (xlgm predict)"),
        ):
            print(f"# {title}")
            for name in list_measures(kind):
                spec = get_measure(name)
                sign = {1: "+", -1: "-"}.get(spec.expected_sign or 0, "?")
                print(f"{name:<26} {spec.reference}\n{'':<26} expected vs accuracy: {sign} {spec.direction}")
                for default, text in option_help(spec):
                    print(f"{'':<28}{default:<22} {text}" if len(default) < 22 else f"{'':<28}{default}  {text}")
        print("# expected: + higher value goes with higher accuracy (better transfer), - with lower, ? not claimed")
        return []
    if not args.target:
        raise XlgmError("xlgm measure needs a TARGET: a run directory, a checkpoint directory or a model")
    config = MeasureConfig(
        **config_kwargs(args, MeasureConfig, exclude=MEASURE_NOT_FLAGS),
        measures=tuple(resolve_measures(args.measures)),
        options=parse_measure_options(args.set),
        data=MeasureData.parse(args.data, **config_kwargs(args, MeasureData, exclude=MEASURE_DATA_NOT_FLAGS)),
        source=DataSource.from_args(args.data_dir, args.hub),
    )
    targets = expand_targets(args.target, config.checkpoint, verify=not args.no_verify)
    run_dir = targets[0].run_dir
    if run_dir:
        require_finished(run_dir, args.allow_partial)
    read_run_task(run_dir)
    run_task = RunDir(run_dir).config["task"] if run_dir else None
    task_name = config.task or run_task or "xnli"
    if run_task and task_name != run_task:
        raise XlgmError(f"{args.target} was trained on {run_task}, not {task_name}")
    task = get_task(task_name)
    task.resolve_languages([config.data.language])
    base = run_dir or Path(".")
    out = Path(args.out) if args.out else base / "measures.json"
    read_records(out)  # a file there that is not a measures file fails now, before any work
    with ResultsDB(args.db or (base / ("results.sqlite" if run_dir else "xlgm-results.sqlite"))) as db:
        records = measure_checkpoints(targets, task, config, db=db, random_head=args.random_head)
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

    spec_file, default_out = DEMOS[args.task]
    spec_path = Path(args.spec) if args.spec else Path(__file__).parent / "studies" / spec_file
    spec = load_spec(spec_path)
    start = time.perf_counter()
    result = run_study(
        spec,
        args.out or default_out,
        "local",
        None,
        None,
        show_progress=True,
        spec_text=spec_path.read_text(encoding="utf-8"),
    )
    analyze_study(result.out)  # prints the top correlations
    predict_study(spec, result.out)  # prints the label-free predictor's errors
    report_study(result.out)
    print(f"demo finished in {(time.perf_counter() - start) / 60:.1f} min; results: {result.out / 'study.sqlite'}")


@dataclass(frozen=True)
class Command:
    """A subcommand: its one-line help, its longer description, what adds its flags, what runs it."""

    help: str
    add_arguments: Callable[[argparse.ArgumentParser], None]
    run: Callable[[argparse.Namespace], object]
    description: str | None = None


COMMANDS = {
    "train": Command("fine-tune on the source language and write a run directory", _train_parser, cmd_train),
    "evaluate": Command("zero-shot accuracy on every language of a task", _evaluate_parser, cmd_evaluate),
    "measure": Command(
        "generalization measures of a checkpoint, or of every checkpoint of a run", _measure_parser, cmd_measure
    ),
    "predict": Command(
        "predict accuracy per language from unlabelled text (label-free measures)",
        _predict_parser,
        cmd_predict,
        description="Label-free measures of a study's kept outputs, a ridge predictor of accuracy "
        "per (checkpoint, language), cross-validated leave-one-language-out and "
        "leave-one-run-out against the baselines; or, with --text, predictions for "
        "a new language's unlabelled text.",
    ),
    "export": Command(
        "write a run's checkpoint as a Hugging Face model folder",
        _export_parser,
        cmd_export,
        description="A folder AutoModelForSequenceClassification and AutoTokenizer load: the full "
        "weights (safetensors), a config naming the task's labels, the tokenizer.",
    ),
    "demo": Command(
        "the embedded demo study: train, evaluate, measure, analyse, report (no downloads)", _demo_parser, cmd_demo
    ),
    "study": Command(STUDY_HELP, add_study_arguments, cmd_study, description=STUDY_DESCRIPTION),
}


def _show_defaults(parser: argparse.ArgumentParser, seen: set[int] | None = None) -> None:
    """Every option's help ends with its default, unless the help already says it or there is none to say
    (None, False of a switch): argparse's ArgumentDefaultsHelpFormatter would print `(default: None)` and
    repeat the defaults the help strings name in words."""
    seen = set() if seen is None else seen
    if id(parser) in seen:
        return
    seen.add(id(parser))
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for child in action.choices.values():
                _show_defaults(child, seen)
            continue
        default = action.default
        if (
            not action.option_strings
            or action.help == argparse.SUPPRESS
            or default is None
            or default is False  # 0 is a default to show
            or default in ([], "")
            or default is argparse.SUPPRESS
            or isinstance(action, (argparse._HelpAction, argparse._VersionAction))
        ):
            continue
        if action.help is None:
            action.help = "(default: %(default)s)"
        elif "default" not in action.help.lower():
            action.help += " (default: %(default)s)"


def build_parser(commands: Iterable[str] | None = None) -> argparse.ArgumentParser:
    """The `xlgm` parser; `commands`: the subcommands that get their flags (default: all). The others get their
    name and help only, which is all `xlgm --help` shows: the flags of train, evaluate, measure and export come
    from configs whose modules import torch, seconds a command that does not run them need not wait."""
    from xlgm import __version__

    wanted = set(COMMANDS if commands is None else commands)
    parser = OneLineParser(prog="xlgm", description=__doc__.splitlines()[0])
    parser.add_argument("--version", action="version", version=f"xlgm {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name, command in COMMANDS.items():
        p = sub.add_parser(name, help=command.help, description=command.description)
        if name in wanted:
            command.add_arguments(p)
    _show_defaults(parser)
    return parser


def named_command(argv: Sequence[str]) -> str | None:
    """The subcommand `argv` names: its first word that is not a flag (`xlgm` itself takes no flag with a
    value), or None."""
    return next((word for word in argv if not word.startswith("-")), None)


def main(argv: list[str] | None = None) -> int:
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    words = sys.argv[1:] if argv is None else argv

    def run() -> None:
        args = build_parser(commands=[named_command(words) or ""]).parse_args(words)
        COMMANDS[args.command].run(args)

    return exit_status(run)


if __name__ == "__main__":
    sys.exit(main())
