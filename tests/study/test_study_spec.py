"""The study spec: validation errors name the file and the field; grid expansion; a stable study id."""

from __future__ import annotations

from pathlib import Path

import pytest

from xlgm.study.spec import SpecError, load_spec, parse_text

STUDIES = Path(__file__).resolve().parents[2] / "studies"
SHIPPED = {"demo.yaml", "predict-embedded.yaml", "xnli-mbert.yaml", "pawsx-mbert.yaml", "xnli-mt5.yaml"}

BASE = """\
name: t
model: some/model
target_languages: [de, sw]
train: {epochs: 1, lr: 5.0e-5, max_train_examples: 64}
grid:
  - objective: adamw
  - {objective: sam, rho: [0.02, 0.05], lr: [1.0e-5, 2.0e-5]}
seeds: [0, 1]
checkpoints: {every: 5}
measures: [margin, {sharpness-diff: {num_draws: 2}}]
"""


def spec_error(text: str) -> str:
    with pytest.raises(SpecError) as err:
        parse_text(text, "studies/x.yaml")
    return str(err.value)


@pytest.mark.parametrize(
    "change, message",
    [
        (("rho: [0.02, 0.05]", "rho: abc"), "studies/x.yaml:7: grid[1].rho: expected a number, got 'abc'"),
        (("rho: [0.02, 0.05]", "rho: [0.02, abc]"), "studies/x.yaml:7: grid[1].rho[1]: expected a number, got 'abc'"),
        (("rho: [0.02, 0.05]", "rho: -1.0"), "studies/x.yaml:7: grid[1].rho: expected a number >= 0, got -1"),
        (("rho: [0.02, 0.05]", "lam: 0.1"), "studies/x.yaml:7: grid[1].lam: neither an option of objective sam"),
        (("objective: adamw", "objective: adam"), "studies/x.yaml:6: grid[0].objective: expected one of"),
        (("epochs: 1,", "epochs: 1, seed: 3,"), "studies/x.yaml:4: train.seed: set by the spec's `seeds`"),
        (("epochs: 1,", "epochs: 1, warmup: 3,"), "studies/x.yaml:4: train.warmup: unknown training option"),
        (("epochs: 1,", "epochs: 0,"), "studies/x.yaml:4: train.epochs: expected a number > 0, got 0.0"),
        (("[de, sw]", "[de, xx]"), "studies/x.yaml:3: target_languages[1]: unknown language 'xx'"),
        (("seeds: [0, 1]", "seeds: [0, one]"), "studies/x.yaml:8: seeds[1]: expected an integer, got 'one'"),
        (("{every: 5}", "{every: 5, steps: [2]}"), "studies/x.yaml:9: checkpoints: give `every` or `steps`, not both"),
        (("[margin,", "[nope,"), "studies/x.yaml:10: measures.names[0]: unknown measure 'nope'"),
        (("num_draws: 2", "draws: 2"), "studies/x.yaml:10: measures.names[1].sharpness-diff: unknown option(s) draws"),
        (("name: t", "name: t\nfoo: 1"), "studies/x.yaml:2: foo: unknown field"),
    ],
)
def test_errors_name_the_field(change, message):
    old, new = change
    assert old in BASE
    assert spec_error(BASE.replace(old, new, 1)).startswith(message)


def test_every_error_is_reported_at_once_one_a_line():
    text = BASE.replace("rho: [0.02, 0.05]", "rho: abc").replace("epochs: 1,", "epochs: 0, warmup: 3,")
    text = text.replace("[de, sw]", "[de, xx]").replace("[margin,", "[nope,")
    lines = spec_error(text).splitlines()
    assert [line.split(": ")[1] for line in lines] == [  # in the file's order
        "target_languages[1]",
        "train.epochs",
        "train.warmup",
        "grid[1].rho",
        "measures.names[0]",
    ]
    assert all(line.startswith("studies/x.yaml:") for line in lines)


def test_json_schema_describes_the_spec():
    from xlgm.study.schema import document_schema

    schema = document_schema()
    assert schema["required"] == ["name", "grid"]
    assert set(schema["properties"]) >= {"train", "grid", "measures", "checkpoints", "evaluation", "analysis"}
    train = schema["$defs"]["Train"]["properties"]
    assert train["lr"]["default"] == 1e-4 and "learning rate" in train["lr"]["description"]
    assert "seed" not in train  # set by `seeds`
    assert schema["$defs"]["Evaluation"]["properties"]["split"]["enum"] == ["dev", "test", "train"]


