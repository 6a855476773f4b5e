"""The registry, configs, validation errors, CLI options, and every objective under accelerate."""

from __future__ import annotations

import argparse
import dataclasses
import math

import pytest
import torch
from objectives_testlib import (
    make_batch,
    make_rows,
    params_of,
    run_steps,
    same_params,
    single_thread,  # noqa: F401  (autouse fixture)
    split,
    tiny_model,
    wordpiece_tokenizer,
)

from xlgm.core.errors import XlgmError
from xlgm.objectives import (
    OBJECTIVE_CLASSES,
    OBJECTIVES,
    add_objective_arguments,
    build_config,
    build_objective,
    describe_objective,
    objective_flags,
    objective_from_args,
    objective_options,
    objective_spec,
    option,
)


def test_registry_and_defaults():
    assert list(OBJECTIVES) == [cls.name for cls in OBJECTIVE_CLASSES]
    assert list(OBJECTIVES)[:5] == ["adamw", "fisher", "mvr", "sam", "asam"]  # module, then definition order
    assert describe_objective(build_objective("adamw")) == {"objective": "adamw"}
    sam = build_objective("sam")
    assert (sam.name, sam.config.rho, sam.config.shared_perturbation) == ("sam", 0.05, False)
    asam = build_objective("ASAM")
    assert (asam.name, asam.config.rho, asam.config.eta) == ("asam", 0.5, 0.01)
    fisher = build_objective("fisher")
    assert (fisher.config.lam, fisher.config.sub_batch, fisher.config.every) == (0.1, None, 1)
    mvr = build_objective("mvr")
    # no λ given and no task: XNLI's default (the per-task defaults are tested in test_objective_defaults.py)
    assert (mvr.config.lam, mvr.lam, mvr.config.rate, mvr.config.max_length) == (None, 0.2, 0.2, None)
    assert describe_objective(build_objective("sam", rho=0.1)) == {
        "objective": "sam",
        "rho": 0.1,
        "shared_perturbation": False,
    }
    for spec in OBJECTIVES.values():
        assert spec.reference and spec.summary


def test_configs_are_frozen():
    config = build_config("sam", rho=0.2)
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.rho = 0.3  # type: ignore[misc]


@pytest.mark.parametrize(
    "name,options,message",
    [
        ("sam", {"rho": -0.1}, r"^rho \(--rho\): expected a number >= 0, got -0.1$"),
        ("asam", {"rho": math.nan}, "finite"),
        ("asam", {"eta": -1}, "eta"),
        ("sam", {"rho": "big"}, "expected a finite number, got 'big'"),
        ("sam", {"rho": True}, "expected a finite number, got True"),
        ("sam", {"shared_perturbation": "yes"}, "true or false"),
        ("fisher", {"lam": -1.0}, "fisher-lambda"),
        ("fisher", {"lam": math.inf}, "finite"),
        ("fisher", {"sub_batch": 0}, "fisher-sub-batch"),
        ("fisher", {"sub_batch": 2.5}, "integer"),
        ("fisher", {"every": 0}, "fisher-every"),
        ("mvr", {"lam": -0.6}, "mvr-lambda"),
        ("mvr", {"rate": 1.0}, r"\[0, 1\)"),
        ("mvr", {"rate": -0.1}, "mvr-rate"),
        ("mvr", {"max_length": 0}, "max_length"),
        ("adamw", {"rho": 0.1}, "no option rho"),
        ("sam", {"lam": 0.1}, "its options are: rho, shared_perturbation"),
        ("sgd", {}, "unknown objective 'sgd'"),
    ],
)
def test_argument_validation_errors(name, options, message):
    with pytest.raises(XlgmError, match=message):
        build_objective(name, **options)


def test_boundaries_are_accepted():
    assert build_objective("sam", rho=0).config.rho == 0.0
    assert build_objective("mvr", rate=0, lam=0).config.rate == 0.0
    assert build_objective("fisher", sub_batch=1, every=1, lam=0).config.sub_batch == 1
    assert build_objective("fisher", sub_batch=4.0).config.sub_batch == 4


def parser():
    return add_objective_arguments(argparse.ArgumentParser(prog="xlgm train"))


