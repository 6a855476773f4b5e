"""`xlgm train --report-to`: accelerate's trackers hear what train_log.jsonl records; a missing package is
one line before training starts."""

from __future__ import annotations

import json

import pytest
from accelerate.tracking import GeneralTracker

from xlgm.cli import main
from xlgm.core.errors import XlgmError
from xlgm.recipes.accelerator import check_report_to
from xlgm.recipes.train import TrainConfig, train


class RecordingTracker(GeneralTracker):
    name = "recording"
    requires_logging_directory = False

    def __init__(self) -> None:
        super().__init__()
        self.config: dict | None = None
        self.logged: list[tuple[int, dict]] = []
        self.finished = False

    @property
    def tracker(self):
        return self

    def store_init_configuration(self, values: dict) -> None:
        self.config = dict(values)

    def log(self, values: dict, step: int | None = None, **kwargs) -> None:
        self.logged.append((step, dict(values)))

    def finish(self) -> None:
        self.finished = True


def test_a_tracker_hears_every_logged_number(tiny_bert_dir, tmp_path):
    config = TrainConfig(
        model=str(tiny_bert_dir),
        epochs=1,
        batch_size=16,
        max_train_examples=48,
        lr=1e-3,
        save_every=1,
        log_every=1,
        seed=0,
    )
    tracker = RecordingTracker()
    run = train(config, tmp_path / "run", show_progress=False, report_to=[tracker])
    assert tracker.finished
    assert tracker.config["run_id"] == config.run_id and tracker.config["lr"] == config.lr
    assert tracker.config["objective_options"] == "{}"  # non-scalars as JSON text
    records = [json.loads(line) for line in (run / "train_log.jsonl").read_text().splitlines()]
    expected = []
    for r in records:
        values = {k: v for k, v in r.items() if k != "step" and isinstance(v, (int, float)) and v is not None}
        expected.append((r["step"], values))
    assert tracker.logged == expected
    assert any("loss" in v for _, v in tracker.logged) and any("dev_accuracy" in v for _, v in tracker.logged)


def test_report_to_names_are_checked():
    assert check_report_to(["none"]) == [] and check_report_to(()) == []
    with pytest.raises(XlgmError, match="--report-to"):
        check_report_to(["neptune"])
    with pytest.raises(XlgmError, match="--report-to"):
        check_report_to(["tensorboard,"])


@pytest.mark.parametrize("name", ["tensorboard", "wandb", "mlflow"])
def test_a_missing_tracker_package_is_one_line_before_training(name, tiny_bert_dir, tmp_path, capsys, monkeypatch):
    import accelerate.utils

    monkeypatch.setattr(accelerate.utils, f"is_{name}_available", lambda: False)
    out = tmp_path / "run"
    code = main(
        [
            "train",
            "--model",
            str(tiny_bert_dir),
            "--max-train-examples",
            "16",
            "--out",
            str(out),
            "--report-to",
            f"none,{name}" if name != "wandb" else name,
        ]
    )
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0
    assert f"--report-to {name}: the {name} package is not installed (pip install 'xlgm[{name}]')" in err
    assert not out.exists()


def test_tensorboard_writes_events_under_the_run(tiny_bert_dir, tmp_path):
    pytest.importorskip("tensorboard")
    config = TrainConfig(model=str(tiny_bert_dir), epochs=1, batch_size=16, max_train_examples=32, seed=0)
    run = train(config, tmp_path / "run", show_progress=False, report_to="tensorboard")
    assert list((run / "trackers").rglob("events.out.tfevents.*"))
