"""Sweeps: a spec lists a measure's data sizes or an option's values, each value is a measure unit of its own
keyed by its settings, and a study extended by one more value computes only that value's units."""

from __future__ import annotations

import shutil
import sqlite3
from pathlib import Path

import pandas as pd
import pytest
from study_testlib import CHECKPOINTS, RUNS, TINY_SPEC, write_spec

from xlgm.study.report import report_study
from xlgm.study.runner import run_study
from xlgm.study.spec import SpecError, load_spec, parse_text
from xlgm.study.units import measure_unit_id

BASE = """\
name: t
target_languages: [de]
grid: [adamw]
measures:
  names: NAMES
  data: {max_examples: SIZES}
"""


def spec_with(names: str, sizes: str = "64"):
    return parse_text(BASE.replace("NAMES", names).replace("SIZES", sizes), "x.yaml")


def unit_ids(spec) -> dict[str, str]:
    return {spec.measures.label(m): measure_unit_id(spec, "RUN/step-000010", m) for m in spec.measures.items}


def test_a_size_list_and_an_option_list_expand_to_one_unit_a_setting():
    spec = spec_with(
        "[margin, {sharpness-diff: {sigma: [1.0e-3, '1e-2'], alpha: 0.1}}, {hessian-trace: {at: best}}]", "[16, 64]"
    )
    assert spec.measures.names == ["margin", "sharpness-diff", "hessian-trace"]
    assert spec.measures.labels == [
        "margin[rows=16]",
        "margin[rows=64]",
        "sharpness-diff[rows=16,sigma=0.001]",
        "sharpness-diff[rows=16,sigma=0.01]",
        "sharpness-diff[rows=64,sigma=0.001]",
        "sharpness-diff[rows=64,sigma=0.01]",
        "hessian-trace[rows=16]",
        "hessian-trace[rows=64]",
    ]
    sigma = [m for m in spec.measures.items if m.name == "sharpness-diff"]
    assert [m.config.sigma for m in sigma] == [1e-3, 1e-2, 1e-3, 1e-2]  # '1e-2' written as text is the number
    assert [m.options for m in sigma[:2]] == [(("alpha", 0.1), ("sigma", 1e-3)), (("alpha", 0.1), ("sigma", "1e-2"))]
    assert {m.at for m in spec.measures.items if m.name == "hessian-trace"} == {"best"}
    assert len(set(unit_ids(spec).values())) == 8  # every setting a unit of its own
    # each setting is the unit a spec without the lists has at that setting: a study extended finds it done
    for size in (16, 64):
        for sigma_written in ("1.0e-3", "'1e-2'"):
            one = spec_with(f"[margin, {{sharpness-diff: {{sigma: {sigma_written}, alpha: 0.1}}}}]", str(size))
            (margin, sharpness) = unit_ids(one).values()
            assert margin == unit_ids(spec)[f"margin[rows={size}]"]
            value = {"1.0e-3": "0.001", "'1e-2'": "0.01"}[sigma_written]
            assert sharpness == unit_ids(spec)[f"sharpness-diff[rows={size},sigma={value}]"]
    assert parse_text(spec.to_yaml()) == spec and parse_text(spec.to_yaml()).study_id == spec.study_id


def test_a_measure_may_have_its_own_sizes():
    spec = spec_with(
        "[margin, {hessian-trace: {at: best, max_examples: 64}}, {logit-margin: {max_examples: [8, 16]}}]", "[16, 256]"
    )
    assert spec.measures.labels == [
        "margin[rows=16]",
        "margin[rows=256]",
        "hessian-trace",  # one size: not swept, its own 64 rows
        "logit-margin[rows=8]",
        "logit-margin[rows=16]",
    ]
    (hessian,) = [m for m in spec.measures.items if m.name == "hessian-trace"]
    assert spec.measure_data(hessian).max_examples == 64
    assert (
        unit_ids(spec)["hessian-trace"] == unit_ids(spec_with("[{hessian-trace: {at: best}}]", "64"))["hessian-trace"]
    )
    assert parse_text(spec.to_yaml()) == spec


