"""The subset of XNLI, PAWS-X, UD-POS and PAN-X shipped inside the package, for the embedded default.

Sentence pairs: English dev (all rows), 500 test rows per language, the same rows in every language (the
files are parallel), and an English train split: the dev and test rows that share no premise (PAWS-X:
sentence), in any language, with those 500 (`xlgm.data.splits`).

Token tasks: English train and dev in full, and for every language a seeded sample of up to 1,000
sentences of its evaluation split (UD-POS: test; PAN-X: dev, whose English file ships in full), kept in
file order; gzipped. See `bundled/README.md` for provenance and licences. Rebuild with
`python -m xlgm.data.bundled SOURCE_DIR`.
"""

from __future__ import annotations

import gzip
import random
import sys
from importlib import resources
from pathlib import Path

from xlgm.data.conll import conll_text, read_conll
from xlgm.data.splits import disjoint_positions
from xlgm.data.tasks import TASKS, Example, Task
from xlgm.data.tsv import GZIP_SUFFIX

BUNDLED_TEST_ROWS = 500
BUNDLED_TOKEN_SENTENCES = 1000  # evaluation sentences a language, where it has them
SUBSET_SEED = 20240424  # the paper's arXiv id date; any fixed seed would do


def bundled_dir() -> Path:
    return Path(str(resources.files("xlgm.data") / "bundled"))


def _lines(path: Path) -> list[str]:
    # split on "\n" only: str.splitlines would also split on U+2028 and friends inside a sentence
    return [line + "\n" for line in path.read_bytes().decode("utf-8").split("\n") if line]


def _pair(line: str) -> Example:
    text_a, text_b, *_ = line.rstrip("\n").split("\t")
    return Example(text_a, text_b, -1)


def build_subset(source_dir: Path, out_dir: Path, rows: int = BUNDLED_TEST_ROWS) -> None:
    """Copy English dev, a seeded sample of `rows` test rows (the same rows for every language), and write
    English train: the dev and test rows that share no group text, in any language, with the sample."""
    for task in TASKS.values():
        if task.is_token_task:
            build_token_subset(task, source_dir, out_dir)
            continue
        folder = out_dir / task.name
        folder.mkdir(parents=True, exist_ok=True)
        english = task.source_language
        (folder / f"dev-{english}.tsv").write_bytes((source_dir / task.name / f"dev-{english}.tsv").read_bytes())
        tests = {lang: _lines(source_dir / task.name / f"test-{lang}.tsv") for lang in task.languages}
        devs = {
            lang: _lines(path)
            for lang in task.languages
            if (path := source_dir / task.name / f"dev-{lang}.tsv").is_file()
        }
        n = min(len(lines) for lines in tests.values())
        keep = sorted(random.Random(SUBSET_SEED).sample(range(n), rows))
        for lang, lines in tests.items():
            (folder / f"test-{lang}.tsv").write_bytes("".join(lines[i] for i in keep).encode("utf-8"))
        pairs = {
            name: {lang: [_pair(line) for line in lines] for lang, lines in files.items()}
            for name, files in (("dev", devs), ("test", tests))
        }
        evaluation = {lang: [pairs["test"][lang][i] for i in keep] for lang in tests}
        dev_at, test_at = disjoint_positions(task, [pairs["dev"], pairs["test"]], evaluation)
        train = [devs[english][i] for i in dev_at] + [tests[english][i] for i in test_at]
        (folder / f"train-{english}.tsv").write_bytes("".join(train).encode("utf-8"))


def build_token_subset(task: Task, source_dir: Path, out_dir: Path, sentences: int = BUNDLED_TOKEN_SENTENCES) -> None:
    """Gzip the source language's train and dev files whole and, for each language, a seeded sample of
    `sentences` sentences of its evaluation split (all of them where it has fewer), kept in file order."""
    folder = out_dir / task.name
    folder.mkdir(parents=True, exist_ok=True)
    source = source_dir / task.name
    english = task.source_language

    def write(name: str, chosen: list) -> None:
        data = conll_text(task, chosen).encode("utf-8")
        # mtime=0: the same sentences give the same bytes, so a rebuild shows no spurious change
        (folder / (name + GZIP_SUFFIX)).write_bytes(gzip.compress(data, compresslevel=9, mtime=0))

    for split in ("train", "dev"):
        write(f"{split}-{english}.tsv", read_conll(source / f"{split}-{english}.tsv", task))
    for lang in task.languages:
        if lang == english and task.evaluation_split == "dev":
            continue  # written whole above
        name = f"{task.evaluation_split}-{lang}.tsv"
        rows = read_conll(source / name, task)
        keep = sorted(random.Random(SUBSET_SEED).sample(range(len(rows)), min(sentences, len(rows))))
        write(name, [rows[i] for i in keep])


if __name__ == "__main__":
    build_subset(Path(sys.argv[1]), Path(sys.argv[2]) if len(sys.argv) > 2 else bundled_dir())
