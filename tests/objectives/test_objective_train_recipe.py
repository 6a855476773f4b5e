"""The objectives inside the real training loop (xlgm.recipes.train) and against its tokenization."""

from __future__ import annotations

import json
import math
import random

import pytest
from objectives_testlib import single_thread  # noqa: F401  (autouse fixture)

from xlgm.data.batching import tokenize_examples
from xlgm.data.loading import load_examples
from xlgm.data.tasks import XNLI
from xlgm.models.load import load_tokenizer
from xlgm.objectives.segmentation import SubwordSampler


@pytest.mark.parametrize("model_fixture", ["tiny_bert_dir", "tiny_mt5_dir"])
def test_rate0_sampler_reproduces_the_loops_tokenization(model_fixture, request):
    tokenizer = load_tokenizer(str(request.getfixturevalue(model_fixture)))
    rows = load_examples(XNLI, "dev", "en", max_examples=40)
    for max_length in (16, 128):
        data = tokenize_examples(tokenizer, rows, max_length)
        sampler = SubwordSampler(tokenizer, 0.0, max_length)
        encoded = sampler.encode([(r.text_a, r.text_b) for r in rows], random.Random(0))
        assert [ids for ids, _ in encoded] == [f["input_ids"] for f in data.features]


def test_mvr_trains_in_the_loop_on_mt5(tiny_mt5_dir, tmp_path):
    from xlgm.recipes.train import TrainConfig, train

    config = TrainConfig(
        model=str(tiny_mt5_dir),
        task="xnli",
        epochs=1,
        batch_size=8,
        grad_accum=2,
        max_train_examples=40,
        holdout_fraction=0.2,
        lr=1e-3,
        save_every=0,
        log_every=1,
        seed=0,
        objective="mvr",
    )
    run_dir = train(config, tmp_path / "run", show_progress=False)
    log = [json.loads(line) for line in (run_dir / "train_log.jsonl").read_text().splitlines()]
    steps = [r for r in log if "loss" in r]
    assert steps and all(math.isfinite(r["loss"]) and r["mvr_kl"] >= -1e-6 for r in steps)
