"""Read token-task files in CoNLL style: one `word<TAB>tag` a line, a blank line between sentences.

XTREME's UD-POS and PAN-X files are laid out so (`{split}-{lang}.tsv`, possibly gzipped, as `xlgm.data.tsv`
finds them). Every problem is a `DataFormatError` naming the file, the line and what was expected, as for
sentence-pair files: a dropped word or sentence would change every score computed from the file. Several
blank lines in a row are one sentence break (they hold no word); a line of white space is a blank line.
"""

from __future__ import annotations

from pathlib import Path

from xlgm.core.errors import DataFormatError
from xlgm.core.types import TaggedSentence
from xlgm.data.tasks import Task
from xlgm.data.tsv import file_lines, label_ids, tsv_path


def read_conll(path: str | Path, task: Task, *, labelled: bool = True) -> list[TaggedSentence]:
    """Parse one CoNLL file into sentences. With `labelled=False` a line may be a word alone (its tag is -1)."""
    path = Path(path)
    lines = file_lines(path)
    ids = label_ids(task)
    expected = "2 tab-separated fields (word, tag)" if labelled else "a word, or 2 tab-separated fields (word, tag)"
    allowed = (2,) if labelled else (1, 2)
    sentences: list[TaggedSentence] = []
    words: list[str] = []
    tags: list[int] = []
    for line_no, raw in enumerate(lines, start=1):
        line = raw[:-1] if raw.endswith("\r") else raw
        if not line.strip() and "\t" not in line:
            if words:
                sentences.append(TaggedSentence(tuple(words), tuple(tags)))
                words, tags = [], []
            continue
        fields = line.split("\t")
        if len(fields) not in allowed:
            raise DataFormatError(path, line_no, expected, f"{len(fields)} field(s)")
        if not fields[0].strip():
            raise DataFormatError(path, line_no, "a word before the tab", f"an empty word {fields[0]!r}")
        tag = -1
        if len(fields) == 2:
            tag_text = fields[1].strip()
            if tag_text not in ids:
                raise DataFormatError(
                    path, line_no, f"a {task.name} tag ({' / '.join(task.tsv_labels)})", repr(tag_text)
                )
            tag = ids[tag_text]
        words.append(fields[0])
        tags.append(tag)
    if words:
        sentences.append(TaggedSentence(tuple(words), tuple(tags)))
    if not sentences:
        got = "an empty file" if not lines else "only blank lines"
        raise DataFormatError(path, None, "at least one sentence (word<TAB>tag lines)", got)
    return sentences


def read_tagged_split(data_dir: str | Path, task: Task, split: str, lang: str) -> list[TaggedSentence]:
    """One split of one language of a token task, from a folder in XTREME's layout."""
    lang = task.language(lang)
    return read_conll(tsv_path(data_dir, task, split, lang), task)


def conll_text(task: Task, sentences: list[TaggedSentence]) -> str:
    """Sentences written back in the layout `read_conll` reads (tags as the task's TSV spelling)."""
    blocks = ["".join(f"{w}\t{task.tsv_labels[t]}\n" for w, t in zip(s.words, s.tags)) for s in sentences]
    return "\n".join(blocks)
