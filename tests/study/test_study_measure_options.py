"""A spec's measure entries: typed in the schema from the measures' configs, checked once, made into the config the
measure computes with; the ids keep hashing the options as written, so shipped studies and their units keep
their ids."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from xlgm.measures.base import get_measure, list_measures, resolve_config
from xlgm.recipes.measure import parse_measure_options
from xlgm.study.schema import document_schema
from xlgm.study.spec import SpecError, load_spec, parse_text
from xlgm.study.units import measure_unit_id

STUDIES = Path(__file__).resolve().parents[2] / "studies"

# The study id of every shipped spec, as computed before measure options were typed in the schema (a changed id
# would make `xlgm study run` treat an existing study folder as another study's).
SHIPPED_STUDY_IDS = {
    "demo.yaml": "a0f6ba585430",
    "demo-udpos.yaml": "eb0b2d513343",
    "pawsx-mbert.yaml": "3d4a5cbc5673",
    "predict-embedded.yaml": "df9fd5c3633c",
    "udpos-e5-cpu.yaml": "b139271379cc",  # the id of the shipped results/udpos-e5-cpu
    "xnli-e5-cpu.yaml": "195232095f4f",
    "xnli-e5-design.yaml": "eaf03bbaf466",
    "xnli-mbert.yaml": "175582b51da2",
    "xnli-mt5.yaml": "77d71bfe28ba",
}
# The ids of measure units with options (a resumed study finds these units done).
UNIT_IDS = {
    ("demo.yaml", "sharpness-diff"): "measure/RUN/step-000010/sharpness-diff/bf584cfa",
    ("demo.yaml", "pacbayes-flatness"): "measure/RUN/step-000010/pacbayes-flatness/6193fec6",
    ("demo.yaml", "margin"): "measure/RUN/step-000010/margin/80a0ccf1",
    ("xnli-e5-cpu.yaml", "logit-margin"): "measure/RUN/step-000010/logit-margin/a7d39827",
    ("xnli-e5-cpu.yaml", "pacbayes-flatness"): "measure/RUN/step-000010/pacbayes-flatness/a1de7b75",
}

BASE = """\
name: t
target_languages: [de]
grid: [adamw]
measures: MEASURES
"""


def spec_with(measures: str):
    return parse_text(BASE.replace("MEASURES", measures), "x.yaml")


def test_shipped_specs_keep_their_study_ids():
    assert {p.name for p in STUDIES.glob("*.yaml")} == set(SHIPPED_STUDY_IDS)
    for name, study_id in SHIPPED_STUDY_IDS.items():
        assert load_spec(STUDIES / name).study_id == study_id, name


def test_measure_units_keep_their_ids():
    for (name, measure), unit_id in UNIT_IDS.items():
        spec = load_spec(STUDIES / name)
        (item,) = [m for m in spec.measures.items if m.name == measure]
        assert measure_unit_id(spec, "RUN/step-000010", item) == unit_id, (name, measure)


def test_the_config_travels_and_the_options_stay_as_written():
    spec = spec_with("[{logit-margin: {percentile: 75, at: best}}, {sharpness-alpha: {upper: '1e-4'}}, margin]")
    logit, alpha, margin = spec.measures.items
    assert logit.options == (("percentile", 75),) and logit.at == "best"
    assert logit.config == get_measure("logit-margin").config_cls(percentile=75.0)
    assert isinstance(logit.config.percentile, float)
    assert alpha.options == (("upper", "1e-4"),) and alpha.config.upper == 1e-4  # a number written as text
    assert margin.options == () and margin.config == get_measure("margin").config_cls()
    assert "config" not in str(spec.to_dict()["measures"]["items"])  # the id hashes the options as written
    assert parse_text(spec.to_yaml()) == spec


@pytest.mark.parametrize(
    "measures, message",
    [
        ("[{sharpness-diff: {num_draws: 0}}]", "measures.names[0].sharpness-diff.num_draws: expected an integer >= 1"),
        ("[{sharpness-diff: {mode: fast}}]", "measures.names[0].sharpness-diff.mode: expected one of 'default' or"),
        ("[{sharpness-diff: {sigma: big}}]", "measures.names[0].sharpness-diff.sigma: expected a number"),
        ("[{pacbayes-flatness: {lower: 3.0}}]", "measures.names[0].pacbayes-flatness: need 0 <= lower < upper"),
        ("[{margin: {at: sometimes}}]", "measures.names[0].margin.at: expected one of 'all' or 'best'"),
        ("[{margin: 5}]", "measures.names[0].margin: expected a mapping, got 5"),
        ("[parameter-variance-across-seeds]", "measures.names[0]: parameter-variance-across-seeds is not a measure of"),
        ("{names: {margin: null, sharpness-diff: {draws: 2}}}", "measures.names[1].sharpness-diff: unknown option(s)"),
        ("[margin, margin]", "measures.names[1]: measure margin is listed twice"),
    ],
)
def test_a_bad_measure_entry_is_one_line_naming_the_option(measures, message):
    with pytest.raises(SpecError) as err:
        spec_with(measures)
    assert str(err.value).startswith(f"x.yaml:4: {message}"), str(err.value)
    assert len(str(err.value).splitlines()) == 1


def test_set_and_a_spec_entry_read_options_alike():
    """`--set` pairs, a spec entry and a dict given to the Python API go through the same reader."""
    pairs = ["sharpness-alpha.upper=1e-4", "sharpness-alpha.search_depth=14", "sharpness-alpha.random_start=false"]
    from_set = resolve_config(get_measure("sharpness-alpha"), parse_measure_options(pairs)["sharpness-alpha"])
    from_spec = spec_with("[{sharpness-alpha: {upper: 1e-4, search_depth: 14, random_start: false}}]")
    assert from_set == from_spec.measures.items[0].config
    assert (from_set.upper, from_set.search_depth, from_set.random_start) == (1e-4, 14, False)


def test_the_json_schema_types_every_measure_option():
    defs = document_schema()["$defs"]
    for name in list_measures("model"):
        config = get_measure(name).config_cls
        properties = defs[f"Measure_{name}"]["properties"]
        assert set(properties) == {f.name for f in dataclasses.fields(config)} | {"at", "max_examples"}, name
        for field in dataclasses.fields(config):
            prop = properties[field.name]
            assert prop.get("description"), (name, field.name)  # its help
            assert "type" in prop or "enum" in prop or "anyOf" in prop, (name, field.name)
            assert prop["default"] == field.default, (name, field.name)
    sigma = defs["Measure_sharpness-diff"]["properties"]["sigma"]
    one = {"anyOf": [{"type": "number"}, {"type": "null"}]}
    assert sigma["anyOf"] == [one, {"type": "array", "items": one, "minItems": 1}]  # a value or a sweep
    assert "noise" in sigma["description"]
    assert defs["Measure_sharpness-diff"]["properties"]["mode"]["anyOf"][0]["enum"] == ["default", "paper"]
    assert defs["Measure_hessian-top-eig"]["properties"]["k"]["anyOf"][0]["type"] == "integer"
    assert defs["Measure_spectral-norm"]["properties"]["include_embeddings"]["anyOf"][0]["type"] == "boolean"
    names = defs["Measures"]["properties"]["names"]
    assert {"$ref": "#/$defs/MeasuresByName"} in names["anyOf"]  # the mapping form too
