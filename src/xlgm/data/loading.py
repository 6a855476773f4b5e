"""One entry point for task data, whatever its source.

Sources:
- `bundled`: the subset inside the package (English dev and train, 500 test rows a language);
- `local`: a folder in XTREME's layout (`--data-dir`);
- `hf`: Hugging Face datasets (`facebook/xnli`, `google-research-datasets/paws-x`).

Split names are those of `xlgm.data.splits`: `dev`, `test`, `train` and `train-minus-test-N`.
Sentence-pair tasks load with `load_examples` (rows of `Example`), token tasks (`output: tokens`) with
`load_tagged_sentences` (sentences of `TaggedSentence`); a token task has a real train split, so
`train-minus-test-N` is for sentence pairs only.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xlgm.core.errors import XlgmError
from xlgm.core.types import TaggedSentence
from xlgm.data.bundled import bundled_dir
from xlgm.data.conll import read_tagged_split
from xlgm.data.splits import check_split, disjoint_positions, excluded_test_rows, pick
from xlgm.data.tasks import Example, Task
from xlgm.data.tsv import read_split, tsv_path

SOURCES = ("bundled", "local", "hf")


@dataclass(frozen=True)
class DataSource:
    kind: str = "bundled"
    data_dir: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SOURCES:
            raise XlgmError(f"unknown data source {self.kind!r}; expected one of: {', '.join(SOURCES)}")
        if self.kind == "local" and not self.data_dir:
            raise XlgmError("the local data source needs a data directory (--data-dir)")

    @classmethod
    def from_args(cls, data_dir: str | None, hub: bool = False) -> DataSource:
        if hub:
            return cls("hf")
        if data_dir:
            if not Path(data_dir).is_dir():
                raise XlgmError(f"{data_dir}: expected a folder in XTREME's layout ({{split}}-{{lang}}.tsv)")
            return cls("local", str(data_dir))
        return cls("bundled")

    @property
    def folder(self) -> Path:
        """The local data folder (a local source always has one: `__post_init__`)."""
        return Path(str(self.data_dir))

    def describe(self) -> str:
        return str(self.data_dir) if self.kind == "local" else self.kind


def load_examples(
    task: Task, split: str, lang: str, source: DataSource = DataSource(), max_examples: int | None = None
) -> list[Example]:
    """Labelled examples of one split and language, in file order (truncated to `max_examples`)."""
    if task.is_token_task:
        raise XlgmError(
            f"task {task.name} labels words (output: tokens), not sentence pairs: this stage does not read token tasks"
        )
    lang = task.language(lang)
    check_split(split)
    exclude = excluded_test_rows(split)
    if exclude is not None:
        rows = _train_minus_test(task, split, lang, source, exclude)
    elif source.kind == "hf":
        from xlgm.data.hub import load_hub_split  # here: `datasets` is slow to import and needed only for the Hub

        rows = load_hub_split(task, split, lang)
    else:
        root = _root(source)
        if split == "train" and not tsv_path(root, task, split, lang).is_file():
            raise _no_train_file(
                task,
                lang,
                source,
                f"; `train-minus-test-N` builds a training split from {task.source_language} dev and the test "
                "rows that share nothing with test rows 1..N",
            )
        rows = read_split(root, task, split, lang)
    return rows[:max_examples] if max_examples else rows


def load_tagged_sentences(
    task: Task, split: str, lang: str, source: DataSource = DataSource(), max_sentences: int | None = None
) -> list[TaggedSentence]:
    """A token task's labelled sentences of one split and language, in file order (the first
    `max_sentences`)."""
    if not task.is_token_task:
        raise XlgmError(f"task {task.name} classifies sentence pairs (output: {task.output}); it has no word tags")
    lang = task.language(lang)
    check_split(split)
    if excluded_test_rows(split) is not None:
        raise XlgmError(
            f"the {split} split is for sentence-pair tasks; token task {task.name} has its own train split (train)"
        )
    if source.kind == "hf":
        from xlgm.data.hub import load_hub_tagged  # here: `datasets` is slow to import and needed only for the Hub

        sentences = load_hub_tagged(task, split, lang)
    else:
        root = _root(source)
        if split == "train" and not tsv_path(root, task, split, lang).is_file():
            raise _no_train_file(task, lang, source)
        sentences = read_tagged_split(root, task, split, lang)
    return sentences[:max_sentences] if max_sentences else sentences


def load_task_rows(
    task: Task, split: str, lang: str, source: DataSource = DataSource(), max_rows: int | None = None
) -> list:
    """A task's labelled rows of one split and language: sentence pairs (`Example`), or a token task's tagged
    sentences (`TaggedSentence`); `max_rows` counts either."""
    load = load_tagged_sentences if task.is_token_task else load_examples
    return load(task, split, lang, source, max_rows)


def _root(source: DataSource) -> Path:
    return bundled_dir() if source.kind == "bundled" else source.folder


def _no_train_file(task: Task, lang: str, source: DataSource, hint: str = "") -> XlgmError:
    """The error for a train split a folder does not have (the bundled subset's is the source language's)."""
    if source.kind == "bundled":
        return XlgmError(f"the bundled train split is {task.source_language} only (asked for {lang})")
    return XlgmError(f"{source.data_dir} has no {task.name} train-{lang}.tsv{hint}")


def _train_minus_test(task: Task, split: str, lang: str, source: DataSource, exclude: int) -> list[Example]:
    """English dev + English test rows that share no premise (PAWS-X: sentence), in any language of the
    folder, with test rows 1..`exclude` (`xlgm.data.splits`)."""
    if source.kind != "local":
        hint = (
            "the bundled `train` shares nothing with any bundled test row"
            if source.kind == "bundled"
            else "the Hub has its own `train` split"
        )
        raise XlgmError(f"the {split} split is built from a folder's dev and test files (--data-dir); {hint}")
    if lang != task.source_language:
        raise XlgmError(
            f"the {split} split is {task.source_language} only (asked for {lang}): it is built from "
            f"{task.source_language} dev and test rows"
        )
    root = source.folder
    files = {
        split_name: {
            code: read_split(root, task, split_name, code)
            for code in task.languages
            if code == lang or tsv_path(root, task, split_name, code).is_file()
        }
        for split_name in ("dev", "test")
    }
    test = files["test"][lang]
    if exclude > len(test):
        raise XlgmError(f"{split}: {tsv_path(root, task, 'test', lang)} has only {len(test)} rows")
    evaluation = {code: rows[:exclude] for code, rows in files["test"].items()}
    dev_positions, test_positions = disjoint_positions(task, [files["dev"], files["test"]], evaluation)
    return pick(files["dev"][lang], dev_positions) + pick(test, test_positions)
