"""The authors' conventions: MVR's KL weight per task, and Fisher's weight w against λ = w / B."""

from __future__ import annotations

import argparse

import pytest
import torch
import torch.nn.functional as F
from objectives_testlib import (
    make_batch,
    make_rows,
    single_thread,  # noqa: F401  (autouse fixture)
    tiny_model,
    wordpiece_tokenizer,
)

from xlgm.core.errors import XlgmError
from xlgm.objectives import (
    FisherConfig,
    FisherObjective,
    add_objective_arguments,
    build_config,
    build_objective,
    describe_objective,
    objective_from_args,
    objective_options,
)
from xlgm.objectives.base import StepContext, model_inputs
from xlgm.objectives.fisher import math_attention, sample_labels


@pytest.mark.parametrize("task,lam", [("xnli", 0.2), ("pawsx", 0.6)])
def test_mvr_kl_weight_defaults_to_the_authors_value_for_the_task(task, lam):
    objective = build_objective("mvr", task=task)
    assert objective.lam == lam
    assert objective.config.lam is None  # the config records that no λ was given
    assert describe_objective(objective)["lam"] == lam
    assert build_objective("mvr", task=task, lam=0.35).lam == 0.35  # a given λ wins over the task's


def test_mvr_kl_weight_has_no_default_for_another_task():
    with pytest.raises(XlgmError, match="no default KL weight for task 'mnli'.*--mvr-lambda"):
        build_objective("mvr", task="mnli")
    assert build_objective("mvr", task="mnli", lam=0.1).lam == 0.1


@pytest.mark.parametrize("task,lam", [("xnli", 0.2), ("pawsx", 0.6)])
def test_training_builds_mvr_with_its_task(tiny_bert_dir, tmp_path, monkeypatch, task, lam):
    """The training recipe hands its task to the objective: the λ in use is that task's default."""
    import xlgm.objectives
    from xlgm.recipes.train import TrainConfig, train

    built = []

    class Built(Exception):
        pass

    def spy(name, **kwargs):
        built.append(real(name, **kwargs))
        raise Built  # stop before training: only the construction is under test

    real = xlgm.objectives.build_objective
    monkeypatch.setattr(xlgm.objectives, "build_objective", spy)
    config = TrainConfig(
        model=str(tiny_bert_dir),
        task=task,
        max_train_examples=16,
        batch_size=8,
        objective="mvr",
        objective_options={"rate": 0.1},
    )
    with pytest.raises(Built):
        train(config, tmp_path / "run", show_progress=False)
    assert built[0].lam == lam and built[0].config.rate == 0.1


def test_training_builds_fisher_weight_with_its_batch_size(tiny_bert_dir, tmp_path, monkeypatch):
    import xlgm.objectives
    from xlgm.recipes.train import TrainConfig, train

    built = []

    class Built(Exception):
        pass

    def spy(name, **kwargs):
        built.append(real(name, **kwargs))
        raise Built

    real = xlgm.objectives.build_objective
    monkeypatch.setattr(xlgm.objectives, "build_objective", spy)
    config = TrainConfig(
        model=str(tiny_bert_dir),
        max_train_examples=16,
        batch_size=8,
        grad_accum=2,
        objective="fisher",
        objective_options={"weight": 0.004},
    )
    with pytest.raises(Built):
        train(config, tmp_path / "run", show_progress=False)
    assert built[0].lam == pytest.approx(0.004 / 8)  # B is the micro-batch per device, not batch x accumulation


def authors_fisher_loss(model, batch, y_hat, weight, batch_size):
    """The authors' loss (hf-sharpness BaseTrainer.compute_loss): the model's mean cross-entropy plus
    weight · Σ‖∂ CE(logits, ŷ)/∂θ‖² / train_batch_size, the inner gradient taken with create_graph."""
    with math_attention():
        logits = model(**model_inputs(batch)).logits
    f_loss = torch.nn.CrossEntropyLoss()(logits.view(-1, logits.size(-1)), y_hat.view(-1))
    params = [p for p in model.parameters() if p.requires_grad]
    grads = torch.autograd.grad(f_loss, params, retain_graph=True, create_graph=True)
    gr_norm_sq = sum((g**2).sum() for g in grads)
    return F.cross_entropy(logits, batch["labels"]) + weight * gr_norm_sq / batch_size


