"""Read task files in XTREME's TSV layout: `{split}-{lang}.tsv`, one `text_a<TAB>text_b<TAB>label` a line.

A file may be gzipped (`{split}-{lang}.tsv.gz`): the bundled token tasks ship so.

Every problem is reported as a `DataFormatError` naming the file and the line and what was expected:
nothing is skipped silently, since a dropped row changes every accuracy computed from the file.
"""

from __future__ import annotations

import gzip
from pathlib import Path

from xlgm.core.errors import DataFormatError
from xlgm.data.tasks import Example, Task

GZIP_SUFFIX = ".gz"


def tsv_path(data_dir: str | Path, task: Task, split: str, lang: str) -> Path:
    """Where XTREME's layout keeps a split: `DIR/{split}-{lang}.tsv` or `DIR/{task}/{split}-{lang}.tsv`,
    each possibly gzipped (`.tsv.gz`)."""
    data_dir = Path(data_dir)
    name = f"{split}-{lang}.tsv"
    for folder in (data_dir / task.name, data_dir):
        for candidate in (folder / name, folder / (name + GZIP_SUFFIX)):
            if candidate.is_file():
                return candidate
    return data_dir / name


def label_ids(task: Task) -> dict[str, int]:
    """How a file may write each label: as the task's TSV spelling or as its label name."""
    ids = {name: i for i, name in enumerate(task.tsv_labels)}
    # Hugging Face style label names are accepted too (e.g. `paraphrase`), never guessed.
    ids.update({name: i for i, name in enumerate(task.label_names)})
    return ids


def file_lines(path: Path) -> list[str]:
    """A UTF-8 text file's lines (gunzipped when it ends in .gz), without their "\\n"; a trailing empty line
    (the file's final newline) is dropped. A missing file or a byte that is not UTF-8 is a `DataFormatError`."""
    if not path.is_file():
        raise DataFormatError(path, None, f"a file {path.name} (missing language or split file)")
    data = path.read_bytes()
    if path.name.endswith(GZIP_SUFFIX):
        try:
            data = gzip.decompress(data)
        except (OSError, EOFError) as err:
            raise DataFormatError(path, None, "a gzip file", str(err)) from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as err:
        line_no = data[: err.start].count(b"\n") + 1
        raise DataFormatError(path, line_no, "UTF-8 text", f"byte {err.object[err.start]:#x}") from None
    # Lines end at "\n" only: sentences may hold U+2028 or a stray "\r", which are text, not line ends.
    lines = text.split("\n")
    if lines and lines[-1] == "":
        lines.pop()
    return lines


def read_tsv(path: str | Path, task: Task, *, labelled: bool = True) -> list[Example]:
    """Parse one TSV file. With `labelled=False` a two-column file is accepted and labels are -1."""
    path = Path(path)
    lines = file_lines(path)
    ids = label_ids(task)
    examples: list[Example] = []
    expected = (
        "3 tab-separated columns (text_a, text_b, label)"
        if labelled
        else "2 or 3 tab-separated columns (text_a, text_b[, label])"
    )
    for line_no, raw in enumerate(lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip():
            raise DataFormatError(path, line_no, expected, "a blank line")
        cols = line.split("\t")
        allowed = (3,) if labelled else (2, 3)
        if len(cols) not in allowed:
            raise DataFormatError(path, line_no, expected, f"{len(cols)} column(s)")
        label = -1
        if len(cols) == 3:
            label_text = cols[2].strip()
            if label_text not in ids:
                raise DataFormatError(
                    path, line_no, f"a {task.name} label ({' / '.join(task.tsv_labels)})", repr(label_text)
                )
            label = ids[label_text]
        examples.append(Example(cols[0], cols[1], label))
    if not examples:
        raise DataFormatError(path, None, "at least one example", "an empty file")
    return examples


def read_split(data_dir: str | Path, task: Task, split: str, lang: str) -> list[Example]:
    lang = task.language(lang)
    return read_tsv(tsv_path(data_dir, task, split, lang), task)
