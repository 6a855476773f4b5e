"""Early stopping (`--patience`): training ends at the first checkpoint that makes `patience` in a row without a
better held-out accuracy, and up to there it is the same training as without it."""

from __future__ import annotations

import json
from dataclasses import asdict, replace

import pytest
import torch

from xlgm.core.errors import XlgmError
from xlgm.recipes.train import TrainConfig, checkpoints_without_gain, train
from xlgm.results import config_hash


def _index(*accuracies):
    return {"checkpoints": [{"step": i + 1, "dev_accuracy": a} for i, a in enumerate(accuracies)]}


def test_checkpoints_without_gain_counts_from_the_last_strict_improvement():
    assert checkpoints_without_gain(_index()) == 0
    assert checkpoints_without_gain(_index(0.4)) == 0
    assert checkpoints_without_gain(_index(0.4, 0.5)) == 0
    assert checkpoints_without_gain(_index(0.4, 0.5, 0.5)) == 1  # a tie is not a gain
    assert checkpoints_without_gain(_index(0.4, 0.5, 0.3, 0.45)) == 2
    assert checkpoints_without_gain(_index(0.4, 0.5, 0.3, 0.6)) == 0
    assert checkpoints_without_gain(_index(None, 0.3)) == 0


def test_patience_is_checked_and_left_out_of_old_run_ids():
    config = TrainConfig()
    assert config.run_id == config_hash({k: v for k, v in asdict(config).items() if k != "patience"})
    assert replace(config, save_every=5, patience=2).run_id != replace(config, save_every=5).run_id
    with pytest.raises(XlgmError, match="--patience counts checkpoints"):
        TrainConfig(patience=2)
    with pytest.raises(XlgmError, match="--patience"):
        TrainConfig(patience=-1, save_every=2)
    with pytest.raises(XlgmError, match="held-out rows"):
        TrainConfig(patience=2, save_every=2, holdout_fraction=0)


def test_training_stops_where_the_full_run_first_lost_patience(tiny_bert_dir, tmp_path):
    torch.set_num_threads(1)
    full = TrainConfig(model=str(tiny_bert_dir), max_train_examples=160, batch_size=4, lr=1e-3, save_every=2)
    reference = train(full, tmp_path / "full", show_progress=False, device="cpu")
    checkpoints = json.loads((reference / "checkpoints.json").read_text())["checkpoints"]
    stop = next(
        (i for i in range(len(checkpoints)) if checkpoints_without_gain({"checkpoints": checkpoints[: i + 1]}) >= 2),
        None,
    )
    assert stop is not None and stop < len(checkpoints) - 1, "the full run never lost patience: no test"

    run = train(replace(full, patience=2), tmp_path / "early", show_progress=False, device="cpu")
    index = json.loads((run / "checkpoints.json").read_text())
    assert index["checkpoints"] == checkpoints[: stop + 1]
    for c in index["checkpoints"]:
        weights = (run / "checkpoints" / c["name"] / "model.safetensors").read_bytes()
        assert weights == (reference / "checkpoints" / c["name"] / "model.safetensors").read_bytes(), c["name"]
    state = json.loads((run / "state.json").read_text())
    assert state["finished"] is True and state["stopped_early"] == checkpoints[stop]["step"]
    assert json.loads((reference / "state.json").read_text())["stopped_early"] is None
