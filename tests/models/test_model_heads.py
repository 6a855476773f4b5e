"""Classification heads of base models and Hub/local classifiers, and safetensors-only loading."""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from xlgm.cli import main
from xlgm.core.errors import XlgmError
from xlgm.data.tasks import PAWSX, XNLI
from xlgm.models import load as model_load
from xlgm.models.load import load_classifier, load_target
from xlgm.runs import ResolvedTarget


def save_classifier(folder: Path, tiny_bert_dir: Path, id2label: dict[int, str] | None, seed: int = 3):
    """A tiny BertForSequenceClassification with a trained-looking (random, non-zero) head, saved with the
    tiny BERT's tokenizer; `id2label` None leaves transformers' LABEL_i names."""
    from transformers import AutoTokenizer, BertConfig, BertForSequenceClassification

    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.num_labels = len(id2label) if id2label else 3
    if id2label:
        config.id2label = dict(id2label)
        config.label2id = {v: k for k, v in id2label.items()}
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(seed)
    model = BertForSequenceClassification(config)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.randn(config.num_labels))  # rows must be told apart by the bias too
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    return model.eval()


def inputs(tokenizer):
    return tokenizer(
        ["A man plays a guitar.", "Nobody is here."],
        ["Someone plays music.", "The room is full."],
        return_tensors="pt",
        padding=True,
    )


def head_of(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if n.startswith("classifier.")}


def test_classifier_keeps_its_head_with_labels_mapped_by_name(tiny_bert_dir, tmp_path):
    folder = tmp_path / "classifier"
    # its order: contradiction, entailment, neutral; names in other cases
    original = save_classifier(folder, tiny_bert_dir, {0: "CONTRADICTION", 1: "Entailment", 2: "neutral"})
    model, tokenizer = load_target(ResolvedTarget(str(folder)), XNLI.num_labels, XNLI.label_names)
    batch = inputs(tokenizer)
    with torch.no_grad():
        theirs = original(**batch).logits
        ours = model(**batch).logits
    # the task's order entailment, neutral, contradiction is their rows 1, 2, 0
    torch.testing.assert_close(ours, theirs[:, [1, 2, 0]], rtol=0, atol=1e-6)
    assert not torch.allclose(ours, theirs, atol=1e-3)  # the mapping did reorder something
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}


def test_classifier_in_the_tasks_order_is_unchanged(tiny_bert_dir, tmp_path):
    folder = tmp_path / "classifier"
    original = save_classifier(folder, tiny_bert_dir, {0: "not_paraphrase", 1: "paraphrase"})
    model, _ = load_target(ResolvedTarget(str(folder)), PAWSX.num_labels, PAWSX.label_names)
    params = dict(model.named_parameters())
    for name, p in original.named_parameters():
        assert torch.equal(p, params[name]), name