def test_cli_options():
    args = parser().parse_args([])
    assert objective_from_args(args).name == "adamw"
    args = parser().parse_args(["--objective", "SAM", "--rho", "0.1", "--sam-shared-perturbation"])
    objective = objective_from_args(args)
    assert (objective.name, objective.config.rho, objective.config.shared_perturbation) == ("sam", 0.1, True)
    args = parser().parse_args(["--objective", "asam", "--asam-eta", "0.05"])
    assert (objective_from_args(args).config.rho, objective_from_args(args).config.eta) == (0.5, 0.05)
    args = parser().parse_args(
        ["--objective", "fisher", "--fisher-lambda", "0.3", "--fisher-sub-batch", "8", "--fisher-every", "10"]
    )
    config = objective_from_args(args).config
    assert (config.lam, config.sub_batch, config.every) == (0.3, 8, 10)
    args = parser().parse_args(["--objective", "mvr", "--mvr-lambda", "0.5", "--mvr-rate", "0.1"])
    config = objective_from_args(args, max_length=128).config
    assert (config.lam, config.rate, config.max_length) == (0.5, 0.1, 128)
    # extra options go only where they belong
    assert objective_from_args(parser().parse_args(["--objective", "sam"]), max_length=128).name == "sam"


@pytest.mark.parametrize(
    "argv,message",
    [
        (["--rho", "0.1"], "--rho applies to --objective sam/asam, not to --objective adamw"),
        (["--objective", "sam", "--fisher-lambda", "1"], "--fisher-lambda applies to --objective fisher"),
        (["--objective", "fisher", "--mvr-rate", "0.1"], "--mvr-rate applies to --objective mvr"),
        (["--objective", "sam", "--asam-eta", "0.1"], "--asam-eta applies to --objective asam"),
        (["--objective", "mvr", "--mvr-rate", "1.5"], r"\[0, 1\)"),
        (["--objective", "fisher", "--fisher-every", "0"], ">= 1"),
    ],
)
def test_cli_errors(argv, message):
    args = parser().parse_args(argv)
    with pytest.raises(XlgmError, match=message):
        objective_from_args(args)


@dataclasses.dataclass(frozen=True)
class _SampleConfig:
    rho: float = dataclasses.field(default=1.0, metadata=option("--rho"))  # shared with sam/asam
    steps: int = dataclasses.field(default=3, metadata=option("--sample-steps", "sample: steps (3)"))
    lam: float | None = dataclasses.field(default=None, metadata=option("--sample-lambda", exclusive="w"))
    weight: float | None = dataclasses.field(default=None, metadata=option("--sample-weight", exclusive="w"))
    verbose: bool = dataclasses.field(default=False, metadata=option("--sample-verbose", "sample: say more"))
    seed: int = 0  # no metadata: not a flag


class _SampleObjective:
    name = "sample"
    config_class = _SampleConfig
    reference = "nobody, 2026"
    summary = "a sample"
    loop_facts = ("batch_size",)


@dataclasses.dataclass(frozen=True)
class _ClashConfig:
    rho: int = dataclasses.field(default=1, metadata=option("--rho"))  # sam's --rho is a float


class _ClashObjective(_SampleObjective):
    name = "clash"
    config_class = _ClashConfig


def test_flags_are_derived_from_field_metadata():
    spec = objective_spec(_SampleObjective)
    assert (spec.name, spec.config, spec.factory, spec.reference, spec.loop_facts) == (
        "sample",
        _SampleConfig,
        _SampleObjective,
        "nobody, 2026",
        ("batch_size",),
    )
    flags = objective_flags([OBJECTIVES["sam"], spec])
    rows = [(f.flag, f.dest, f.type, f.exclusive, f.targets) for f in flags.values()]
    assert rows == [
        ("--rho", "rho", float, None, {"sam": "rho", "sample": "rho"}),
        ("--sam-shared-perturbation", "sam_shared_perturbation", bool, None, {"sam": "shared_perturbation"}),
        ("--sample-steps", "sample_steps", int, None, {"sample": "steps"}),
        ("--sample-lambda", "sample_lambda", float, "w", {"sample": "lam"}),
        ("--sample-weight", "sample_weight", float, "w", {"sample": "weight"}),
        ("--sample-verbose", "sample_verbose", bool, None, {"sample": "verbose"}),
    ]
    # the first help given for a shared flag is kept; a flag without help has an empty one
    assert flags["--rho"].help == "sam/asam neighbourhood size"
    assert flags["--rho"].default_text == "sam 0.05, sample 1.0"  # --help says each default
    assert (flags["--sample-steps"].help, flags["--sample-lambda"].help) == ("sample: steps (3)", "")


