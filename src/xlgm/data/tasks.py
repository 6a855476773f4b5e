"""Task definitions: which languages a task has, its label names and its text fields.

A task is data, not code: the loaders (local TSV, Hugging Face datasets, the bundled subset) read these
fields and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from xlgm.core.types import Example as Example  # re-exported: the type of a loaded row
from xlgm.errors import XlgmError


@dataclass(frozen=True)
class Task:
    name: str
    languages: tuple[str, ...]
    label_names: tuple[str, ...]
    text_fields: tuple[str, str]
    # How labels are written in XTREME's TSV files (index = label id).
    tsv_labels: tuple[str, ...]
    hf_dataset: str  # Hugging Face datasets id
    hf_text_fields: tuple[str, str]
    # The text fields that tie rows into one item (indices into text_fields): rows that share any of these
    # texts, in any of these fields, belong on the same side of a train/evaluation split. XNLI writes three
    # hypotheses for each premise; PAWS-X builds several pairs from one sentence.
    group_fields: tuple[int, ...] = (0,)
    source_language: str = "en"

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def target_languages(self) -> tuple[str, ...]:
        return tuple(lang for lang in self.languages if lang != self.source_language)

    def resolve_languages(self, spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
        """`all`, a comma list or a sequence of codes -> validated codes, in the task's order."""
        if spec is None or spec == "all" or spec == ["all"]:
            return list(self.languages)
        codes = [c.strip() for c in spec.split(",")] if isinstance(spec, str) else list(spec)
        codes = [c for c in codes if c]
        unknown = [c for c in codes if c not in self.languages]
        if unknown:
            raise XlgmError(
                f"unknown language code(s) {', '.join(unknown)} for task {self.name}; "
                f"expected one of: {' '.join(self.languages)}"
            )
        return codes


XNLI = Task(
    name="xnli",
    languages=("en", "ar", "bg", "de", "el", "es", "fr", "hi", "ru", "sw", "th", "tr", "ur", "vi", "zh"),
    label_names=("entailment", "neutral", "contradiction"),
    text_fields=("premise", "hypothesis"),
    tsv_labels=("entailment", "neutral", "contradiction"),
    hf_dataset="facebook/xnli",
    hf_text_fields=("premise", "hypothesis"),
    group_fields=(0,),
)

PAWSX = Task(
    name="pawsx",
    languages=("en", "de", "es", "fr", "ja", "ko", "zh"),
    label_names=("not_paraphrase", "paraphrase"),
    text_fields=("sentence1", "sentence2"),
    tsv_labels=("0", "1"),
    hf_dataset="google-research-datasets/paws-x",
    hf_text_fields=("sentence1", "sentence2"),
    group_fields=(0, 1),
)

TASKS: dict[str, Task] = {t.name: t for t in (XNLI, PAWSX)}


def get_task(name: str) -> Task:
    key = name.lower().replace("-", "")
    if key not in TASKS:
        raise XlgmError(f"unknown task {name!r}; expected one of: {', '.join(TASKS)}")
    return TASKS[key]
