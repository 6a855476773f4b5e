"""Training splits that share no item with the evaluation rows, built from English dev and test.

XNLI writes three hypotheses for each premise and PAWS-X builds several pairs from one sentence, so a split
by row would put the same premise or sentence on both sides: a model trained on one hypothesis of a premise
is not tested zero-shot on its siblings. Rows are grouped by the texts of the task's `group_fields` (XNLI:
the premise; PAWS-X: either sentence, in either position), compared with white space collapsed, and in
every language the folder has: dev and test files are parallel (row i of every language is one item), and
the translations are not always one-to-one. XNLI's Urdu and Vietnamese test files repeat a premise at
rows whose English premises differ, and PAWS-X translates word-swapped English sentences into one and the
same German, Japanese, ... sentence. A training row is kept only if none of its texts, in any language,
occurs in an evaluation row of that language. PAWS-X writes `NS` where a sentence has no translation:
that marks no item and is not compared.

Split names:
- `dev`, `test`: the files as they are;
- `train`: a training file, `train-{lang}.tsv` (the Hub: its train split). The bundled one is English dev
  plus English test rows built this way against the 500 bundled test rows (`xlgm.data.bundled`);
- `train-minus-test-N`, for a folder (`--data-dir`): English dev plus the English test rows that share
  nothing with test rows 1..N, which is what `--split test --max-examples N` evaluates.
"""

from __future__ import annotations

import random
import re
import typing
from collections.abc import Iterable, Mapping, Sequence
from typing import Literal, TypeVar

from xlgm.core.errors import XlgmError
from xlgm.core.types import TaggedSentence
from xlgm.data.tasks import Example, Task

Split = Literal["dev", "test", "train"]  # the files of a task's language
FILE_SPLITS: tuple[str, ...] = typing.get_args(Split)
TRAIN_MINUS_TEST = re.compile(r"train-minus-test-([1-9][0-9]*)")
SPLIT_HELP = (
    "dev, test, train or train-minus-test-N (English dev + the test rows that share nothing with test rows 1..N)"
)
Row = TypeVar("Row")  # what a held-out split divides: sentence-pair rows or tagged sentences
NO_TRANSLATION = frozenset({"", "NS"})  # PAWS-X's mark for a sentence that was not translated


def check_split(name: str) -> str:
    """A split name as the loaders take it; an `XlgmError` naming the accepted forms otherwise."""
    if name in FILE_SPLITS or TRAIN_MINUS_TEST.fullmatch(name):
        return name
    raise XlgmError(f"unknown split {name!r}; expected {SPLIT_HELP}")


def excluded_test_rows(split: str) -> int | None:
    """N for `train-minus-test-N`, None for any other split."""
    match = TRAIN_MINUS_TEST.fullmatch(split)
    return int(match.group(1)) if match else None


def group_texts(task: Task, row: Example) -> set[str]:
    """A row's group texts (XNLI: its premise; PAWS-X: both sentences), white space collapsed."""
    fields = (row.text_a, row.text_b)
    texts = {" ".join(fields[i].split()) for i in task.group_fields}
    return texts - NO_TRANSLATION


def _keys(task: Task, parallel: Mapping[str, Sequence[Example]], i: int) -> set[tuple[str, str]]:
    return {(lang, text) for lang, rows in parallel.items() for text in group_texts(task, rows[i])}


def disjoint_positions(
    task: Task, pools: Sequence[Mapping[str, Sequence[Example]]], evaluation: Mapping[str, Sequence[Example]]
) -> list[list[int]]:
    """For each pool (parallel files: language -> rows, e.g. dev and test), the row positions whose group
    texts occur in no evaluation row of the same language (`evaluation`: language -> its evaluation rows)."""
    taken = {(lang, text) for lang, rows in evaluation.items() for row in rows for text in group_texts(task, row)}
    out = []
    for pool in pools:
        lengths = {len(rows) for rows in pool.values()}
        if len(lengths) != 1:
            raise XlgmError(
                f"parallel files of different lengths ({sorted(lengths)} rows): row i must be one "
                "item in every language"
            )
        out.append([i for i in range(lengths.pop()) if not _keys(task, pool, i) & taken])
    return out


def group_holdout(
    task: Task, rows: Sequence[Example], fraction: float, seed: int
) -> tuple[list[Example], list[Example]]:
    """(train, held out): about `fraction` of the rows held out for checkpoint selection, whole groups at a
    time, so no held-out premise (PAWS-X: sentence) also occurs in a training row. Rows linked through a
    shared text (a PAWS-X sentence in two pairs) form one group. Each side keeps the rows' order."""
    return _holdout(rows, [group_texts(task, row) for row in rows], fraction, seed)


def sentence_holdout(
    sentences: Sequence[TaggedSentence], fraction: float, seed: int
) -> tuple[list[TaggedSentence], list[TaggedSentence]]:
    """A token task's (train, held out): about `fraction` of the tagged sentences held out for checkpoint
    selection, a sentence that occurs more than once (the same words) held out with all its copies."""
    return _holdout(sentences, [{" ".join(s.words)} for s in sentences], fraction, seed)


def _holdout(rows: Sequence[Row], keys: Sequence[set[str]], fraction: float, seed: int) -> tuple[list[Row], list[Row]]:
    """Rows that share a key form one group (transitively); whole groups, in a shuffled order drawn from
    `seed`, are held out until about `fraction` of the rows are. Each side keeps the rows' order."""
    parent = list(range(len(rows)))

    def find(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first_with: dict[str, int] = {}
    for i, row_keys in enumerate(keys):
        for text in row_keys:
            parent[find(i)] = find(first_with.setdefault(text, i))
    groups: dict[int, list[int]] = {}
    for i in range(len(rows)):
        groups.setdefault(find(i), []).append(i)
    order = sorted(groups)  # by each group's first row: independent of dict order
    random.Random(seed).shuffle(order)
    target = max(1, round(len(rows) * fraction)) if fraction > 0 else 0
    held: set[int] = set()
    for root in order:
        if len(held) >= target:
            break
        held.update(groups[root])
    return [r for i, r in enumerate(rows) if i not in held], [r for i, r in enumerate(rows) if i in held]


def pick(rows: Sequence[Example], positions: Iterable[int]) -> list[Example]:
    return [rows[i] for i in positions]
