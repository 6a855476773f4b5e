"""Token tasks' data: the CoNLL reader, its one-line errors, the bundled subset and the shared files."""

from __future__ import annotations

import gzip
from pathlib import Path

import pytest

from xlgm.core.errors import DataFormatError, XlgmError
from xlgm.core.types import TaggedSentence
from xlgm.data.bundled import BUNDLED_TOKEN_SENTENCES, bundled_dir
from xlgm.data.conll import conll_text, read_conll
from xlgm.data.loading import DataSource, load_examples, load_tagged_sentences
from xlgm.data.tasks import PANX, UDPOS, XNLI

GOOD = "The\tDET\ncat\tNOUN\nsat\tVERB\n.\tPUNCT\n\nIt\tPRON\nslept\tVERB\n"


def _write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode("utf-8") if isinstance(text, str) else text)
    return path


def test_token_task_definitions():
    assert UDPOS.is_token_task and PANX.is_token_task and not XNLI.is_token_task
    assert (UDPOS.metric, UDPOS.num_labels, UDPOS.evaluation_split) == ("token_accuracy", 17, "test")
    assert (PANX.metric, PANX.num_labels, PANX.evaluation_split) == ("entity_f1", 7, "dev")
    assert PANX.label_names == ("O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC")
    assert len(UDPOS.target_languages) == 36 and len(PANX.target_languages) == 46
    assert "de" not in UDPOS.languages  # the data has no German test file


def test_reads_sentences_and_tags(tmp_path):
    sentences = read_conll(_write(tmp_path, "test-en.tsv", GOOD), UDPOS)
    tag = UDPOS.label_names.index
    assert sentences == [
        TaggedSentence(("The", "cat", "sat", "."), (tag("DET"), tag("NOUN"), tag("VERB"), tag("PUNCT"))),
        TaggedSentence(("It", "slept"), (tag("PRON"), tag("VERB"))),
    ]
    # several blank lines are one break; a final blank line, "\r\n" line ends and gzip change nothing
    variants = [GOOD.replace("\n\n", "\n\n\n \n"), GOOD + "\n", GOOD.replace("\n", "\r\n")]
    for i, text in enumerate(variants):
        assert read_conll(_write(tmp_path, f"v{i}.tsv", text), UDPOS) == sentences
    assert read_conll(_write(tmp_path, "z.tsv.gz", gzip.compress(GOOD.encode())), UDPOS) == sentences
    assert read_conll(_write(tmp_path, "back.tsv", conll_text(UDPOS, sentences)), UDPOS) == sentences


def test_unlabelled_file(tmp_path):
    sentences = read_conll(_write(tmp_path, "x.tsv", "a\nb\n\nc\tNOUN\n"), UDPOS, labelled=False)
    assert [s.tags for s in sentences] == [(-1, -1), (UDPOS.label_names.index("NOUN"),)]


@pytest.mark.parametrize(
    ("text", "line", "message"),
    [
        ("The\tDET\ncat\tNOUN\textra\n", 2, r"expected 2 tab-separated fields \(word, tag\), got 3 field\(s\)"),
        ("The\tDET\ncat\n", 2, r"expected 2 tab-separated fields \(word, tag\), got 1 field\(s\)"),
        ("The\tDET\n\ncat\tNOUNS\n", 3, r"expected a udpos tag \(ADJ / ADP .* / X\), got 'NOUNS'"),
        ("The\tDET\n\tNOUN\n", 2, r"expected a word before the tab, got an empty word ''"),
        ("The\tDET\n \tNOUN\n", 2, r"expected a word before the tab, got an empty word ' '"),
        ("The\tDET\n\t\n", 2, r"expected a word before the tab, got an empty word ''"),
    ],
)
def test_bad_lines_name_file_and_line(tmp_path, text, line, message):
    path = _write(tmp_path, "test-en.tsv", text)
    with pytest.raises(DataFormatError, match=message) as err:
        read_conll(path, UDPOS)
    assert err.value.line == line and str(err.value).startswith(f"{path}:{line}: expected ")
    assert "\n" not in str(err.value)


def test_iob2_tags_are_panx_tags(tmp_path):
    path = _write(tmp_path, "dev-de.tsv", "Berlin\tB-LOC\nist\tO\n\nAngela\tB-PER\nMerkel\tI-MISC\n")
    with pytest.raises(DataFormatError, match=r"dev-de.tsv:5: expected a panx tag .* got 'I-MISC'"):
        read_conll(path, PANX)


@pytest.mark.parametrize(("text", "got"), [("", "an empty file"), ("\n\n \n", "only blank lines")])
def test_a_file_with_no_sentence(tmp_path, text, got):
    path = _write(tmp_path, "test-en.tsv", text)
    with pytest.raises(DataFormatError, match=rf"test-en.tsv: expected at least one sentence .*, got {got}$"):
        read_conll(path, UDPOS)