def test_yaml_syntax_error_names_the_line():
    assert spec_error("name: t\ngrid: [\n  - x: : y\n").startswith("studies/x.yaml:")
    assert "required field missing" in spec_error("name: t\n")


def test_grid_expansion():
    spec = parse_text(BASE)
    configs = spec.run_configs()
    assert len(configs) == (1 + 2 * 2) * 2  # adamw + sam x rho x lr, each with 2 seeds
    assert len({c.run_id for c in configs}) == len(configs)
    sam = [c for c in configs if c.objective == "sam"]
    assert {(c.objective_options["rho"], c.lr, c.seed) for c in sam} == {
        (rho, lr, seed) for rho in (0.02, 0.05) for lr in (1e-5, 2e-5) for seed in (0, 1)
    }
    adamw = [c for c in configs if c.objective == "adamw"]
    assert all(c.lr == 5e-5 and c.objective_options == {} for c in adamw)
    assert all(c.save_every == 5 and c.max_train_examples == 64 and c.model == "some/model" for c in configs)
    assert spec.languages == ("en", "de", "sw")
    assert [m.name for m in spec.measures.items] == ["margin", "sharpness-diff"]
    # checkpoints by steps: saved every gcd, the listed steps and the last measured
    steps = parse_text(BASE.replace("{every: 5}", "{steps: [40, 10, 20]}"))
    assert steps.checkpoints.save_every == 10
    assert steps.checkpoints.selects(["a"] * 4, [10, 20, 30, 35]) == [True, True, False, True]  # 35: the last
    # each run's newest N: with early stopping the runs end at different steps
    newest = parse_text(BASE.replace("{every: 5}", "{every: 5, last: 2}"))
    assert newest.checkpoints.save_every == 5 and newest.study_id != spec.study_id
    runs, at = ["a", "a", "b", "a", "b", "b"], [5, 10, 5, 15, 10, 15]
    assert newest.checkpoints.selects(runs, at) == [False, True, False, True, True, True]
    assert newest.checkpoints.selects(["a", "a", "a"], [5, 10, 15]) == [False, True, True]
    assert spec.checkpoints.selects(runs, at) == [True] * 6
    assert parse_text(newest.to_yaml()) == newest
    with pytest.raises(SpecError, match=r"checkpoints\.last"):
        parse_text(BASE.replace("{every: 5}", "{steps: [10], last: 2}"))


def test_study_id_is_stable():
    a, b = parse_text(BASE), parse_text(BASE)
    assert a == b and a.study_id == b.study_id and len(a.study_id) == 12
    reordered = parse_text(
        "# a comment\n"
        + BASE.replace(
            "{epochs: 1, lr: 5.0e-5, max_train_examples: 64}", "{max_train_examples: 64, lr: 5e-5, epochs: 1.0}"
        )
    )
    assert reordered.study_id == a.study_id  # formatting, key order, 5e-5 vs 5.0e-5, 1 vs 1.0
    assert [c.run_id for c in reordered.run_configs()] == [c.run_id for c in a.run_configs()]
    assert parse_text(BASE.replace("seeds: [0, 1]", "seeds: [0, 2]")).study_id != a.study_id


def test_spec_round_trips_through_yaml(tmp_path):
    data = tmp_path / "data"
    data.mkdir()
    text = BASE.replace("seeds: [0, 1]", "seeds: [0, 1]\ndata: data\nanalysis: {unit: run, axes: [objective, rho]}")
    spec = parse_text(text, "x.yaml", base_dir=tmp_path)
    assert spec.data.kind == "local" and spec.data.dir == str(data.resolve())
    again = parse_text(spec.to_yaml(), "elsewhere.yaml", base_dir=tmp_path / "elsewhere")
    assert again == spec and again.study_id == spec.study_id
    steps = parse_text(BASE.replace("{every: 5}", "{steps: [4, 8]}"))
    assert parse_text(steps.to_yaml()) == steps


