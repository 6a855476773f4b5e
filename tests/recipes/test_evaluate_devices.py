"""Devices and precision of evaluation and measures: the model goes to `--device`, batches go where the model
is, and bf16 autocast on the CPU gives float32 logits that agree with fp32 on a trained tiny model."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pytest
import torch

from xlgm.cli import main
from xlgm.core.errors import XlgmError
from xlgm.data.batching import tokenize_examples
from xlgm.data.loading import load_examples
from xlgm.data.tasks import XNLI
from xlgm.measures.base import MeasureResult
from xlgm.models.load import load_target, load_tokenizer
from xlgm.recipes.evaluate import EvaluateConfig, predict_logits, predict_outputs
from xlgm.recipes.measure import MeasureConfig, MeasureData, measure_checkpoints
from xlgm.recipes.train import TrainConfig, train
from xlgm.runs import ResolvedTarget, resolve_target


class ModelOnMeta(torch.nn.Module):
    """A stand-in classifier whose weights are on the `meta` device: where its inputs arrive shows whether
    batches follow the model. `.to()` is recorded, not done (meta tensors cannot be copied)."""

    def __init__(self) -> None:
        super().__init__()
        self.weight = torch.nn.Parameter(torch.empty(2, device="meta"))
        self.config = SimpleNamespace(num_labels=3, max_position_embeddings=512, model_type="bert")
        self.input_devices: set[str] = set()
        self.moved_to: list[torch.device] = []

    def to(self, *args, **kwargs):
        self.moved_to.append(torch.device(args[0] if args else kwargs["device"]))
        return self

    def forward(self, output_hidden_states: bool = False, **batch):
        self.input_devices |= {v.device.type for v in batch.values()}
        return SimpleNamespace(logits=torch.zeros(batch["input_ids"].shape[0], 3))


@pytest.fixture(scope="module")
def trained_run(tiny_bert_dir, tmp_path_factory):
    config = TrainConfig(
        model=str(tiny_bert_dir),
        epochs=1,
        batch_size=16,
        max_train_examples=32,
        lr=2e-3,
        save_every=0,
        seed=0,
        mixed_precision="no",
    )
    return train(config, tmp_path_factory.mktemp("run") / "run", show_progress=False)


def test_bf16_on_the_cpu_gives_float32_logits_that_agree_with_fp32(trained_run):
    model, tokenizer = load_target(resolve_target(str(trained_run)), XNLI.num_labels)
    data = tokenize_examples(tokenizer, load_examples(XNLI, "test", "en", max_examples=64))
    fp32 = predict_logits(model, tokenizer, data, batch_size=32, precision="no")
    bf16 = predict_logits(model, tokenizer, data, batch_size=32, precision="bf16")
    assert fp32.dtype == bf16.dtype == np.float32 and fp32.shape == bf16.shape == (64, 3)
    assert not np.array_equal(fp32, bf16)  # autocast did run in bf16
    assert np.abs(fp32 - bf16).max() < 0.02  # (the logits' spread across classes is about 0.07 here)
    assert (fp32.argmax(-1) == bf16.argmax(-1)).mean() >= 0.9


def test_batches_follow_the_model(tiny_bert_dir):
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    data = tokenize_examples(tokenizer, load_examples(XNLI, "test", "de", max_examples=10))
    model = ModelOnMeta()
    outputs = predict_outputs(model, tokenizer, data, batch_size=4, language="de")
    assert model.input_devices == {"meta"}
    assert outputs.logits.shape == (10, 3) and outputs.logits.dtype == np.float32


def test_measures_take_batches_on_the_model_device(tiny_bert_dir, monkeypatch):
    import xlgm.recipes.measure as measure_module

    model = ModelOnMeta()
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    monkeypatch.setattr(measure_module, "load_target", lambda target, *a, **k: (model, tokenizer))
    seen: list[set[str]] = []

    def compute(name, model, batches, *args, **kwargs):
        seen.append({v.device.type for batch in batches for v in batch.values()})
        return MeasureResult(name, 1.0)

    monkeypatch.setattr(measure_module, "compute_measure", compute)
    config = MeasureConfig(measures=("margin",), data=MeasureData(max_examples=8, batch_size=4), device="cpu")
    records = measure_checkpoints([ResolvedTarget("stand-in")], XNLI, config, show_progress=False)
    assert model.moved_to == [torch.device("cpu")]  # --device: the model is moved there
    assert seen == [{"meta"}]  # and the batches follow the model, wherever it is
    assert [r["name"] for r in records] == ["margin"]


def test_evaluate_moves_the_model_to_the_device_and_reports_it(tiny_bert_dir, tmp_path, monkeypatch):
    import xlgm.models.load as load_module
    import xlgm.recipes.export  # noqa: F401  `main` builds every parser: a module it imports first under the
    # patch below would keep the stand-in loader for the rest of the session

    model = ModelOnMeta()
    tokenizer = load_tokenizer(str(tiny_bert_dir))
    monkeypatch.setattr(load_module, "load_target", lambda target, *a, **k: (model, tokenizer))
    out = tmp_path / "report.json"
    assert (
        main(
            [
                "evaluate",
                str(tiny_bert_dir),
                "--languages",
                "en",
                "--max-examples",
                "6",
                "--device",
                "cpu",
                "--mixed-precision",
                "no",
                "--out",
                str(out),
                "--db",
                str(tmp_path / "r.sqlite"),
            ]
        )
        == 0
    )
    assert model.moved_to == [torch.device("cpu")] and model.input_devices == {"meta"}
    report = json.loads(out.read_text())
    assert report["device"] == "meta" and report["precision"] == "no"
    assert report["languages"]["en"]["num_examples"] == 6


def test_evaluate_config_checks_its_fields():
    assert EvaluateConfig(languages=("en", "de"), max_examples=5).languages == ("en", "de")
    for kwargs, message in [
        ({"languages": ()}, "--languages"),
        ({"max_examples": 0}, "--max-examples"),
        ({"batch_size": 0}, "--batch-size"),
        ({"max_length": 4}, "--max-length"),
        ({"device": "gpu"}, "--device"),
        ({"mixed_precision": "fp8"}, "--mixed-precision"),
        ({"split": "holdout"}, "--split"),
        ({"task": "mnli"}, "--task"),
    ]:
        with pytest.raises(XlgmError, match=message):
            EvaluateConfig(**kwargs)


def test_measure_config_checks_its_fields():
    assert MeasureConfig().mixed_precision == "no"  # measures stay float32 unless asked
    for kwargs, message in [
        ({"measures": ()}, "--measures"),
        ({"seed": -1}, "--seed"),
        ({"options": {"margin": {"nope": 1}}}, "nope"),
        ({"params": "("}, "--params"),
        ({"device": "cuda:x"}, "--device"),
    ]:
        with pytest.raises(XlgmError, match=message):
            MeasureConfig(**kwargs)
