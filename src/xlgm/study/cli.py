"""`xlgm study run|analyze|report|check|schema`: the command-line side of studies.

Hooked into `xlgm` by `add_study_arguments` (the `study` subcommand, run by `cmd_study`); also runnable on its
own as `python -m xlgm.study.cli run SPEC ...`. Like `xlgm.cli` it imports the study modules inside its handlers,
so that `xlgm --help` imports neither torch nor pandas.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from xlgm.core.errors import OneLineParser, XlgmError, exit_status

STUDY_HELP = "run a grid of fine-tuning runs from a YAML spec, analyse it, report it"
STUDY_DESCRIPTION = (
    "Studies: train every grid point of a spec, evaluate and measure its "
    "checkpoints (resumable), correlate measures with cross-lingual accuracy."
)


def add_study_parser(subparsers) -> argparse.ArgumentParser:
    p = subparsers.add_parser("study", help=STUDY_HELP, description=STUDY_DESCRIPTION)
    add_study_arguments(p)
    return p


def add_study_arguments(p: argparse.ArgumentParser) -> None:
    """The flags of `xlgm study`: its subcommands run, analyze, report, check and schema."""
    sub = p.add_subparsers(dest="study_command", required=True)

    r = sub.add_parser("run", help="train, evaluate and measure every grid point (finished work is skipped)")
    r.add_argument("spec", help="the study spec (YAML), e.g. studies/demo.yaml")
    r.add_argument("--out", help="study folder (default: runs/study-NAME)")
    r.add_argument(
        "--executor",
        default="local",
        choices=["local", "ray"],
        help="local: one run after the other here; ray: one Ray task per run (default: local)",
    )
    r.add_argument("--address", help="Ray cluster address (default: start a local Ray instance)")
    r.add_argument("--cpus-per-task", type=int, help="Ray: CPUs per task without GPUs (default: CPUs / runs)")
    r.add_argument(
        "--device",
        default="auto",
        help="auto (a GPU when there is one), cpu, cuda or cuda:N: where training, evaluation and "
        "measures run; with --executor ray every task uses its own GPU unless this is cpu "
        "(default: auto)",
    )
    r.add_argument("--no-progress", action="store_true", help="no progress bars")
    r.add_argument(
        "--analyze",
        action="store_true",
        help="analyse, predict (`xlgm predict`) and write the report when the runs are done",
    )

    for name, text in (
        ("analyze", "correlate measures with accuracy; tables into OUT/analysis/"),
        ("report", "an HTML + markdown report with figures into OUT/report/"),
    ):
        a = sub.add_parser(name, help=text)
        a.add_argument("target", help="the study folder, or its spec (then --out or the default folder)")
        a.add_argument("--out", help="the study folder when TARGET is a spec")
    c = sub.add_parser("check", help="validate a spec: every error at once, or its study id and runs")
    c.add_argument("spec", help="the study spec (YAML)")
    sub.add_parser(
        "schema",
        help="print the spec's JSON Schema (for editors: `# yaml-language-server: $schema=FILE` in a spec)",
    )


def cmd_study(args: argparse.Namespace) -> None:
    if args.study_command == "run":
        cmd_run(args)
    elif args.study_command == "analyze":
        from xlgm.study.analyze import analyze_study

        analyze_study(args.target, args.out)
    elif args.study_command == "report":
        from xlgm.study.report import report_study

        report_study(args.target, args.out)
    elif args.study_command == "check":
        from xlgm.study.spec import load_spec

        spec = load_spec(args.spec)
        configs = spec.run_configs()
        measures, settings = len(spec.measures.names), len(spec.measures.items)
        print(
            f"{args.spec}: valid; study {spec.name} ({spec.study_id}): {len(configs)} runs, "
            f"{len(spec.languages)} languages, {measures} measures"
            + (f" at {settings} settings" if settings > measures else "")
        )
    elif args.study_command == "schema":
        import json

        from xlgm.study.schema import document_schema

        print(json.dumps(document_schema(), indent=2))
    else:  # pragma: no cover - argparse rejects it first
        raise XlgmError(f"unknown study command {args.study_command!r}")


def cmd_run(args: argparse.Namespace) -> None:
    from xlgm.study.runner import run_study
    from xlgm.study.spec import load_spec

    spec = load_spec(args.spec)
    text = Path(args.spec).read_text(encoding="utf-8")
    result = run_study(
        spec,
        args.out,
        args.executor,
        args.address,
        args.cpus_per_task,
        show_progress=not args.no_progress,
        spec_text=text,
        device=args.device,
    )
    print(
        f"study {spec.name} ({result.study_id}): {result.runs} runs, {result.units_done} of {result.units_total} "
        f"units done ({result.units_now} now); results: {result.out / 'study.sqlite'}"
    )
    if args.analyze:
        from xlgm.study.predict import predict_study
        from xlgm.study.report import report_study

        if spec.prediction.enabled:
            predict_study(spec, result.out)
        report_study(result.out)


def main(argv: list[str] | None = None) -> int:
    """`python -m xlgm.study.cli run ...` = `xlgm study run ...`."""
    parser = OneLineParser(prog="xlgm")
    add_study_parser(parser.add_subparsers(dest="command", required=True))
    argv = list(sys.argv[1:] if argv is None else argv)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    return exit_status(lambda: cmd_study(parser.parse_args(argv if argv[:1] == ["study"] else ["study", *argv])))


if __name__ == "__main__":
    sys.exit(main())
