"""One entry point for task data, whatever its source.

Sources:
- `bundled`: the subset inside the package (English dev, 500 test rows a language);
- `local`: a folder in XTREME's layout (`--data-dir`);
- `hf`: Hugging Face datasets (`facebook/xnli`, `google-research-datasets/paws-x`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from xlgm.data.bundled import bundled_dir
from xlgm.data.tasks import Example, Task
from xlgm.data.tsv import read_split
from xlgm.errors import XlgmError

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
    def from_args(cls, data_dir: str | None, hub: bool = False) -> "DataSource":
        if hub:
            return cls("hf")
        if data_dir:
            if not Path(data_dir).is_dir():
                raise XlgmError(f"{data_dir}: expected a folder in XTREME's layout ({{split}}-{{lang}}.tsv)")
            return cls("local", str(data_dir))
        return cls("bundled")

    def describe(self) -> str:
        return self.data_dir if self.kind == "local" else self.kind


def load_examples(task: Task, split: str, lang: str, source: DataSource = DataSource(),
                  max_examples: int | None = None) -> list[Example]:
    """Labelled examples of one split and language, in file order (truncated to `max_examples`)."""
    if lang not in task.languages:
        raise XlgmError(f"unknown language code {lang!r} for task {task.name}; expected one of: {' '.join(task.languages)}")
    if source.kind == "hf":
        from xlgm.data.hub import load_hub_split

        rows = load_hub_split(task, split, lang)
    else:
        root = bundled_dir() if source.kind == "bundled" else Path(source.data_dir)
        if source.kind == "bundled" and split == "train":
            raise XlgmError("the bundled subset has no train split; train on `dev` or pass --data-dir / --hub")
        rows = read_split(root, task, split, lang)
    return rows[:max_examples] if max_examples else rows
