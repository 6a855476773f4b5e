"""Task files: the built-in tasks read from theirs, a new task from a file, malformed files in one line."""

from __future__ import annotations

import pytest

from xlgm.cli import main
from xlgm.core.errors import XlgmError
from xlgm.data.tasks import PANX, PAWSX, TASKS, UDPOS, XNLI, Task, get_task, load_task_file

TOY = """\
name: toy-unit
languages: [en, xx]
labels: ["no", "yes"]
text_columns: [claim, evidence]
"""


def test_builtin_tasks_read_from_their_files():
    assert set(TASKS) == {"xnli", "pawsx", "udpos", "panx"}
    assert XNLI == Task(
        name="xnli",
        languages=("en", "ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
        label_names=("entailment", "neutral", "contradiction"),
        text_fields=("premise", "hypothesis"),
        tsv_labels=("entailment", "neutral", "contradiction"),
        hf_dataset="facebook/xnli",
        hf_text_fields=("premise", "hypothesis"),
        group_fields=(0,),
    )
    assert PAWSX == Task(
        name="pawsx",
        languages=("en", "de", "es", "fr", "ja", "ko", "zh"),
        label_names=("not_paraphrase", "paraphrase"),
        text_fields=("sentence1", "sentence2"),
        tsv_labels=("0", "1"),
        hf_dataset="google-research-datasets/paws-x",
        hf_text_fields=("sentence1", "sentence2"),
        group_fields=(0, 1),
    )
    assert get_task("XNLI") is XNLI and get_task("paws-x") is PAWSX


def test_task_file_defaults(tmp_path):
    path = tmp_path / "toy.yaml"
    path.write_text(TOY + "hub: {dataset: org/toy, configs: {xx: xx_XX}}\n")
    task = get_task(str(path))
    assert task == Task(
        name="toy-unit",
        languages=("en", "xx"),
        label_names=("no", "yes"),
        text_fields=("claim", "evidence"),
        tsv_labels=("no", "yes"),
        hf_dataset="org/toy",
        hf_text_fields=("claim", "evidence"),
        group_fields=(0,),
        hf_configs=(("xx", "xx_XX"),),
    )
    assert (task.hf_config("xx"), task.hf_config("en"), task.target_languages) == ("xx_XX", "en", ("xx",))
    assert get_task("toy-unit") is task  # found by name once read


@pytest.mark.parametrize(
    "text, message",
    [
        (TOY.replace('labels: ["no", "yes"]\n', ""), "labels: required key missing"),
        (TOY + "colour: red\n", "colour: unknown key; expected one of: name, output"),
        (TOY + "output: multiple_choice\n", "output: expected one of: classification, tokens; got 'multiple_choice'"),
        (TOY + "metric: f1\n", "metric: expected one of: accuracy; got 'f1'"),
        (TOY + "metric: entity_f1\n", "metric: expected one of: accuracy; got 'entity_f1'"),
        (TOY + "evaluation_split: train\n", "evaluation_split: expected one of: test, dev; got 'train'"),
        (
            TOY + "group_columns: [title]\n",
            ("group_columns[0]: expected one of the text_columns (claim, evidence), got 'title'"),
        ),
        (TOY + "tsv: {labels: [n]}\n", "tsv.labels: expected 2 entries, got 1"),
        (TOY + "source_language: de\n", "source_language: expected one of: en, xx; got 'de'"),
        (TOY.replace("[claim, evidence]", "[claim]"), "text_columns: expected 2 entries, got 1"),
        (TOY + "hub: {configs: {fr: fr}}\n", "hub.configs.fr: unknown key; expected one of: en, xx"),
        ("- a list\n", "expected a mapping, got ['a list']"),
    ],
)
def test_malformed_task_file_names_file_and_key(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(XlgmError) as err:
        load_task_file(path)
    assert str(err.value).startswith(f"{path}: ")
    assert message in str(err.value)
    assert "\n" not in str(err.value)


TAGS = """\
name: toy-tags
output: tokens
languages: [en, xx]
labels: [O, B-X, I-X]
"""


def test_token_task_file_defaults(tmp_path):
    path = tmp_path / "tags.yaml"
    path.write_text(TAGS + "hub: {dataset: org/tags, configs: {xx: null}}\n")
    task = load_task_file(path)
    assert (task.output, task.metric, task.evaluation_split, task.is_token_task) == (
        "tokens",
        "token_accuracy",
        "test",
        True,
    )
    assert task.hf_text_fields == ("tokens", "tags") and task.group_fields == ()
    assert (task.hf_config("en"), task.hf_config("xx")) == ("en", "")  # null: not in the Hub dataset
    path.write_text(TAGS + "metric: entity_f1\nevaluation_split: dev\nhub: {token_columns: [words, ner]}\n")
    task = load_task_file(path)
    assert (task.metric, task.evaluation_split, task.hf_text_fields) == ("entity_f1", "dev", ("words", "ner"))


@pytest.mark.parametrize(
    "text, message",
    [
        (TAGS + "metric: accuracy\n", "metric: expected one of: token_accuracy, entity_f1; got 'accuracy'"),
        (TAGS + "text_columns: [a, b]\n", "text_columns: a token task (output: tokens) has no text columns"),
        (TAGS + "hub: {text_columns: [a, b]}\n", "hub.text_columns: unknown key; expected one of: dataset, token_"),
        (TAGS + "hub: {token_columns: [a]}\n", "hub.token_columns: expected 2 entries, got 1"),
        (
            TAGS.replace("[O, B-X, I-X]", "[O, B-X, X]") + "metric: entity_f1\n",
            "labels[2]: entity_f1 needs IOB2 tags (O, B-TYPE, I-TYPE), got 'X'",
        ),
        (
            TAGS.replace("[O, B-X, I-X]", "[O, B-X, I-Y]") + "metric: entity_f1\n",
            "labels[1]: 'B-X' has no I-X beside it",
        ),
        (
            TAGS.replace("[O, B-X, I-X]", "[B-X, I-X]") + "metric: entity_f1\n",
            "labels: entity_f1 needs the IOB2 tag O",
        ),
    ],
)
def test_malformed_token_task_file(tmp_path, text, message):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(XlgmError) as err:
        load_task_file(path)
    assert str(err.value).startswith(f"{path}: ") and message in str(err.value) and "\n" not in str(err.value)


def test_task_document_reads_back(tmp_path):
    import yaml

    from xlgm.data.tasks import task_document, write_run_task

    for task in (XNLI, PAWSX, UDPOS, PANX):
        path = tmp_path / f"{task.name}.yaml"
        path.write_text(yaml.safe_dump(task_document(task)))
        assert load_task_file(path) == task
    write_run_task(XNLI, tmp_path)  # a built-in task needs no copy
    assert not (tmp_path / "task.yaml").exists()


def test_a_builtin_name_cannot_be_redefined(tmp_path):
    path = tmp_path / "xnli.yaml"
    path.write_text(TOY.replace("name: toy-unit", "name: xnli"))
    with pytest.raises(XlgmError, match="name: task 'xnli' is already defined differently"):
        get_task(str(path))


@pytest.mark.parametrize("command", [["train"], ["evaluate", "some-model"], ["measure", "some-model"]])
def test_cli_task_errors_are_one_line(tmp_path, capsys, command):
    bad = tmp_path / "bad.yaml"
    bad.write_text(TOY.replace("text_columns: [claim, evidence]\n", ""))
    assert main([*command, "--task", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"{bad}: text_columns: required key missing" in err
    assert main([*command, "--task", "nli"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "unknown task 'nli'; expected one of: panx, pawsx, udpos, xnli or a task" in err


def test_spec_task_file_errors_name_the_spec(tmp_path):
    from xlgm.study.spec import parse_text

    with pytest.raises(XlgmError, match=r"^s.yaml:2: task: .*missing.yaml: no such task file$"):
        parse_text("name: x\ntask: missing.yaml\ngrid: [{objective: adamw}]\n", "s.yaml", tmp_path)
    with pytest.raises(XlgmError, match=r"^s.yaml:2: task: unknown task 'nli'"):
        parse_text("name: x\ntask: nli\ngrid: [{objective: adamw}]\n", "s.yaml", tmp_path)