@pytest.mark.parametrize(
    "id2label,shown",
    [
        ({0: "positive", 1: "negative", 2: "neutral"}, "positive, negative, neutral"),
        (None, "LABEL_0, LABEL_1, LABEL_2"),
        ({0: "entailment", 1: "not_entailment"}, "entailment, not_entailment"),
    ],
)
def test_classifier_with_other_labels_is_refused(tiny_bert_dir, tmp_path, capsys, id2label, shown):
    folder = tmp_path / "classifier"
    save_classifier(folder, tiny_bert_dir, id2label)
    with pytest.raises(
        XlgmError,
        match=f"its classification head's labels \\({shown}\\) are not the task's "
        r"\(entailment, neutral, contradiction\); pass random_head=SEED",  # load_target's argument, from Python
    ):
        load_target(ResolvedTarget(str(folder)), XNLI.num_labels, XNLI.label_names)
    capsys.readouterr()  # (save_pretrained's own bar)
    assert main(["evaluate", str(folder), "--languages", "en", "--max-examples", "4"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith(f"xlgm: error: {folder}: its classification head's labels")
    assert "pass --random-head" in err  # the flag, on the command line


def test_base_model_without_head_is_refused(tiny_bert_dir, tmp_path, capsys):
    with pytest.raises(
        XlgmError,
        match="has no trained classification head for the task's labels "
        r"\(entailment, neutral, contradiction\).*random_head=SEED",
    ):
        load_target(ResolvedTarget(str(tiny_bert_dir)), XNLI.num_labels, XNLI.label_names)
    out = tmp_path / "eval.json"
    assert (
        main(
            [
                "evaluate",
                str(tiny_bert_dir),
                "--languages",
                "en",
                "--max-examples",
                "4",
                "--out",
                str(out),
                "--db",
                str(tmp_path / "r.sqlite"),
            ]
        )
        == 2
    )
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "has no trained classification head" in err
    assert not out.exists() and not (tmp_path / "r.sqlite").exists()


def test_random_head_is_seeded_and_leaves_the_global_rng_alone(tiny_bert_dir, capsys):
    state = torch.random.get_rng_state()
    first, _ = load_target(ResolvedTarget(str(tiny_bert_dir)), 3, XNLI.label_names, random_head=5)
    second, _ = load_target(ResolvedTarget(str(tiny_bert_dir)), 3, XNLI.label_names, random_head=5)
    other, _ = load_target(ResolvedTarget(str(tiny_bert_dir)), 3, XNLI.label_names, random_head=6)
    assert torch.equal(torch.random.get_rng_state(), state)
    a, b, c = head_of(first), head_of(second), head_of(other)
    assert a.keys() == {"classifier.weight", "classifier.bias"}
    assert all(torch.equal(a[k], b[k]) for k in a)
    assert not torch.equal(a["classifier.weight"], c["classifier.weight"])
    err = capsys.readouterr().err
    assert err.count("a random classification head (seed 5), not a trained one: its accuracy is chance level") == 2


def test_random_head_replaces_a_classifiers_head(tiny_bert_dir, tmp_path):
    folder = tmp_path / "classifier"
    original = save_classifier(folder, tiny_bert_dir, {0: "positive", 1: "negative", 2: "neutral"})
    model, _ = load_target(ResolvedTarget(str(folder)), 3, XNLI.label_names, random_head=0)
    assert not torch.equal(head_of(model)["classifier.weight"], original.classifier.weight)
    assert torch.equal(dict(model.named_parameters())["bert.pooler.dense.weight"], original.bert.pooler.dense.weight)


def test_cli_random_head_evaluates_and_says_so(tiny_bert_dir, tmp_path, capsys):
    reports = []
    for i in range(2):
        out = tmp_path / f"eval-{i}.json"
        assert (
            main(
                [
                    "evaluate",
                    str(tiny_bert_dir),
                    "--languages",
                    "en,de",
                    "--max-examples",
                    "12",
                    "--random-head",
                    "--out",
                    str(out),
                    "--db",
                    str(tmp_path / "r.sqlite"),
                ]
            )
            == 0
        )
        reports.append(json.loads(out.read_text())["languages"])
        assert "a random classification head (seed 0)" in capsys.readouterr().err
    assert reports[0] == reports[1]  # a seeded head: the same accuracy on every run
    with pytest.raises(XlgmError, match="--random-head applies to a base model"):
        load_target(ResolvedTarget(str(tiny_bert_dir), tmp_path, tmp_path), 3, XNLI.label_names, random_head=0)


def test_training_keeps_a_matching_head_and_replaces_another(tiny_bert_dir, tmp_path):
    matching, other = tmp_path / "matching", tmp_path / "other"
    original = save_classifier(matching, tiny_bert_dir, {0: "neutral", 1: "contradiction", 2: "entailment"})
    model, new = load_classifier(str(matching), 3, XNLI.label_names, return_new=True)
    assert new == []  # nothing fresh: a run records an empty initial head
    torch.testing.assert_close(model.classifier.weight, original.classifier.weight[[2, 0, 1]], rtol=0, atol=0)

    original = save_classifier(other, tiny_bert_dir, {0: "a", 1: "b", 2: "c"})
    torch.manual_seed(0)
    model, new = load_classifier(str(other), 3, XNLI.label_names, return_new=True)
    assert new == ["classifier.bias", "classifier.weight"]
    assert not torch.equal(model.classifier.weight, original.classifier.weight)
    assert torch.equal(model.classifier.bias, torch.zeros(3))  # transformers' own initialisation of a new head
    assert model.config.id2label == {0: "entailment", 1: "neutral", 2: "contradiction"}


def test_encoder_weights_missing_from_the_file_are_reported(tiny_bert_dir, tmp_path, capsys):
    folder = tmp_path / "partial"
    shutil.copytree(tiny_bert_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    save_file(
        {k: v for k, v in state.items() if "pooler" not in k},
        str(folder / "model.safetensors"),
        metadata={"format": "pt"},
    )
    load_classifier(str(folder), 3, XNLI.label_names)
    err = capsys.readouterr().err
    assert f"xlgm: warning: {folder}: 2 parameter(s) of the model are not in its weights and start random" in err
    assert "bert.pooler.dense.bias" in err and "classifier" not in err


# ------------------------------------------------------------------------------------------------------------
# safetensors only


def pickle_only_folder(tiny_bert_dir: Path, folder: Path) -> dict[str, torch.Tensor]:
    """What `save_pretrained(safe_serialization=False)` wrote before transformers 5: config, tokenizer and a
    pickled state dict in pytorch_model.bin (transformers 5 writes safetensors whatever the flag)."""
    shutil.copytree(tiny_bert_dir, folder)
    state = load_file(str(folder / "model.safetensors"))
    (folder / "model.safetensors").unlink()
    torch.save(state, folder / "pytorch_model.bin")
    return state


def test_pickle_only_folder_is_refused_with_a_conversion_command(tiny_bert_dir, tmp_path, monkeypatch, capsys):
    folder = tmp_path / "pickled"
    state = pickle_only_folder(tiny_bert_dir, folder)

    def no_unpickling(*args, **kwargs):
        raise AssertionError("torch.load was called on a user's file")

    with monkeypatch.context() as m:
        m.setattr(torch, "load", no_unpickling)
        with pytest.raises(
            XlgmError,
            match=f"^{folder}: holds only pytorch_model.bin \\(pickle\\); convert it to "
            "safetensors first, e.g. python -c ",
        ) as info:
            load_classifier(str(folder), 3, XNLI.label_names)
        assert main(["evaluate", str(folder), "--random-head", "--languages", "en", "--max-examples", "4"]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "holds only pytorch_model.bin (pickle)" in err
        # without the folder check, from_pretrained itself is told to read safetensors only
        m.setattr(model_load, "check_weights_folder", lambda folder: None)
        with pytest.raises(XlgmError, match="could not load model weights .*model.safetensors"):
            load_classifier(str(folder), 3, XNLI.label_names)

    # the command in the message, run by a shell, converts the folder, which then loads the same weights
    command = str(info.value).split("e.g. ", 1)[1]
    assert command.startswith('python -c "') and command.endswith('"')
    subprocess.run(["bash", "-c", f"{shlex.quote(sys.executable)}{command[len('python') :]}"], check=True, timeout=120)
    model, _ = load_target(ResolvedTarget(str(folder)), 3, XNLI.label_names, random_head=0)
    params = dict(model.named_parameters())
    for name, tensor in state.items():
        assert torch.equal(params[f"bert.{name}"] if f"bert.{name}" in params else params[name], tensor), name


def test_folder_without_weights(tiny_bert_dir, tmp_path):
    folder = tmp_path / "empty-model"
    shutil.copytree(tiny_bert_dir, folder)
    (folder / "model.safetensors").unlink()
    with pytest.raises(XlgmError, match=f"^{folder}: no model.safetensors in this folder"):
        load_classifier(str(folder), 3)


def test_measure_initial_state_is_read_from_safetensors_only(tmp_path, monkeypatch):
    from xlgm.measures.distance import load_state

    state = {"w": torch.arange(6.0).reshape(2, 3)}
    torch.save(state, tmp_path / "init.pt")
    monkeypatch.setattr(torch, "load", lambda *a, **k: pytest.fail("torch.load was called on a user's file"))
    with pytest.raises(XlgmError, match=r"init\.pt: the initial state must be a \.safetensors file"):
        load_state(tmp_path / "init.pt")
    save_file(state, str(tmp_path / "init.safetensors"))
    assert torch.equal(load_state(tmp_path / "init.safetensors")["w"], state["w"])
    (tmp_path / "init.safetensors").write_bytes(b"\0" * 64)
    with pytest.raises(XlgmError, match=r"init\.safetensors: zero-filled"):
        load_state(tmp_path / "init.safetensors")