def test_a_measure_listed_again_at_other_settings():
    """σ swept at 64 rows only, the data size at the default σ: two entries of one measure, no setting twice."""
    names = (
        "[{sharpness-diff: {sigma: 0.01}}, {sharpness-diff: {sigma: [1.0e-4, 0.1], max_examples: 64}},"
        " {sharpness-diff: {sigma: null, max_examples: 64}}]"
    )
    spec = spec_with(names, "[16, 64]")
    assert spec.measures.labels == [
        "sharpness-diff[rows=16,sigma=0.01]",
        "sharpness-diff[rows=64,sigma=0.01]",
        "sharpness-diff[rows=64,sigma=0.0001]",
        "sharpness-diff[rows=64,sigma=0.1]",
        "sharpness-diff[rows=64,sigma=default]",  # null: the mode's σ
    ]
    assert parse_text(spec.to_yaml()) == spec
    with pytest.raises(
        SpecError, match=r"names\[1\]: measure sharpness-diff is listed twice with \{'sigma': 0.01\} on 64"
    ):
        spec_with(
            "[{sharpness-diff: {sigma: 0.01}}, {sharpness-diff: {sigma: [0.1, 0.01], max_examples: 64}}]", "[16, 64]"
        )


def test_one_value_lists_are_the_scalars_they_hold():
    scalar = spec_with("[{sharpness-diff: {sigma: 0.01}}]", "64")
    listed = spec_with("[{sharpness-diff: {sigma: [0.01]}}]", "[64]")
    assert listed == scalar and listed.study_id == scalar.study_id
    assert scalar.measures.labels == ["sharpness-diff"] and scalar.measures.sizes == ()


@pytest.mark.parametrize(
    "names, sizes, message",
    [
        (
            "[{sharpness-diff: {sigma: [0.1, 0.1]}}]",
            "64",
            "measures.names[0].sharpness-diff.sigma: a value is listed twice",
        ),
        (
            "[{sharpness-diff: {sigma: [0.1, big]}}]",
            "64",
            "measures.names[0].sharpness-diff.sigma[1]: expected a number",
        ),
        ("[{pacbayes-flatness: {lower: [0.1, 3.0]}}]", "64", "measures.names[0].pacbayes-flatness: need 0 <= lower"),
        (
            "[{margin: {max_examples: [0, 4]}}]",
            "64",
            "measures.names[0].margin.max_examples[0]: expected an integer >= 1",
        ),
        ("[margin]", "[16, 16]", "measures.data.max_examples: a size is listed twice"),
    ],
)
def test_a_bad_sweep_is_one_line_naming_the_value(names, sizes, message):
    with pytest.raises(SpecError) as err:
        spec_with(names, sizes)
    assert str(err.value).startswith(f"x.yaml:5: {message}") or str(err.value).startswith(f"x.yaml:6: {message}")
    assert len(str(err.value).splitlines()) == 1


def measure_rows(out) -> dict[tuple[str, str, str, str], float]:
    with sqlite3.connect(out / "study.sqlite") as db:
        return {
            (c, m, h, d): v
            for c, m, h, d, v in db.execute("SELECT checkpoint_id, measure, config_hash, data, value FROM measures")
        }


