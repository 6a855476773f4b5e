"""`xlgm --version`, defaults in every subcommand's --help, and `xlgm measure --list` with options."""

from __future__ import annotations

import argparse

import pytest

import xlgm
from xlgm.cli import build_parser, main
from xlgm.measures.base import get_measure, list_measures, option_help
from xlgm.recipes.measure import parse_measure_options


def test_version(capsys):
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"xlgm {xlgm.__version__}"


def _subparsers(parser: argparse.ArgumentParser, prefix: str = ""):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, child in action.choices.items():
                yield f"{prefix}{name}", child
                yield from _subparsers(child, f"{prefix}{name} ")


def test_every_option_with_a_default_says_it_once():
    parser = build_parser()
    checked = 0
    for name, sub in _subparsers(parser):
        text = sub.format_help()
        for action in sub._actions:
            if not action.option_strings or action.default in (None, False, [], argparse.SUPPRESS):
                continue
            if isinstance(action, argparse._HelpAction):
                continue
            help_text = action.help % {"default": action.default} if "%(" in action.help else action.help
            assert help_text.lower().count("default") == 1, (name, action.option_strings, help_text)
            checked += 1
        assert "(default: None)" not in text and "(default: False)" not in text, name
    assert checked > 30
    train_help = " ".join(dict(_subparsers(parser))["train"].format_help().split())
    assert "--lr LR peak learning rate (linear warm-up and decay) (default: 0.0001)" in train_help
    assert "--holdout-fraction FRACTION the held-out part" in train_help and "(default: 0.1)" in train_help
    assert "--seed SEED seeds the head, the data order and the objective (default: 0)" in train_help


def test_train_flags_are_the_train_config_fields():
    """One source: every TrainConfig field but those given otherwise is a flag of `xlgm train`, with the field's
    default and help, and a spec's `train:` section takes the same names."""
    import dataclasses

    from xlgm.cli import NOT_TRAIN_FLAGS
    from xlgm.core.options import help_of
    from xlgm.recipes.train import TrainConfig
    from xlgm.study.schema import NOT_IN_TRAIN, train_model

    train = dict(_subparsers(build_parser()))["train"]
    by_dest = {a.dest: a for a in train._actions}
    for f in dataclasses.fields(TrainConfig):
        if f.name in NOT_TRAIN_FLAGS:
            continue
        action = by_dest[f.name]
        assert action.option_strings == ["--" + f.name.replace("_", "-")]
        assert action.help.startswith(help_of(f)), f.name
        assert action.default == f.default, f.name
    spec_keys = set(train_model().model_fields)
    assert spec_keys == {f.name for f in dataclasses.fields(TrainConfig)} - set(NOT_IN_TRAIN)


def test_the_set_example_is_accepted_by_its_measure():
    measure = dict(_subparsers(build_parser()))["measure"]
    (set_help,) = [a.help for a in measure._actions if "--set" in a.option_strings]
    assert "--set sharpness-diff.num_draws=5" in set_help
    options = parse_measure_options(["sharpness-diff.num_draws=5"])
    from xlgm.measures.base import resolve_config

    assert resolve_config(get_measure("sharpness-diff"), options["sharpness-diff"]).num_draws == 5


def test_set_reads_numbers_yaml_leaves_as_text():
    """YAML 1.1 reads `1e-4` (no dot) as a string: the option's field type makes it a number."""
    from xlgm.core.errors import XlgmError
    from xlgm.measures.base import resolve_config

    options = parse_measure_options(["sharpness-alpha.upper=1e-4", "sharpness-alpha.search_depth=14"])
    assert options["sharpness-alpha"]["upper"] == "1e-4"
    config = resolve_config(get_measure("sharpness-alpha"), options["sharpness-alpha"])
    assert config.upper == 1e-4 and config.search_depth == 14
    assert resolve_config(get_measure("sharpness-diff"), {"sigma": "1e-3", "mode": "paper"}).sigma == 1e-3
    with pytest.raises(XlgmError, match="option upper of measure sharpness-alpha: expected a number, got 'high'"):
        resolve_config(get_measure("sharpness-alpha"), {"upper": "high"})


def test_measure_list_shows_every_option_with_its_help_and_default(capsys):
    assert main(["measure", "--list"]) == 0
    lines = {" ".join(line.split()) for line in capsys.readouterr().out.splitlines()}
    sigma = "sigma=None σ, the noise's standard deviation: absolute in mode paper, relative to |w0| elementwise"
    assert any(line.startswith(sigma) for line in lines)
    assert (
        "mode='default' default: the corrected measure; paper: as the published code computes it (one of "
        "default, paper)" in lines
    )
    shown = 0
    for name in list_measures(None):
        for default, text in option_help(get_measure(name)):
            assert text, f"{name}: option {default} has no help"
            assert " ".join(f"{default} {text}".split()) in lines, (name, default)
            shown += 1
    assert shown > 60


def test_objective_flags_say_each_objectives_default():
    train_help = " ".join(dict(_subparsers(build_parser()))["train"].format_help().split())
    assert "--rho RHO sam/asam neighbourhood size (default: sam 0.05, asam 0.5)" in train_help
    assert "--asam-eta ETA asam: eta in T_w = |w| + eta (default: 0.01)" in train_help


HEAVY_MODULES = ("torch", "transformers", "accelerate", "pandas", "scipy")


@pytest.mark.parametrize(
    "argv",
    [["--version"], ["--help"], ["demo", "--help"], ["predict", "--help"], ["study", "--help"], ["study", "run", "-h"]],
)
def test_version_and_help_import_no_heavy_library(argv):
    """The start-up cost of `xlgm --help` is its imports: these must not import torch and friends (the flags of
    train, evaluate, measure and export come from configs in torch modules, so their --help does)."""
    import subprocess
    import sys

    probe = (
        "import sys, contextlib, io\n"
        "from xlgm.cli import main\n"
        "with contextlib.redirect_stdout(io.StringIO()):\n"
        "    try:\n"
        f"        main({argv!r})\n"
        "    except SystemExit:\n"
        "        pass\n"
        f"print(sorted(m for m in {HEAVY_MODULES!r} if m in sys.modules))\n"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", (argv, done.stdout, done.stderr)


def test_a_named_command_gets_its_flags_and_the_others_only_their_help():
    from xlgm.cli import COMMANDS, named_command

    assert named_command(["--version"]) is None
    assert named_command(["study", "run", "x.yaml"]) == "study"
    parser = build_parser(commands=["export"])
    subs = dict(_subparsers(parser))
    assert set(subs) >= set(COMMANDS)
    assert "--checkpoint" in subs["export"].format_help()
    assert "--lr" not in subs["train"].format_help()