def test_a_flag_declared_two_ways_is_a_bug():
    with pytest.raises(TypeError, match="--rho: clash.rho declares it unlike the objectives before it"):
        objective_flags([OBJECTIVES["sam"], objective_spec(_ClashObjective)])
    _BadFacts = type("_BadFacts", (_SampleObjective,), {"name": "bad", "loop_facts": ("epoch",)})
    with pytest.raises(TypeError, match=r"objective bad: unknown loop fact\(s\) \['epoch'\]"):
        objective_spec(_BadFacts)


def test_mutually_exclusive_flags():
    with pytest.raises(SystemExit):
        parser().parse_args(["--objective", "fisher", "--fisher-lambda", "0.1", "--fisher-weight", "0.001"])


def test_cli_rejects_unknown_objective():
    with pytest.raises(SystemExit):
        parser().parse_args(["--objective", "sgd"])


@pytest.mark.parametrize(
    "name,options",
    [
        ("adamw", {}),
        ("sam", {"rho": 0.1}),
        ("sam", {"rho": 0.1, "shared_perturbation": True}),
        ("asam", {}),
        ("fisher", {"lam": 0.5, "sub_batch": 3}),
        ("mvr", {"rate": 0.3}),
    ],
)
def test_every_objective_under_accelerate_matches_the_plain_loop(name, options):
    accelerate = pytest.importorskip("accelerate")
    tok = wordpiece_tokenizer()
    rows = make_rows(16, seed=9)
    steps = [split(make_batch(tok, rows, range(8 * s, 8 * s + 8)), [4, 4]) for s in range(2)]

    reference = tiny_model(vocab_size=len(tok), seed=2)
    objective = build_objective(name, **options)
    objective.setup(reference, tok, rows)
    run_steps(objective, reference, steps, seed=3)

    accelerator = accelerate.Accelerator(cpu=True)
    model = tiny_model(vocab_size=len(tok), seed=2)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model, optimizer = accelerator.prepare(model, optimizer)
    before = params_of(model)
    objective = build_objective(name, **options)
    objective.setup(model, tok, rows)
    logs = run_steps(objective, model, steps, accelerator=accelerator, optimizer=optimizer, seed=3)
    assert all(math.isfinite(entry["loss"]) for entry in logs)
    assert not same_params(before, params_of(model))
    for a, b in zip(reference.parameters(), model.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)


def test_an_objective_registers_with_the_decorator():
    from xlgm.objectives import register_objective

    name = _SampleObjective.name
    try:
        assert register_objective(_SampleObjective) is _SampleObjective and name in OBJECTIVES
        assert register_objective(_SampleObjective) is _SampleObjective  # again: the same class, no error
        other = type("_Other", (_SampleObjective,), {})
        with pytest.raises(ValueError, match="objective 'sample' is already registered"):
            register_objective(other)
        args = parser().parse_args(["--objective", "sample", "--rho", "0.3", "--sample-steps", "5"])
        assert objective_options(args) == ("sample", {"rho": 0.3, "steps": 5})  # its flags join `xlgm train`'s
    finally:
        OBJECTIVES.pop(name, None)


def test_objective_options_are_checked_by_their_rules():
    """The configs check their fields with the rules in their `option(...)` metadata, and keep what the rule
    returns: an integer option written 4.0 is 4, a number option written 1 is 1.0."""
    config = build_config("fisher", sub_batch=4.0, every=2.0, lam=1)
    assert (config.sub_batch, config.every, config.lam) == (4, 2, 1.0)
    assert (type(config.sub_batch), type(config.every), type(config.lam)) == (int, int, float)
    with pytest.raises(XlgmError, match=r"^every \(--fisher-every\): expected an integer >= 1, got 0$"):
        build_config("fisher", every=0)
    with pytest.raises(XlgmError, match=r"^max_length: expected an integer >= 1"):  # no flag: named alone
        build_config("mvr", max_length=0)
