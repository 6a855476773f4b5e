"""Helpers of the study tests: the tiny study spec (2 objectives x 1 seed, 2 languages, 8 test rows a language,
2 cheap measures), its expected sizes, and the result rows of a study folder."""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterator
from pathlib import Path

import torch

TINY_SPEC = """\
name: tiny
task: xnli
model: {model}
target_languages: [de]
train: {{epochs: 1, batch_size: 8, max_train_examples: 32, lr: 1.0e-3, log_every: 1}}
grid:
  - objective: adamw
  - {{objective: sam, rho: 0.05}}
seeds: [0]
checkpoints: {{every: 2}}
evaluation: {{max_examples: 8, batch_size: 8}}
measures:
  names: [margin, frobenius-distance]
  data: {{max_examples: 16, batch_size: 8}}
analysis: {{n_boot: 50}}
"""
# 29 training rows (32 less the 10% held out) / 8 = 4 steps: checkpoints at steps 2 and 4.
RUNS, CHECKPOINTS, LANGUAGES, MEASURES = 2, 2, 2, 2
UNITS = RUNS + RUNS * CHECKPOINTS * (LANGUAGES + MEASURES)


def write_spec(folder: Path, model_dir: Path, text: str = TINY_SPEC) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "tiny.yaml"
    path.write_text(text.format(model=model_dir))
    return path


def table_rows(db_path: Path) -> dict[str, list[tuple]]:
    """The study's result rows without timestamps, paths or timings, sorted (for comparing two runs of a study)."""
    with sqlite3.connect(db_path) as db:
        return {
            "runs": sorted(db.execute("SELECT run_id, config, status FROM runs")),
            "checkpoints": sorted(
                db.execute("SELECT checkpoint_id, run_id, step, epoch, dev_accuracy, is_best, is_last FROM checkpoints")
            ),
            "evaluations": sorted(
                db.execute("SELECT checkpoint_id, task, language, split, data, num_examples, accuracy FROM evaluations")
            ),
            "measures": sorted(
                db.execute("SELECT checkpoint_id, measure, config_hash, data, value, num_samples FROM measures")
            ),
            "work": sorted(db.execute("SELECT unit_id, kind, run_id, checkpoint_id, item FROM work")),
        }


@contextlib.contextmanager
def one_thread() -> Iterator[None]:
    """Tiny models run several times faster on one thread than on two on a loaded 2-core machine."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(before)