def test_fisher_weight_is_lambda_times_batch_size_same_gradient():
    tok = wordpiece_tokenizer()
    rows = make_rows(8, seed=4)
    batch = make_batch(tok, rows, range(8), max_length=24)
    size = batch["labels"].shape[0]
    weight, seed = 0.05, 11

    def gradient(objective):
        model = tiny_model(vocab_size=len(tok), seed=5, dtype=torch.float64)
        logs = objective.micro_step(model, batch, StepContext(None, 0, 0, 1, torch.Generator().manual_seed(seed)))
        return logs, {n: p.grad.clone() for n, p in model.named_parameters()}

    logs_w, by_weight = gradient(build_objective("fisher", batch_size=size, weight=weight))
    logs_l, by_lambda = gradient(build_objective("fisher", lam=weight / size))
    assert logs_w["objective"] == pytest.approx(logs_l["objective"], rel=1e-12)
    for name in by_weight:
        torch.testing.assert_close(by_weight[name], by_lambda[name], rtol=1e-12, atol=1e-15)

    # and both are the gradient of the authors' own loss, with the same sampled labels
    model = tiny_model(vocab_size=len(tok), seed=5, dtype=torch.float64)
    with torch.no_grad():
        logits = model(**model_inputs(batch)).logits
    y_hat = sample_labels(logits, torch.Generator().manual_seed(seed))
    loss = authors_fisher_loss(model, batch, y_hat, weight, size)
    assert loss.item() == pytest.approx(logs_w["objective"], rel=1e-10)
    loss.backward()
    for name, p in model.named_parameters():
        torch.testing.assert_close(by_weight[name], p.grad, rtol=1e-9, atol=1e-12)


def test_fisher_weight_and_lambda_are_exclusive():
    with pytest.raises(XlgmError, match="--fisher-lambda.*--fisher-weight.*not both"):
        build_config("fisher", lam=0.1, weight=0.001)
    with pytest.raises(XlgmError, match="needs the micro-batch size"):
        build_objective("fisher", weight=0.001)  # w means nothing without B
    with pytest.raises(XlgmError, match="weight \\(--fisher-weight\\): expected a number >= 0"):
        build_config("fisher", weight=-1.0)
    assert build_config("fisher", weight=0.001).lam is None  # a spec's `weight` validates without a batch size
    assert FisherObjective(FisherConfig()).lam == 0.1  # the library default, unchanged


def cli():
    return add_objective_arguments(argparse.ArgumentParser(prog="xlgm train"))


def test_fisher_weight_flag(capsys):
    args = cli().parse_args(["--objective", "fisher", "--fisher-weight", "0.001"])
    assert objective_options(args) == ("fisher", {"weight": 0.001})
    objective = objective_from_args(args, batch_size=32, max_length=64)
    assert objective.lam == pytest.approx(0.001 / 32)
    with pytest.raises(SystemExit) as exit_info:
        cli().parse_args(["--objective", "fisher", "--fisher-weight", "0.001", "--fisher-lambda", "0.1"])
    assert exit_info.value.code == 2
    assert "not allowed with argument" in capsys.readouterr().err
    with pytest.raises(XlgmError, match="--fisher-weight applies to --objective fisher"):
        objective_options(cli().parse_args(["--objective", "sam", "--fisher-weight", "0.001"]))


def test_help_states_the_conventions():
    helps = {a.option_strings[0]: a.help for a in cli()._actions if a.option_strings}
    assert "so λ = w/B: 0.1 is w = 3.2 at --batch-size 32" in helps["--fisher-lambda"]
    assert "λ = w / --batch-size" in helps["--fisher-weight"]
    assert "xnli 0.2, pawsx 0.6" in helps["--mvr-lambda"]
