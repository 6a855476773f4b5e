"""Where a study keeps each run: OUT/runs/PREFIX-RUNID, a readable prefix from the run's config before its id.

    OUT/runs/adamw-lr3e-4-s0-82e2d628dcd4/        objective, its options, learning rate, seed, then the run id
    OUT/runs/sam-rho0.05-lr3e-4-s0-a26317930958/

The run id (the hash of the config) stays the run's name everywhere else (database rows, unit ids, checkpoint
ids); only the folder gains the prefix, so finding the SAM run needs no config.json opened. Studies written
before folders had a prefix keep their runs in OUT/runs/RUNID: `run_dir` finds a run's folder named either way,
so such a study resumes, analyses and reports as before.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from xlgm.study.db import RUNS_FOLDER

# The prefix is a hint, not an id (the run id after it is): long objective options are cut here.
MAX_PREFIX = 60


def _short(value: Any) -> str:
    """A number as a folder name writes it: 3e-4, 0.05, 16; anything else as text."""
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-2 or abs(value) >= 1e5):
            mantissa, exponent = f"{value:.2e}".split("e")
            return f"{mantissa.rstrip('0').rstrip('.')}e{int(exponent)}"
        return f"{value:g}"
    return str(value)


def run_folder_name(config: Any) -> str:
    """`OBJECTIVE[-OPTIONS]-lrLR-sSEED-RUNID` of a TrainConfig, e.g. `sam-rho0.05-lr3e-4-s0-a26317930958`."""
    options = [f"{key}{_short(value)}" for key, value in sorted(dict(config.objective_options).items())]
    parts = [config.objective, *options, f"lr{_short(config.lr)}", f"s{config.seed}"]
    prefix = re.sub(r"[^A-Za-z0-9.+-]+", "", "-".join(parts))[:MAX_PREFIX].strip("-.")
    return f"{prefix}-{config.run_id}" if prefix else config.run_id


def run_dir(out: str | Path, run_id: str, config: Any = None) -> Path:
    """Run `run_id`'s folder in study folder `out`: the one there, named `RUNID` (a study written before folders
    had a prefix) or `PREFIX-RUNID`; for a run with no folder yet, the one its TrainConfig names
    (`run_folder_name`), or `RUNID` when no config is given."""
    runs = Path(out) / RUNS_FOLDER
    bare = runs / run_id
    if bare.exists():
        return bare
    named = sorted(p for p in runs.glob(f"*-{run_id}") if p.name.endswith(f"-{run_id}"))
    if named:
        return named[0]
    return runs / run_folder_name(config) if config is not None else bare
