"""The subset of XNLI and PAWS-X shipped inside the package, for the embedded default.

English dev (all rows) and 500 test rows per language, the same rows in every language (the files are
parallel). See `bundled/README.md` for provenance and licences. Rebuild with `python -m
xlgm.data.bundled SOURCE_DIR`.
"""

from __future__ import annotations

import random
import sys
from importlib import resources
from pathlib import Path

from xlgm.data.tasks import TASKS

BUNDLED_TEST_ROWS = 500
SUBSET_SEED = 20240424  # the paper's arXiv id date; any fixed seed would do


def bundled_dir() -> Path:
    return Path(str(resources.files("xlgm.data") / "bundled"))


def build_subset(source_dir: Path, out_dir: Path, rows: int = BUNDLED_TEST_ROWS) -> None:
    """Copy English dev and a seeded sample of `rows` test rows, the same rows for every language."""
    for task in TASKS.values():
        (out_dir / task.name).mkdir(parents=True, exist_ok=True)
        dev = (source_dir / task.name / "dev-en.tsv").read_bytes()
        (out_dir / task.name / "dev-en.tsv").write_bytes(dev)
        # split on "\n" only: str.splitlines would also split on U+2028 and friends inside a sentence
        tests = {lang: (source_dir / task.name / f"test-{lang}.tsv").read_bytes().decode("utf-8").split("\n")
                 for lang in task.languages}
        tests = {lang: [line + "\n" for line in lines if line] for lang, lines in tests.items()}
        n = min(len(lines) for lines in tests.values())
        keep = sorted(random.Random(SUBSET_SEED).sample(range(n), rows))
        for lang, lines in tests.items():
            (out_dir / task.name / f"test-{lang}.tsv").write_bytes("".join(lines[i] for i in keep).encode("utf-8"))


if __name__ == "__main__":
    build_subset(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else bundled_dir())
