"""Progress: the study's bar knows its total before the first unit and only moves forward; long measures report
their steps (HVPs, draws, ascent steps) through `compute_measure(progress=...)`, shown as a nested bar."""

from __future__ import annotations

import io
import json

import pytest
import torch
from study_testlib import LANGUAGES, MEASURES, RUNS, UNITS
from torch import nn
from tqdm.auto import tqdm
from transformers.modeling_outputs import SequenceClassifierOutput

from xlgm.measures.base import compute_measure
from xlgm.study.progress import WorkClock, eta_text, unit_cost_key
from xlgm.study.runner import run_study
from xlgm.study.spec import load_spec
from xlgm.study.units import expected_checkpoint_steps, training_rows


class RecordingBar(tqdm):
    """A tqdm that writes nowhere and remembers every total it was given."""

    bars: list[RecordingBar] = []

    def __init__(self, *args, **kwargs):
        self.__dict__["totals"] = []
        kwargs["file"] = io.StringIO()
        super().__init__(*args, **kwargs)
        RecordingBar.bars.append(self)

    def __setattr__(self, name, value):
        if name == "total":
            self.__dict__["totals"].append(value)
        super().__setattr__(name, value)


@pytest.fixture
def recording_bars(monkeypatch):
    import xlgm.recipes.measure as measure_recipe
    import xlgm.study.executors as executors
    import xlgm.study.progress as progress

    RecordingBar.bars = []
    monkeypatch.setattr(progress, "tqdm", RecordingBar)
    monkeypatch.setattr(executors, "tqdm", RecordingBar)
    monkeypatch.setattr(measure_recipe, "tqdm", RecordingBar)
    return RecordingBar.bars


def test_the_study_bar_total_is_set_once_before_the_first_unit(tiny_spec_path, tmp_path, recording_bars):
    result = run_study(load_spec(tiny_spec_path), tmp_path / "out", show_progress=True)
    [bar] = [b for b in recording_bars if str(b.desc).startswith("study tiny")]
    assert bar.totals == [UNITS]  # never changed after the start
    assert bar.n == UNITS and result.units_planned == result.units_done == result.units_total == UNITS


def test_the_eta_weighs_each_unit_by_the_finished_units_like_it():
    objectives = {"r1": "adamw", "r2": "sam", "r3": "sam"}
    clock = WorkClock(
        objectives,
        {"train/r1": 100.0, "train/r2": 300.0, "eval/x/r1/step-000002/de": 2.0, "measure/r1/step-000002/margin/k": 1.0},
    )
    assert unit_cost_key("measure/r1/step-000002/hessian-trace/abcd1234", objectives) == ("measure", "hessian-trace")
    assert unit_cost_key("train/r3", objectives) == ("train", "sam")
    # a sam training as the finished sam one, two evaluations, a margin as the margin, a new measure as measures
    todo = ["train/r3", "eval/x/r3/step-000002/de", "eval/x/r3/step-000002/en", "measure/r3/s/margin/k"]
    assert clock.remaining(todo) == (300.0 + 2 * 2.0 + 1.0, True)
    clock.add("measure/r1/step-000002/hessian-trace/k", 41.0)
    assert clock.remaining(["measure/r3/s/hessian-trace/k", "measure/r3/s/pacbayes-flatness/k"]) == (41.0 + 21.0, True)
    assert clock.remaining(["group/g/parameter-variance-across-seeds"]) == (0.0, False)  # no group finished yet
    # a swept measure's settings: each as the same setting's finished units, a new one as its measure's
    clock.add("measure/r1/step-000002/sharpness-diff/rows16", 2.0)
    clock.add("measure/r1/step-000002/sharpness-diff/rows256", 30.0)
    todo = [
        "measure/r3/s/sharpness-diff/rows16",
        "measure/r3/s/sharpness-diff/rows256",
        "measure/r3/s/sharpness-diff/new",
    ]
    assert clock.remaining(todo) == (2.0 + 30.0 + 16.0, True)
    assert eta_text(3 * 3600 + 7 * 60, True) == "eta 3h07m" and eta_text(50, False) == "eta >1m"


def test_the_study_bar_shows_the_weighted_eta(tiny_spec_path, tmp_path, recording_bars):
    run_study(load_spec(tiny_spec_path), tmp_path / "out", show_progress=True)
    [bar] = [b for b in recording_bars if str(b.desc).startswith("study tiny")]
    assert bar.postfix == "eta 0m" and "{postfix}" in bar.bar_format and "remaining" not in bar.bar_format


