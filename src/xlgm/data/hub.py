"""Load a task split from the Hugging Face Hub with `datasets` (the offline cache is honoured).

`facebook/xnli` and `google-research-datasets/paws-x` have one config per language and the splits
`train`, `validation`, `test`; so do the token tasks' `google/xtreme` (`udpos.English`, ...) and
`unimelb-nlp/wikiann` (`en`, ...). With `HF_DATASETS_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) `datasets` reads only
its local cache.
"""

from __future__ import annotations

from typing import Any

from xlgm.core.errors import XlgmError
from xlgm.core.types import TaggedSentence
from xlgm.data.tasks import Example, Task
from xlgm.data.tsv import label_ids

# Our split names (XTREME's) -> the Hub's.
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def _load_hub_dataset(task: Task, split: str, lang: str, cache_dir: str | None) -> Any:
    import datasets  # imported here: it is slow to import and most runs read local files

    if split not in HUB_SPLITS:
        raise XlgmError(f"unknown split {split!r}; expected one of: {', '.join(HUB_SPLITS)}")
    if not task.hf_dataset:
        raise XlgmError(
            f"task {task.name} names no Hugging Face dataset (`hub.dataset` in its task file); "
            "read it from a folder with --data-dir"
        )
    config = task.hf_config(lang)
    if not config:
        raise XlgmError(f"{task.hf_dataset} has no {task.name} data for {lang}; read it from a folder with --data-dir")
    try:
        return datasets.load_dataset(task.hf_dataset, config, split=HUB_SPLITS[split], cache_dir=cache_dir)
    except Exception as err:  # network, missing cache: say which dataset and how to get it offline
        raise XlgmError(
            f"could not load {task.hf_dataset} ({lang}, {split}) from the Hugging Face Hub or its cache: {err}"
        ) from err


def load_hub_split(task: Task, split: str, lang: str, cache_dir: str | None = None) -> list[Example]:
    ds = _load_hub_dataset(task, split, lang, cache_dir)
    first, second = task.hf_text_fields
    labels = ds["label"]
    bad = [i for i, y in enumerate(labels) if not 0 <= int(y) < task.num_labels]
    if bad:
        raise XlgmError(f"{task.hf_dataset} ({lang}, {split}) row {bad[0]}: label {labels[bad[0]]} out of range")
    return [Example(a, b, int(y)) for a, b, y in zip(ds[first], ds[second], labels)]


def hub_tag_ids(task: Task, feature: Any) -> dict[Any, int]:
    """The Hub's tag values -> the task's tag ids, by name. A `ClassLabel` column's integer ids map through
    its names (the Hub's order need not be ours); a string column maps its strings."""
    ours = label_ids(task)
    names = getattr(getattr(feature, "feature", None), "names", None)
    if names is None:
        return ours
    return {hub_id: ours[name] for hub_id, name in enumerate(names) if name in ours}


def load_hub_tagged(task: Task, split: str, lang: str, cache_dir: str | None = None) -> list[TaggedSentence]:
    """A token task's split from the Hub: its words column and its tags column (`hub.token_columns`), tags
    mapped to the task's by name. A tag the task does not have, an empty word or an empty sentence is an
    error naming the row, as in the CoNLL reader."""
    ds = _load_hub_dataset(task, split, lang, cache_dir)
    words_column, tags_column = task.hf_text_fields
    where = f"{task.hf_dataset} ({lang}, {split})"
    for column in (words_column, tags_column):
        if column not in ds.column_names:
            raise XlgmError(f"{where}: no column {column!r}; it has {', '.join(ds.column_names)}")
    mapping = hub_tag_ids(task, ds.features[tags_column])
    sentences = []
    for row, (words, tags) in enumerate(zip(ds[words_column], ds[tags_column])):
        if not words or len(words) != len(tags):
            raise XlgmError(f"{where} row {row}: {len(words)} word(s) and {len(tags)} tag(s); expected as many, >= 1")
        unknown = [t for t in tags if t not in mapping]
        if unknown:
            raise XlgmError(f"{where} row {row}: tag {unknown[0]!r} is not a {task.name} tag")
        if any(not str(w).strip() for w in words):
            raise XlgmError(f"{where} row {row}: an empty word")
        sentences.append(TaggedSentence(tuple(str(w) for w in words), tuple(mapping[t] for t in tags)))
    return sentences