def test_shipped_specs_validate():
    paths = sorted(STUDIES.glob("*.yaml"))
    assert {p.name for p in paths} >= SHIPPED
    specs = {p.name: load_spec(p) for p in paths}
    demo = specs["demo.yaml"]
    assert demo.model == "embedded" and demo.data.kind == "bundled" and len(demo.target_languages) == 14
    assert {c.objective for c in demo.run_configs()} == {"adamw", "sam", "fisher", "mvr"}
    assert {"margin", "sharpness-diff", "frobenius-distance", "fisher-trace", "pacbayes-flatness"} <= set(
        demo.measures.names
    )
    check = specs["predict-embedded.yaml"]  # the demo's AdamW and SAM runs, every bundled test row
    assert check.evaluation.max_examples == 500 and check.prediction.enabled and check.prediction.parallel
    assert check.train_options == demo.train_options and len(check.target_languages) == 14
    assert check.checkpoints == demo.checkpoints
    assert [(c.objective, c.objective_options) for c in check.run_configs()] == [
        (c.objective, c.objective_options) for c in demo.run_configs() if c.objective in ("adamw", "sam")
    ]
    mbert = specs["xnli-mbert.yaml"]
    assert mbert.data.kind == "hf" and mbert.train_options["train_split"] == "train"
    assert mbert.seeds == (0, 1, 2)


def test_every_shipped_spec_loads():
    from pathlib import Path

    import xlgm
    from xlgm.study.spec import load_spec

    shipped = sorted((Path(xlgm.__file__).parent / "studies").glob("*.yaml"))
    assert {p.name for p in shipped} >= SHIPPED
    for path in shipped:
        spec = load_spec(path)
        assert spec.name and spec.grid, path


def test_evaluation_precision_is_checked_and_keys_only_non_fp32_evaluations():
    from xlgm.study.units import eval_key

    fp32 = parse_text(BASE, "studies/x.yaml")
    assert fp32.evaluation.mixed_precision == "no"
    bf16 = parse_text(BASE + "evaluation: {mixed_precision: bf16}\n", "studies/x.yaml")
    auto = parse_text(BASE + "evaluation: {mixed_precision: auto}\n", "studies/x.yaml")
    explicit_no = parse_text(BASE + "evaluation: {mixed_precision: 'no'}\n", "studies/x.yaml")
    # fp32 evaluations keep the key they always had; any autocast is a different evaluation
    assert eval_key(explicit_no) == eval_key(fp32)
    assert len({eval_key(fp32), eval_key(bf16), eval_key(auto)}) == 3
    message = spec_error(BASE + "evaluation: {mixed_precision: fp8}\n")
    assert message.startswith("studies/x.yaml:11: evaluation.mixed_precision: expected one of") and "fp8" in message


def test_shipped_specs_validate_against_the_printed_json_schema(capsys):
    import json

    import yaml

    from xlgm.study.cli import main

    jsonschema = pytest.importorskip("jsonschema")
    assert main(["schema"]) == 0
    schema = json.loads(capsys.readouterr().out)
    validator = jsonschema.Draft202012Validator(schema)
    for path in sorted(STUDIES.glob("*.yaml")):
        assert not list(validator.iter_errors(yaml.safe_load(path.read_text()))), path
    bad = yaml.safe_load(BASE.replace("epochs: 1,", "epochs: 1, warmup: 3,"))
    assert list(validator.iter_errors(bad))  # an editor flags the unknown training option too


def test_study_check_prints_the_study_or_every_error(tmp_path, capsys):
    from xlgm.study.cli import main

    good, bad = tmp_path / "good.yaml", tmp_path / "bad.yaml"
    good.write_text(BASE)
    bad.write_text(BASE.replace("rho: [0.02, 0.05]", "rho: abc").replace("seeds: [0, 1]", "seeds: [0, one]"))
    assert main(["check", str(good)]) == 0
    assert f"{good}: valid; study t (" in capsys.readouterr().out
    assert main(["check", str(bad)]) != 0
    err = capsys.readouterr().err
    assert f"{bad}:7: grid[1].rho: expected a number, got 'abc'" in err
    assert f"{bad}:8: seeds[1]: expected an integer, got 'one'" in err
