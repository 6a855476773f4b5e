"""Task definitions: which languages a task has, its label names and its text fields.

A task is data, not code: a task file (YAML) says it, and the loaders (local TSV, Hugging Face datasets,
the bundled subset) read these fields and nothing else. XNLI and PAWS-X ship as task files in
`xlgm/data/task_files/`; `--task path/to/task.yaml` (or `task:` in a study spec) brings another
sentence-pair classification task, with its own languages, read from a folder in XTREME's layout.

A task file:

    name: toy                        # what results are recorded under
    output: classification           # the only output type so far
    metric: accuracy                 # the only metric so far
    languages: [en, xx]              # every language, the source included
    source_language: en              # default: en
    labels: [no, yes]                # label names, in label-id order
    text_columns: [premise, hypothesis]
    group_columns: [premise]         # texts that tie rows into one item (default: the first column)
    tsv:
      labels: [no, yes]              # how the TSV files write each label (default: the label names)
    hub:                             # optional: the Hugging Face dataset
      dataset: org/name
      text_columns: [premise, hypothesis]  # default: text_columns
      configs: {en: en_config}       # default: the language code

TSV layout (XTREME's): `DIR/{split}-{lang}.tsv` or `DIR/{name}/{split}-{lang}.tsv`, one
`text_a<TAB>text_b<TAB>label` a line.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlgm.core.errors import XlgmError, did_you_mean
from xlgm.core.files import write_text
from xlgm.core.types import Example as Example  # re-exported: the type of a loaded row

TASK_FILES_DIR = Path(__file__).parent / "task_files"
# A run of a task that is not built in keeps its task file here, so later stages know the task by itself.
RUN_TASK_FILE = "task.yaml"
TASK_FILE_SUFFIXES = (".yaml", ".yml")
OUTPUT_TYPES = ("classification",)
METRICS = ("accuracy",)


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
    # Hub config per language, where it is not the language code.
    hf_configs: tuple[tuple[str, str], ...] = ()
    output: str = "classification"
    metric: str = "accuracy"

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    def hf_config(self, lang: str) -> str:
        return dict(self.hf_configs).get(lang, lang)

    @property
    def target_languages(self) -> tuple[str, ...]:
        return tuple(lang for lang in self.languages if lang != self.source_language)

    def resolve_languages(self, spec: str | list[str] | tuple[str, ...] | None) -> list[str]:
        """`all`, a comma list or a sequence of codes -> validated codes, in the task's order."""
        if spec is None or spec == "all" or spec == ["all"]:
            return list(self.languages)
        codes = [c.strip() for c in spec.split(",")] if isinstance(spec, str) else list(spec)
        return [self.language(c) for c in codes if c]

    def language(self, code: str) -> str:
        """`code` as one of the task's language codes (names are matched case aside, like every name xlgm reads),
        or one line that names the nearest codes."""
        lowered = code.strip().lower()
        if lowered in self.languages:
            return lowered
        raise XlgmError(
            f"unknown language code {code!r} for task {self.name}{did_you_mean(code, self.languages)}; "
            f"expected one of: {' '.join(self.languages)}"
        )


class _TaskFile:
    """Reads one task file's mapping; every problem is one line naming the file and the key."""

    KEYS = (
        "name",
        "output",
        "metric",
        "languages",
        "source_language",
        "labels",
        "text_columns",
        "group_columns",
        "tsv",
        "hub",
    )

    def __init__(self, path: Path, raw: Any):
        self.path = path
        self.raw = self.mapping("", raw, self.KEYS)

    def fail(self, key: str, message: str) -> XlgmError:
        return XlgmError(f"{self.path}: {key}: {message}" if key else f"{self.path}: {message}")

    def mapping(self, key: str, value: Any, allowed: tuple[str, ...]) -> dict[str, Any]:
        if not isinstance(value, Mapping):
            raise self.fail(key, f"expected a mapping, got {value!r}")
        unknown = [str(k) for k in value if k not in allowed]
        if unknown:
            where = f"{key}.{unknown[0]}" if key else unknown[0]
            raise self.fail(where, f"unknown key; expected one of: {', '.join(allowed)}")
        return dict(value)

    def string(self, key: str, value: Any, choices: tuple[str, ...] | None = None) -> str:
        if isinstance(value, bool) or not isinstance(value, (str, int)) or str(value).strip() == "":
            raise self.fail(key, f"expected a non-empty string, got {value!r}")
        value = str(value)
        if choices is not None and value not in choices:
            raise self.fail(key, f"expected one of: {', '.join(choices)}; got {value!r}")
        return value

    def strings(self, key: str, value: Any, length: int | None = None, minimum: int = 1) -> tuple[str, ...]:
        if not isinstance(value, list):
            raise self.fail(key, f"expected a list, got {value!r}")
        items = tuple(self.string(f"{key}[{i}]", v) for i, v in enumerate(value))
        if length is not None and len(items) != length:
            raise self.fail(key, f"expected {length} entries, got {len(items)}")
        if len(items) < minimum:
            raise self.fail(key, f"expected at least {minimum} entries, got {len(items)}")
        if len(set(items)) != len(items):
            raise self.fail(key, f"expected distinct entries, got {list(items)}")
        return items

    def required(self, key: str) -> Any:
        if key not in self.raw:
            raise self.fail(key, "required key missing")
        return self.raw[key]

    def task(self) -> Task:
        raw = self.raw
        name = self.string("name", self.required("name"))
        self.string("output", raw.get("output", "classification"), OUTPUT_TYPES)
        self.string("metric", raw.get("metric", "accuracy"), METRICS)
        languages = self.strings("languages", self.required("languages"))
        source = self.string("source_language", raw.get("source_language", "en"), languages)
        labels = self.strings("labels", self.required("labels"), minimum=2)
        columns = self.strings("text_columns", self.required("text_columns"), length=2)
        groups = self.strings("group_columns", raw.get("group_columns", [columns[0]]))
        for i, column in enumerate(groups):
            if column not in columns:
                raise self.fail(
                    f"group_columns[{i}]", f"expected one of the text_columns ({', '.join(columns)}), got {column!r}"
                )
        tsv = self.mapping("tsv", raw.get("tsv", {}), ("labels",))
        tsv_labels = self.strings("tsv.labels", tsv.get("labels", list(labels)), length=len(labels))
        hub = self.mapping("hub", raw.get("hub", {}), ("dataset", "text_columns", "configs"))
        dataset = self.string("hub.dataset", hub["dataset"]) if "dataset" in hub else ""
        hub_columns = self.strings("hub.text_columns", hub.get("text_columns", list(columns)), length=2)
        configs = self.mapping("hub.configs", hub.get("configs", {}), languages)
        return Task(
            name=name,
            languages=languages,
            label_names=labels,
            text_fields=(columns[0], columns[1]),
            tsv_labels=tsv_labels,
            hf_dataset=dataset,
            hf_text_fields=(hub_columns[0], hub_columns[1]),
            group_fields=tuple(columns.index(c) for c in groups),
            source_language=source,
            hf_configs=tuple((lang, self.string(f"hub.configs.{lang}", configs[lang])) for lang in configs),
        )


