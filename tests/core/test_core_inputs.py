"""core.validation's shared field rules and model positions; core.files' atomic writes."""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from types import SimpleNamespace

import pytest

from xlgm.core import validation
from xlgm.core.errors import XlgmError
from xlgm.core.files import write_json
from xlgm.core.options import check_fields


@pytest.mark.parametrize(
    "name, good, bad, message",
    [
        ("max_examples", [None, 1, 500], [0, -1, 2.5, True], "expected an integer >= 1"),
        ("max_train_examples", [None, 1], [0, -3], "expected an integer >= 1"),
        ("max_length", [8, 512], [0, -5, 7, None], "expected an integer >= 8"),
        ("batch_size", [1, 64], [0, -1], "expected an integer >= 1"),
        ("seed", [0, 7], [-1, None], "expected an integer >= 0"),
        ("epochs", [0.5, 3], [0, -1.0], "expected a number > 0"),
        ("warmup_ratio", [0, 0.5], [1, -0.1], "expected a number in [0, 1)"),
        ("device", ["auto", "cpu", "cuda", "cuda:1", "mps"], ["gpu", "cuda:", "cuda:x", ""], "expected one of auto"),
    ],
)
def test_field_rules(name, good, bad, message):
    for value in good:
        assert validation.check_field("--x", name, value) == value
    for value in bad:
        with pytest.raises(XlgmError, match=rf"^--x: {re.escape(message)}"):
            validation.check_field("--x", name, value)


def test_check_fields_names_the_flag_and_skips_fields_without_rules():
    @dataclass
    class Config:
        max_examples: int | None = None
        batch_size: int = 4
        note: str = ""

    check_fields(Config(note="anything"))
    with pytest.raises(XlgmError, match=r"^--batch-size: expected an integer >= 1, got 0$"):
        check_fields(Config(batch_size=0))
    with pytest.raises(XlgmError, match=r"^train\.max_examples: "):
        check_fields(Config(max_examples=-1), label=lambda name: f"train.{name}")


def test_comma_lists_refuse_blanks():
    assert validation.comma_list("--languages", "en, de") == ["en", "de"]
    for text in (",", "", "en,,de", "en,"):
        with pytest.raises(XlgmError, match="^--languages: expected a non-empty list"):
            validation.comma_list("--languages", text)


def test_model_positions():
    assert validation.model_positions(SimpleNamespace(model_type="bert", max_position_embeddings=512)) == 512
    # XLM-R: 514 slots, the first pad_token_id + 1 = 2 unused
    xlmr = SimpleNamespace(model_type="xlm-roberta", max_position_embeddings=514, pad_token_id=1)
    assert validation.model_positions(xlmr) == 512
    assert validation.model_positions(SimpleNamespace(model_type="mt5")) is None  # relative positions
    with pytest.raises(XlgmError, match=r"^--max-length: 1024 is more than the model's 512 positions$"):
        validation.max_length("--max-length", 1024, 512)


def test_json_is_written_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "sub" / "out.json"
    write_json(path, {"b": 1, "a": [1, 2]}, sort_keys=False)
    assert json.loads(path.read_text()) == {"b": 1, "a": [1, 2]}
    assert list(path.read_text().splitlines())[1].strip() == '"b": 1,'  # key order kept
    os.chmod(path, 0o640)
    write_json(path, {"c": 3}, sort_keys=False)
    assert json.loads(path.read_text()) == {"c": 3}
    assert path.stat().st_mode & 0o777 == 0o640  # the file keeps its mode

    def crash(src, dst):
        raise OSError("disk gone")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError):
        write_json(path, {"d": 4}, sort_keys=False)
    assert json.loads(path.read_text()) == {"c": 3}  # the old file, whole
    assert [p.name for p in path.parent.iterdir()] == ["out.json"]  # no temporary left behind


def test_close_names_suggest_the_nearest_and_nothing_when_none_is_near():
    from xlgm.core.errors import close_names, did_you_mean

    languages = "ar bg de el en es fr hi ru sw th tr ur vi zh".split()
    assert close_names("ge", languages) == ["de"]
    assert close_names("EN", languages)[0] == "en"
    assert did_you_mean("margn", ["margin", "logit-margin"]) == " (did you mean 'margin'?)"
    assert did_you_mean("klingon", languages) == ""


def test_language_codes_are_read_case_aside_and_typos_get_a_suggestion():
    from xlgm.data.tasks import XNLI

    assert XNLI.resolve_languages("EN,De") == ["en", "de"]
    with pytest.raises(XlgmError, match=r"unknown language code 'ge' for task xnli \(did you mean 'de'\?\)"):
        XNLI.resolve_languages("en,ge")


def test_an_unknown_measure_lists_only_the_measures_the_caller_accepts_and_names_are_read_case_aside():
    from xlgm.measures.base import get_measure, list_measures

    assert get_measure("Sharpness-Diff").name == "sharpness-diff"
    with pytest.raises(XlgmError) as err:
        get_measure("margn", kind="model")
    message = str(err.value)
    assert "(did you mean 'margin'?)" in message
    assert all(name in message for name in list_measures("model"))
    assert not any(name in message for name in list_measures("outputs"))