def test_a_wrong_expectation_closes_the_bar_at_the_real_total(tiny_spec_path, tmp_path, recording_bars, monkeypatch):
    """Should training save other checkpoints than expected (here: one expected checkpoint too many per run),
    the total follows the real checkpoints when each run is trained, and the bar never moves backward."""
    import xlgm.study.units as units

    expected = units.expected_checkpoint_steps
    monkeypatch.setattr(units, "expected_checkpoint_steps", lambda config, n: [1, *expected(config, n)])
    per_checkpoint = LANGUAGES + MEASURES
    result = run_study(load_spec(tiny_spec_path), tmp_path / "out", show_progress=True)
    [bar] = [b for b in recording_bars if str(b.desc).startswith("study tiny")]
    assert bar.totals == [UNITS + RUNS * per_checkpoint, UNITS + per_checkpoint, UNITS]
    assert bar.n == UNITS and result.units_planned == UNITS + RUNS * per_checkpoint
    assert result.units_done == result.units_total == UNITS


def test_expected_checkpoints_are_those_training_saves(tiny_bert_dir, tmp_path):
    from xlgm.recipes.train import TrainConfig, train

    # 29 rows (32 less 3 held out) in micro-batches of 4: 8 a epoch, 2 a step: 4 steps an epoch, 1.5 epochs: 6.
    config = TrainConfig(
        model=str(tiny_bert_dir),
        max_train_examples=32,
        batch_size=4,
        grad_accum=2,
        epochs=1.5,
        save_every=2,
        log_every=100,
    )
    assert training_rows(config) == 29
    assert expected_checkpoint_steps(config, 29) == [2, 4, 6]
    run = train(config, tmp_path / "run", show_progress=False)
    index = json.loads((run / "checkpoints.json").read_text())
    assert [c["step"] for c in index["checkpoints"]] == [2, 4, 6]
    assert json.loads((run / "config.json").read_text())["num_train"] == 29


def test_expected_checkpoint_steps_by_hand():
    from xlgm.recipes.train import TrainConfig

    assert expected_checkpoint_steps(TrainConfig(batch_size=8, save_every=2), 29) == [2, 4]  # the tiny study
    assert expected_checkpoint_steps(TrainConfig(batch_size=8, save_every=0, epochs=2), 29) == [8]
    assert expected_checkpoint_steps(TrainConfig(batch_size=8, save_every=3, epochs=2), 29) == [3, 6, 8]
    assert expected_checkpoint_steps(TrainConfig(batch_size=8, grad_accum=8), 29) == [1]  # at least one step
    # 25 steps an epoch, half an epoch: round(12.5) = 12 (train rounds half to even, as Python does)
    assert expected_checkpoint_steps(TrainConfig(batch_size=32, save_every=5, epochs=0.5), 800) == [5, 10, 12]


# ------------------------------------------------------------------------------------------------------------
# Measures
# ------------------------------------------------------------------------------------------------------------


class LinearSoftmax(nn.Module):
    def __init__(self, dim: int = 5, classes: int = 3):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.linear = nn.Linear(dim, classes, dtype=torch.float64)
        with torch.no_grad():
            self.linear.weight.copy_(torch.randn(classes, dim, generator=gen, dtype=torch.float64))
            self.linear.bias.copy_(0.3 * torch.randn(classes, generator=gen, dtype=torch.float64))

    def forward(self, features):
        return SequenceClassifierOutput(logits=self.linear(features))


def batches(n: int = 10, dim: int = 5) -> list[dict[str, torch.Tensor]]:
    gen = torch.Generator().manual_seed(1)
    x = torch.randn(n, dim, generator=gen, dtype=torch.float64)
    y = torch.randint(0, 3, (n,), generator=gen)
    return [{"features": x[:6], "labels": y[:6]}, {"features": x[6:], "labels": y[6:]}]


class Recorder:
    def __init__(self):
        self.expected = 0
        self.done = 0
        self.events: list[tuple[int, int | None]] = []

    def __call__(self, steps: int, total: int | None) -> None:
        self.events.append((steps, total))
        if total is not None:
            self.expected += total
        self.done += steps
        assert steps >= 0 and self.done <= self.expected  # forward only, never past what was announced