def load_task_file(path: str | Path) -> Task:
    """A task from its YAML file; an `XlgmError` naming the file and the key when it is malformed."""
    import yaml

    path = Path(path).expanduser()
    if not path.is_file():
        raise XlgmError(f"{path}: no such task file")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (yaml.YAMLError, UnicodeDecodeError) as err:
        raise XlgmError(f"{path}: not a YAML file: {' '.join(str(err).split())}") from None
    return _TaskFile(path, raw).task()


def _builtin_tasks() -> dict[str, Task]:
    tasks = [load_task_file(path) for path in sorted(TASK_FILES_DIR.glob("*.yaml"))]
    return {task.name: task for task in tasks}


# The tasks that ship with xlgm (and have bundled data), by name.
TASKS: dict[str, Task] = _builtin_tasks()
XNLI = TASKS["xnli"]
PAWSX = TASKS["pawsx"]
# Tasks read from files this process was handed (`--task FILE`, `task: FILE`), by name: later stages in
# the process (a study's runs) find them by name.
_FILE_TASKS: dict[str, Task] = {}


def is_task_file(ref: str) -> bool:
    return ref.endswith(TASK_FILE_SUFFIXES) or "/" in ref or "\\" in ref


def get_task(ref: str) -> Task:
    """A task by name (built in, or read from a file earlier in this process) or by the path of its file."""
    if is_task_file(ref):
        task = load_task_file(ref)
        known = TASKS.get(task.name) or _FILE_TASKS.get(task.name)
        if known is not None and known != task:
            raise XlgmError(
                f"{ref}: name: task {task.name!r} is already defined differently "
                f"({'built in' if task.name in TASKS else 'by another task file'})"
            )
        _FILE_TASKS[task.name] = task
        return task
    key = ref.lower().replace("-", "")
    found = TASKS.get(key) or _FILE_TASKS.get(ref)
    if found is None:
        raise XlgmError(f"unknown task {ref!r}; expected one of: {', '.join(TASKS)} or a task file (path/to/task.yaml)")
    return found


def task_name(ref: str) -> str:
    """The name a task reference (a name or a task file) stands for: what runs and results record."""
    return get_task(ref).name


def check_task(field: str, ref: str) -> str:
    """argparse `type=` and config validation: a known task name or a task file, else one line naming
    the field."""
    try:
        get_task(ref)
    except XlgmError as err:
        raise XlgmError(f"{field}: {err}") from None
    return ref


def task_document(task: Task) -> dict[str, Any]:
    """The task as its task file writes it (`load_task_file` reads it back to an equal task)."""
    columns = list(task.text_fields)
    doc: dict[str, Any] = {
        "name": task.name,
        "output": task.output,
        "metric": task.metric,
        "languages": list(task.languages),
        "source_language": task.source_language,
        "labels": list(task.label_names),
        "text_columns": columns,
        "group_columns": [columns[i] for i in task.group_fields],
        "tsv": {"labels": list(task.tsv_labels)},
    }
    if task.hf_dataset:
        doc["hub"] = {
            "dataset": task.hf_dataset,
            "text_columns": list(task.hf_text_fields),
            "configs": dict(task.hf_configs),
        }
    return doc


def write_run_task(task: Task, run_dir: str | Path) -> None:
    """Keep a task that is not built in with a run (`RUN/task.yaml`)."""
    import yaml

    if TASKS.get(task.name) != task:
        text = yaml.safe_dump(task_document(task), sort_keys=False, allow_unicode=True)
        write_text(Path(run_dir) / RUN_TASK_FILE, text)


def read_run_task(run_dir: str | Path | None) -> None:
    """Make the task a run keeps (`RUN/task.yaml`, if any) known by its name in this process."""
    if run_dir is not None and (path := Path(run_dir) / RUN_TASK_FILE).is_file():
        get_task(str(path))