def test_an_extended_study_computes_only_the_new_values(tiny_study, tiny_bert_dir, tmp_path):
    """The tiny study (margin and frobenius-distance at 16 rows) extended by a data size, then a measure with
    one option value, then a second value: each run does exactly the new settings' units."""
    out = tmp_path / "out"
    shutil.copytree(tiny_study, out)
    before = measure_rows(out)
    checkpoints = RUNS * CHECKPOINTS

    def extend(names: str, sizes: str):
        names = names.replace("{", "{{").replace("}", "}}")  # TINY_SPEC is a format string
        text = TINY_SPEC.replace("[margin, frobenius-distance]", names).replace("16,", f"{sizes},")
        spec = load_spec(write_spec(tmp_path / f"spec{len(list(tmp_path.glob('spec*')))}", tiny_bert_dir, text))
        result = run_study(spec, out, show_progress=False)
        assert result.units_done == result.units_total
        return spec, result.units_now

    spec, now = extend("[margin, frobenius-distance]", "[16, 8]")
    assert now == checkpoints * 2  # the two measures at 8 rows; the 16-row units were done
    rows = measure_rows(out)
    assert {k: v for k, v in rows.items() if k[3] == "en-dev-16"} == before  # untouched
    assert {k[3] for k in rows} == {"en-dev-16", "en-dev-8"}

    _, now = extend("[margin, frobenius-distance, {logit-margin: {percentile: 50}}]", "[16, 8]")
    assert now == checkpoints * 2  # logit-margin at each size
    spec, now = extend("[margin, frobenius-distance, {logit-margin: {percentile: [50, 75]}}]", "[16, 8]")
    assert now == checkpoints * 2  # only percentile 75, at each size
    with sqlite3.connect(out / "study.sqlite") as db:
        logit = db.execute("SELECT config, data FROM measures WHERE measure='logit-margin'").fetchall()
    assert sorted((c.count('"percentile": 75') == 1, d) for c, d in logit) == sorted(
        (p75, d) for p75 in (False, True) for d in ("en-dev-16", "en-dev-8") for _ in range(checkpoints)
    )
    assert len(spec.measures.items) == 2 * 4  # two sizes of margin, frobenius-distance and two logit-margins

    # the analysis: each setting a measure of its own, and the sensitivity table and figure over them
    html = report_study(out, echo=False).read_text()
    table = pd.read_csv(out / "analysis" / "sensitivity.csv")
    assert list(table["setting"].drop_duplicates()) == spec.measures.labels
    assert set(table["rows"]) == {16, 8} and set(table["percentile"].dropna()) == {50, 75}
    # the verdict judges each measure once, at its first entry's largest size; the sensitivity table judges every
    # setting, with a Holm correction over all of them (a family of its own)
    primary = ["margin[rows=16]", "frobenius-distance[rows=16]", "logit-margin[rows=16,percentile=50]"]
    assert spec.measures.primary_labels == primary
    verdict = pd.read_csv(out / "analysis" / "verdict.csv")
    assert list(verdict["measure"].drop_duplicates()) == primary
    same = verdict.merge(table, left_on=["measure", "target"], right_on=["setting", "target"], suffixes=("", "_all"))
    assert len(same) == len(verdict)
    assert (same["tau"].fillna(9) == same["tau_all"].fillna(9)).all()
    assert (same["p_holm"].fillna(1) <= same["p_holm_all"].fillna(1) + 1e-12).all()
    stability = pd.read_csv(out / "analysis" / "stability.csv")
    assert set(stability["measure"]) == {"margin", "frobenius-distance", "logit-margin"}  # every one is swept
    assert set(stability["holds"]) <= {"holds", "flips"} and (stability["settings"] >= 2).all()
    assert "Does each answer hold at every setting?" in html
    assert "Sensitivity to the measures" in html and (out / "report" / "figures" / "sensitivity.png").is_file()


def test_the_study_folder_spec_gives_back_the_entries_as_written():
    """OUT/spec.yaml (`to_yaml`) gathers a measure's settings back into the entries the file wrote."""
    import yaml

    path = Path(__file__).resolve().parents[2] / "src" / "xlgm" / "studies" / "xnli-e5-design.yaml"
    spec = load_spec(path)
    written = yaml.safe_load(path.read_text())["measures"]
    kept = yaml.safe_load(spec.to_yaml())["measures"]
    assert kept["names"] == written["names"] and kept["data"]["max_examples"] == [16, 64, 256]
    assert parse_text(spec.to_yaml()) == spec
    labels = spec.measures.labels
    assert len(labels) == 22 and len(set(labels)) == 22
    assert spec.measures.primary_labels == [
        "margin[rows=256]",
        "logit-margin[rows=256]",
        "sharpness-diff[rows=256,alpha=0.05,sigma=0.01]",
        "sharpness-diff-paper[rows=256]",
        "pacbayes-flatness[rows=256]",
        "frobenius-distance",
        "hessian-trace",
    ]
    sigma = [m.config.sigma for m in spec.measures.items if m.name == "sharpness-diff"]
    assert sorted(set(sigma)) == [1e-4, 1e-3, 1e-2, 1e-1]  # three orders of magnitude around the default