# (measure, options, the steps it must report given its result's details)
CASES = [
    ("hessian-top-eig", {"max_iters": 12, "tol": 1e-8}, 12, lambda d: d["hvps"]),
    ("hessian-top-eig", {"method": "power", "k": 2, "max_iters": 7, "tol": 1e-12}, 14, lambda d: d["hvps"]),
    ("hessian-trace", {"num_matvecs": 5}, 5, lambda d: 5),
    ("hessian-trace", {"method": "hutchpp", "num_matvecs": 9}, 9, lambda d: 9),
    ("fisher-trace", {}, 10, lambda d: 10),
    ("fisher-trace", {"method": "hutchinson", "num_matvecs": 4}, 4, lambda d: 4),
    ("pacbayes-flatness", {"search_depth": 4, "num_draws": 2, "tolerance": 1e-9}, 8, lambda d: d["iterations"] * 2),
    (
        "sharpness-alpha",
        {"search_depth": 3, "ascent_steps": 2, "num_restarts": 2, "tolerance": 1e-9},
        12,
        lambda d: d["iterations"] * 2 * 2,
    ),
    ("sharpness-avg", {"num_draws": 3}, 3, lambda d: 3),
    ("sharpness-diff", {"num_draws": 2}, 2, lambda d: 2),
    ("sharpness-worst", {"steps": 4}, 4, lambda d: len(d["trace"])),
]


@pytest.mark.parametrize("name, options, expected, steps", CASES, ids=[f"{c[0]}-{i}" for i, c in enumerate(CASES)])
def test_long_measures_report_their_steps(name, options, expected, steps):
    model, data = LinearSoftmax(), batches()
    recorder = Recorder()
    result = compute_measure(name, model, data, options, progress=recorder)
    assert recorder.expected == expected  # announced before the first step
    assert recorder.events[0] == (0, expected)
    assert recorder.done == steps(result.details) > 0
    assert all(s == 1 and t is None for s, t in recorder.events[1:])
    # and the same value without a hook
    assert compute_measure(name, LinearSoftmax(), data, options).value == result.value


def test_the_nested_measure_bar(recording_bars):
    from xlgm.recipes.measure import measure_progress

    data = batches()
    with measure_progress("hessian-trace") as hook:
        compute_measure("hessian-trace", LinearSoftmax(), data, {"num_matvecs": 6}, progress=hook)
    [bar] = recording_bars
    assert bar.totals == [6] and bar.n == 6 and bar.leave is False
    with measure_progress("margin") as hook:  # a measure without steps shows no bar
        compute_measure("margin", LinearSoftmax(), data, progress=hook)
    assert len(recording_bars) == 1


def test_the_plan_follows_the_schedules_rounding(tiny_spec_path, tmp_path, monkeypatch):
    """The step schedule is written once (`recipes.schedule`): change its rounding there, and the study's plan
    and the checkpoints training saves both follow."""
    import dataclasses
    import math

    import xlgm.recipes.schedule as schedule
    from xlgm.recipes.train import train
    from xlgm.study.units import planned_units, unit_plans

    spec = load_spec(tiny_spec_path)
    spec = dataclasses.replace(spec, train=tuple(sorted({**spec.train_options, "epochs": 1.6}.items())))
    config = spec.run_configs()[0]
    rows = training_rows(config)
    assert expected_checkpoint_steps(config, rows) == [2, 4, 6]  # 4 steps an epoch: round(6.4) = 6 steps

    monkeypatch.setattr(schedule, "total_steps", lambda steps_per_epoch, epochs: math.ceil(steps_per_epoch * epochs))
    assert expected_checkpoint_steps(config, rows) == [2, 4, 6, 7]
    plan = unit_plans(spec, None, spec.run_configs(), set())[config.run_id]  # no run trained: no database read
    assert len(plan) == 1 + 4 * (LANGUAGES + MEASURES)

    run = train(config, tmp_path / "run", show_progress=False)
    index = json.loads((run / "checkpoints.json").read_text())
    assert [c["step"] for c in index["checkpoints"]] == [2, 4, 6, 7]
    trained = [
        {"checkpoint_id": f"{config.run_id}/{c['name']}", "step": c["step"], "is_last": c["name"] == index["last"]}
        for c in index["checkpoints"]
    ]
    assert plan == planned_units(spec, config.run_id, trained)
