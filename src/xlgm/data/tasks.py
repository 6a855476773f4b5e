"""Task definitions: which languages a task has, its label names and its text fields.

A task is data, not code: a task file (YAML) says it, and the loaders (local files, Hugging Face datasets,
the bundled subset) read these fields and nothing else. XNLI, PAWS-X, UD-POS and PAN-X ship as task files in
`xlgm/data/task_files/`; `--task path/to/task.yaml` (or `task:` in a study spec) brings another task, with
its own languages, read from a folder in XTREME's layout.

A sentence-pair task file:

    name: toy                        # what results are recorded under
    output: classification           # one label per sentence pair (the default)
    metric: accuracy                 # the metric of classification
    languages: [en, xx]              # every language, the source included
    source_language: en              # default: en
    evaluation_split: test           # the split that holds each language's labelled evaluation rows
    labels: [no, yes]                # label names, in label-id order
    text_columns: [premise, hypothesis]
    group_columns: [premise]         # texts that tie rows into one item (default: the first column)
    tsv:
      labels: [no, yes]              # how the TSV files write each label (default: the label names)
    hub:                             # optional: the Hugging Face dataset
      dataset: org/name
      text_columns: [premise, hypothesis]  # default: text_columns
      configs: {en: en_config}       # default: the language code; null: not in this dataset

A token task file (one tag per word) says `output: tokens`, its metric (`token_accuracy`, or `entity_f1`
for IOB2 tags: every label `O`, `B-TYPE` or `I-TYPE`), and no text or group columns; its Hub mapping names
the words column and the tags column (`hub.token_columns`, default `[tokens, tags]`).

Layouts (XTREME's): `DIR/{split}-{lang}.tsv` or `DIR/{name}/{split}-{lang}.tsv`. Sentence pairs: one
`text_a<TAB>text_b<TAB>label` a line (`xlgm.data.tsv`). Tokens: CoNLL, one `word<TAB>tag` a line, a blank
line between sentences, optionally gzipped as `.tsv.gz` (`xlgm.data.conll`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from xlgm.core.errors import XlgmError, did_you_mean
from xlgm.core.files import write_text
from xlgm.core.types import CLASSIFICATION, TOKENS
from xlgm.core.types import Example as Example  # re-exported: the type of a loaded row

TASK_FILES_DIR = Path(__file__).parent / "task_files"
# A run of a task that is not built in keeps its task file here, so later stages know the task by itself.
RUN_TASK_FILE = "task.yaml"
TASK_FILE_SUFFIXES = (".yaml", ".yml")
TOKEN_ACCURACY = "token_accuracy"
ENTITY_F1 = "entity_f1"
# Each output type and its metrics, the default first.
METRICS = {CLASSIFICATION: ("accuracy",), TOKENS: (TOKEN_ACCURACY, ENTITY_F1)}
OUTPUT_TYPES = tuple(METRICS)
# Each metric as a reader names it (reports, tables).
METRIC_NAMES = {"accuracy": "accuracy", TOKEN_ACCURACY: "token accuracy", ENTITY_F1: "entity F1"}
EVALUATION_SPLITS = ("test", "dev")
# The Hub columns of a token task, when its task file does not name them: words, tags.
DEFAULT_TOKEN_COLUMNS = ("tokens", "tags")


@dataclass(frozen=True)
class Task:
    name: str
    languages: tuple[str, ...]
    label_names: tuple[str, ...]
    # Sentence pairs: the two text fields. Tokens: ("tokens", "tags"), the fields of a `TaggedSentence`.
    text_fields: tuple[str, str]
    # How labels are written in XTREME's TSV files (index = label id).
    tsv_labels: tuple[str, ...]
    hf_dataset: str  # Hugging Face datasets id
    # The Hub's columns. Sentence pairs: the two texts; tokens: the words and the tags.
    hf_text_fields: tuple[str, str]
    # The text fields that tie rows into one item (indices into text_fields): rows that share any of these
    # texts, in any of these fields, belong on the same side of a train/evaluation split. XNLI writes three
    # hypotheses for each premise; PAWS-X builds several pairs from one sentence.
    group_fields: tuple[int, ...] = (0,)
    source_language: str = "en"
    # Hub config per language, where it is not the language code ("" where the dataset lacks the language).
    hf_configs: tuple[tuple[str, str], ...] = ()
    output: str = CLASSIFICATION
    metric: str = "accuracy"
    # The split holding each language's labelled evaluation rows: PAN-X's labelled files are dev files
    # (XTREME's test files carry no labels).
    evaluation_split: str = "test"

    @property
    def num_labels(self) -> int:
        return len(self.label_names)

    @property
    def is_token_task(self) -> bool:
        """One label per word (`output: tokens`), not one per sentence pair."""
        return self.output == TOKENS

    @property
    def metric_name(self) -> str:
        """The task's metric as a reader names it: accuracy, token accuracy, entity F1."""
        return METRIC_NAMES[self.metric]

    @property
    def chance(self) -> tuple[float, str]:
        """The metric of a model that learned nothing, and how it is reached: a uniform guess over the labels
        (accuracy, token accuracy), or no entity found (entity F1)."""
        if self.metric == ENTITY_F1:
            return 0.0, "0 (no entity found)"
        return 1.0 / self.num_labels, f"1/{self.num_labels} = {1.0 / self.num_labels:.3f}"

    def hf_config(self, lang: str) -> str:
        """The Hub config of a language; "" where the task's Hub dataset does not have it."""
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
        "evaluation_split",
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
        output = self.string("output", raw.get("output", CLASSIFICATION), OUTPUT_TYPES)
        metric = self.string("metric", raw.get("metric", METRICS[output][0]), METRICS[output])
        languages = self.strings("languages", self.required("languages"))
        source = self.string("source_language", raw.get("source_language", "en"), languages)
        evaluation_split = self.string("evaluation_split", raw.get("evaluation_split", "test"), EVALUATION_SPLITS)
        labels = self.strings("labels", self.required("labels"), minimum=2)
        if metric == ENTITY_F1:
            self.check_iob2(labels)
        tsv = self.mapping("tsv", raw.get("tsv", {}), ("labels",))
        tsv_labels = self.strings("tsv.labels", tsv.get("labels", list(labels)), length=len(labels))
        hub_keys = ("dataset", "token_columns" if output == TOKENS else "text_columns", "configs")
        hub = self.mapping("hub", raw.get("hub", {}), hub_keys)
        dataset = self.string("hub.dataset", hub["dataset"]) if "dataset" in hub else ""
        configs = self.mapping("hub.configs", hub.get("configs", {}), languages)
        if output == TOKENS:
            for key in ("text_columns", "group_columns"):
                if key in raw:
                    raise self.fail(key, "a token task (output: tokens) has no text columns (its files: word<TAB>tag)")
            columns: tuple[str, ...] = DEFAULT_TOKEN_COLUMNS
            hub_columns = self.strings("hub.token_columns", hub.get("token_columns", list(columns)), length=2)
            groups: tuple[int, ...] = ()
        else:
            columns = self.strings("text_columns", self.required("text_columns"), length=2)
            groups = self.group_fields(columns)
            hub_columns = self.strings("hub.text_columns", hub.get("text_columns", list(columns)), length=2)
        return Task(
            name=name,
            languages=languages,
            label_names=labels,
            text_fields=(columns[0], columns[1]),
            tsv_labels=tsv_labels,
            hf_dataset=dataset,
            hf_text_fields=(hub_columns[0], hub_columns[1]),
            group_fields=groups,
            source_language=source,
            hf_configs=tuple(  # in the task's language order, whatever the file's: equal files, equal tasks
                (lang, "" if configs[lang] is None else self.string(f"hub.configs.{lang}", configs[lang]))
                for lang in languages
                if lang in configs
            ),
            output=output,
            metric=metric,
            evaluation_split=evaluation_split,
        )

    def group_fields(self, columns: tuple[str, ...]) -> tuple[int, ...]:
        groups = self.strings("group_columns", self.raw.get("group_columns", [columns[0]]))
        for i, column in enumerate(groups):
            if column not in columns:
                raise self.fail(
                    f"group_columns[{i}]", f"expected one of the text_columns ({', '.join(columns)}), got {column!r}"
                )
        return tuple(columns.index(c) for c in groups)

    def check_iob2(self, labels: tuple[str, ...]) -> None:
        """entity_f1 reads entities from IOB2 tags: `O`, and `B-TYPE` with its `I-TYPE` for each type."""
        for i, label in enumerate(labels):
            prefix, _, kind = label.partition("-")
            if label != "O" and (prefix not in ("B", "I") or not kind):
                raise self.fail(f"labels[{i}]", f"entity_f1 needs IOB2 tags (O, B-TYPE, I-TYPE), got {label!r}")
        for i, label in enumerate(labels):
            prefix, _, kind = label.partition("-")
            partner = f"{'I' if prefix == 'B' else 'B'}-{kind}"
            if label != "O" and partner not in labels:
                raise self.fail(f"labels[{i}]", f"{label!r} has no {partner} beside it")
        if "O" not in labels:
            raise self.fail("labels", "entity_f1 needs the IOB2 tag O (outside every entity)")


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
UDPOS = TASKS["udpos"]
PANX = TASKS["panx"]
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
    doc: dict[str, Any] = {
        "name": task.name,
        "output": task.output,
        "metric": task.metric,
        "languages": list(task.languages),
        "source_language": task.source_language,
        "evaluation_split": task.evaluation_split,
        "labels": list(task.label_names),
    }
    if not task.is_token_task:
        columns = list(task.text_fields)
        doc["text_columns"] = columns
        doc["group_columns"] = [columns[i] for i in task.group_fields]
    doc["tsv"] = {"labels": list(task.tsv_labels)}
    if task.hf_dataset:
        doc["hub"] = {
            "dataset": task.hf_dataset,
            "token_columns" if task.is_token_task else "text_columns": list(task.hf_text_fields),
            "configs": {lang: config or None for lang, config in task.hf_configs},
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
