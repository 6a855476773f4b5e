"""Load a task split from the Hugging Face Hub with `datasets` (the offline cache is honoured).

`facebook/xnli` and `google-research-datasets/paws-x` have one config per language and the splits
`train`, `validation`, `test`. With `HF_DATASETS_OFFLINE=1` (or `HF_HUB_OFFLINE=1`) `datasets` reads only
its local cache.
"""

from __future__ import annotations

from xlgm.core.errors import XlgmError
from xlgm.data.tasks import Example, Task

# Our split names (XTREME's) -> the Hub's.
HUB_SPLITS = {"train": "train", "dev": "validation", "test": "test"}


def load_hub_split(task: Task, split: str, lang: str, cache_dir: str | None = None) -> list[Example]:
    import datasets  # imported here: it is slow to import and most runs read local files

    if split not in HUB_SPLITS:
        raise XlgmError(f"unknown split {split!r}; expected one of: {', '.join(HUB_SPLITS)}")
    if not task.hf_dataset:
        raise XlgmError(
            f"task {task.name} names no Hugging Face dataset (`hub.dataset` in its task file); "
            "read it from a folder with --data-dir"
        )
    try:
        ds = datasets.load_dataset(task.hf_dataset, task.hf_config(lang), split=HUB_SPLITS[split], cache_dir=cache_dir)
    except Exception as err:  # network, missing cache: say which dataset and how to get it offline
        raise XlgmError(
            f"could not load {task.hf_dataset} ({lang}, {split}) from the Hugging Face Hub or its cache: {err}"
        ) from err
    first, second = task.hf_text_fields
    labels = ds["label"]
    bad = [i for i, y in enumerate(labels) if not 0 <= int(y) < task.num_labels]
    if bad:
        raise XlgmError(f"{task.hf_dataset} ({lang}, {split}) row {bad[0]}: label {labels[bad[0]]} out of range")
    return [Example(a, b, int(y)) for a, b, y in zip(ds[first], ds[second], labels)]
