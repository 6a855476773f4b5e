"""Loading task data: the bundled subset, a local XTREME folder, and every kind of bad input."""

from __future__ import annotations

from pathlib import Path

import pytest

from xlgm.core.errors import DataFormatError, XlgmError
from xlgm.data.bundled import BUNDLED_TEST_ROWS, bundled_dir
from xlgm.data.loading import DataSource, load_examples
from xlgm.data.tasks import PAWSX, XNLI, get_task
from xlgm.data.tsv import read_tsv


def test_task_definitions():
    assert len(XNLI.languages) == 15 and XNLI.num_labels == 3
    assert len(PAWSX.languages) == 7 and PAWSX.num_labels == 2
    assert XNLI.label_names == ("entailment", "neutral", "contradiction")
    assert "en" not in XNLI.target_languages and len(XNLI.target_languages) == 14
    assert get_task("paws-x") is PAWSX


@pytest.mark.parametrize("task", [XNLI, PAWSX])
def test_bundled_subset_is_parallel_and_complete(task):
    dev = load_examples(task, "dev", "en")
    assert len(dev) == {"xnli": 2490, "pawsx": 2000}[task.name]
    tests = {lang: load_examples(task, "test", lang) for lang in task.languages}
    assert all(len(rows) == BUNDLED_TEST_ROWS for rows in tests.values())
    english_labels = [r.label for r in tests["en"]]
    assert all([r.label for r in rows] == english_labels for rows in tests.values())
    assert set(english_labels) == set(range(task.num_labels))
    assert (bundled_dir() / "README.md").read_text().count("CC BY-NC 4.0") == 1


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_wrong_column_count_names_file_and_line(tmp_path):
    path = _write(tmp_path, "test-en.tsv", "a\tb\tentailment\na\tb\n")
    with pytest.raises(DataFormatError) as err:
        read_tsv(path, XNLI)
    assert err.value.line == 2 and str(path) in str(err.value) and "3 tab-separated columns" in str(err.value)
    assert f"{path}:2:" in str(err.value)


def test_unknown_label(tmp_path):
    path = _write(tmp_path, "test-en.tsv", "a\tb\tentailment\na\tb\tmaybe\n")
    with pytest.raises(DataFormatError, match=r"test-en.tsv:2: expected a xnli label .* got 'maybe'"):
        read_tsv(path, XNLI)


def test_empty_file(tmp_path):
    path = _write(tmp_path, "test-en.tsv", "")
    with pytest.raises(DataFormatError, match="empty file"):
        read_tsv(path, XNLI)


def test_missing_language_file(tmp_path):
    _write(tmp_path, "test-en.tsv", "a\tb\tentailment\n")
    with pytest.raises(DataFormatError, match=r"test-de.tsv: expected a file"):
        load_examples(XNLI, "test", "de", DataSource("local", str(tmp_path)))


def test_unknown_language_code():
    with pytest.raises(XlgmError, match="unknown language code.*xx"):
        XNLI.resolve_languages("en,xx")
    with pytest.raises(XlgmError, match="unknown language"):
        load_examples(XNLI, "test", "xx")


def test_pawsx_labels_and_local_layout(tmp_path):
    (tmp_path / "pawsx").mkdir()
    _write(tmp_path / "pawsx", "test-fr.tsv", "a\tb\t1\nc\td\t0\n")
    rows = load_examples(PAWSX, "test", "fr", DataSource("local", str(tmp_path)))
    assert [r.label for r in rows] == [1, 0] and rows[0].text_a == "a"


@pytest.mark.slow
def test_shared_data_reads_cleanly(shared_data):
    for task in (XNLI, PAWSX):
        for lang in task.languages:
            assert len(load_examples(task, "dev", lang, DataSource("local", str(shared_data)))) > 1000