def test_not_utf8_and_not_gzip(tmp_path):
    path = _write(tmp_path, "test-en.tsv", b"The\tDET\ncaf\xe9\tNOUN\n")
    with pytest.raises(DataFormatError, match=r"test-en.tsv:2: expected UTF-8 text, got byte 0xe9"):
        read_conll(path, UDPOS)
    path = _write(tmp_path, "test-fr.tsv.gz", b"not gzip")
    with pytest.raises(DataFormatError, match=r"test-fr.tsv.gz: expected a gzip file"):
        read_conll(path, UDPOS)


def test_local_folder_layouts_and_missing_files(tmp_path):
    (tmp_path / "udpos").mkdir()
    _write(tmp_path / "udpos", "test-fr.tsv", GOOD)
    _write(tmp_path, "test-de.tsv.gz", gzip.compress(b"Haus\tNOUN\n"))
    source = DataSource("local", str(tmp_path))
    assert len(load_tagged_sentences(UDPOS, "test", "fr", source)) == 2
    assert len(load_tagged_sentences(UDPOS, "test", "fr", source, max_sentences=1)) == 1
    with pytest.raises(DataFormatError, match=r"test-es.tsv: expected a file"):
        load_tagged_sentences(UDPOS, "test", "es", source)
    with pytest.raises(XlgmError, match="has no udpos train-en.tsv"):
        load_tagged_sentences(UDPOS, "train", "en", source)
    with pytest.raises(XlgmError, match="unknown language code 'de' for task udpos"):
        load_tagged_sentences(UDPOS, "test", "de", source)


def test_each_loader_refuses_the_other_kind_of_task():
    with pytest.raises(XlgmError, match="task udpos labels words"):
        load_examples(UDPOS, "test", "en")
    with pytest.raises(XlgmError, match="task xnli classifies sentence pairs"):
        load_tagged_sentences(XNLI, "test", "en")
    with pytest.raises(XlgmError, match="train-minus-test-100 split is for sentence-pair tasks"):
        load_tagged_sentences(PANX, "train-minus-test-100", "en")
    with pytest.raises(XlgmError, match="bundled train split is en only"):
        load_tagged_sentences(PANX, "train", "de")


@pytest.mark.parametrize("task", [UDPOS, PANX])
def test_bundled_subset(task):
    assert len(load_tagged_sentences(task, "train", "en")) == {"udpos": 21253, "panx": 20000}[task.name]
    assert len(load_tagged_sentences(task, "dev", "en")) == {"udpos": 3974, "panx": 10000}[task.name]
    sizes = {lang: len(load_tagged_sentences(task, task.evaluation_split, lang)) for lang in task.target_languages}
    assert max(sizes.values()) == BUNDLED_TOKEN_SENTENCES
    assert sum(n >= 100 for n in sizes.values()) >= 30  # the fewer are all a language has (slow test below)
    tags = {
        t for lang in ("en", "fr") for s in load_tagged_sentences(task, task.evaluation_split, lang) for t in s.tags
    }
    assert tags == set(range(task.num_labels))
    files = sorted(p.name for p in (bundled_dir() / task.name).iterdir())
    assert all(name.endswith(".tsv.gz") for name in files)


@pytest.mark.slow
@pytest.mark.parametrize("task", [UDPOS, PANX])
def test_shared_data_reads_cleanly_and_the_bundle_samples_it(shared_data, task):
    """Every shared file reads; each bundled evaluation file is 1,000 of its sentences in file order, or all."""
    source = DataSource("local", str(shared_data))
    for lang in task.languages:
        full = load_tagged_sentences(task, task.evaluation_split, lang, source)
        bundled = load_tagged_sentences(task, task.evaluation_split, lang)
        assert len(bundled) == (len(full) if lang == "en" and task.name == "panx" else min(1000, len(full)))
        remaining = iter(full)
        assert all(any(s == t for t in remaining) for s in bundled)  # a subsequence: sampled in file order
    for path in sorted((shared_data / task.name).glob("*.tsv")):
        assert read_conll(path, task)


@pytest.mark.slow
@pytest.mark.parametrize("task", [UDPOS, PANX])
def test_bundled_token_files_rebuild_byte_for_byte(shared_data, tmp_path, task):
    from xlgm.data.bundled import build_token_subset

    build_token_subset(task, shared_data, tmp_path)
    shipped = sorted((bundled_dir() / task.name).iterdir())
    assert [p.name for p in shipped] == sorted(p.name for p in (tmp_path / task.name).iterdir())
    for path in shipped:
        assert (tmp_path / task.name / path.name).read_bytes() == path.read_bytes(), path.name
