"""Training splits built from English dev and test: no premise (PAWS-X: sentence) of a training row occurs in
any evaluation row of any language, for the bundled subset and for ../shared/data."""

from __future__ import annotations

from pathlib import Path

import pytest

from xlgm.core.errors import XlgmError
from xlgm.data.bundled import BUNDLED_TEST_ROWS, build_subset, bundled_dir
from xlgm.data.loading import DataSource, load_examples
from xlgm.data.splits import check_split, excluded_test_rows, group_holdout
from xlgm.data.tasks import PAWSX, XNLI, Example


def _squash(text: str) -> str:
    return " ".join(text.split())


def _premises(rows) -> set[str]:
    return {_squash(r.text_a) for r in rows}


def _sentences(rows) -> set[str]:
    return {_squash(t) for r in rows for t in (r.text_a, r.text_b)} - {"NS"}  # NS: PAWS-X's "not translated"


def _write(folder: Path, name: str, rows: list[tuple[str, str, str]]) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).write_text("".join(f"{a}\t{b}\t{label}\n" for a, b, label in rows), encoding="utf-8")


def _xnli_folder(tmp_path: Path) -> Path:
    """dev: premises D1, D2; test: premises Q1..Q4, three hypotheses each, in order; German parallel, with
    translations that are not one-to-one, as in XNLI's own files."""
    labels = ("entailment", "neutral", "contradiction")
    dev = [(f"D{p} premise.", f"D{p} hypothesis {h}.", labels[h]) for p in (1, 2) for h in range(3)]
    test = [(f"Q{p} premise.", f"Q{p} hypothesis {h}.", labels[h]) for p in (1, 2, 3, 4) for h in range(3)]
    test[10] = ("  Q2   premise. ", "Q2 again, written with other spaces.", "neutral")  # row 10: premise Q2
    dev_de = [(f"de {a}", f"de {b}", c) for a, b, c in dev]
    test_de = [(f"de {a}", f"de {b}", c) for a, b, c in test]
    test_de[9] = ("de Q1 premise.", "de Q4 hypothesis 0.", "entailment")  # Q4's German premise is Q1's
    dev_de[4] = ("de Q2 premise.", "de D2 hypothesis 1.", "neutral")  # and so is one of D2's, Q2's
    test_de[0] = test_de[7] = ("NS", "NS", "entailment")  # not translated: marks no item
    _write(tmp_path / "xnli", "dev-en.tsv", dev)
    _write(tmp_path / "xnli", "test-en.tsv", test)
    _write(tmp_path / "xnli", "dev-de.tsv", dev_de)
    _write(tmp_path / "xnli", "test-de.tsv", test_de)
    return tmp_path


def test_split_names():
    for name in ("dev", "test", "train", "train-minus-test-1", "train-minus-test-1500"):
        assert check_split(name) == name
    for name in ("training", "train-minus-test-0", "train-minus-test-", "train-minus-test-05", "valid"):
        with pytest.raises(XlgmError, match="expected dev, test, train or train-minus-test-N"):
            check_split(name)
    assert excluded_test_rows("train-minus-test-1500") == 1500
    assert excluded_test_rows("train") is None and excluded_test_rows("dev") is None


def test_train_minus_test_n_drops_whole_premises_in_every_language(tmp_path):
    source = DataSource("local", str(_xnli_folder(tmp_path)))
    rows = load_examples(XNLI, "train-minus-test-4", "en", source)
    # Test rows 0..3 hold premises Q1 (rows 0-2) and Q2 (row 3): all of Q1 and Q2 go, row 10 (Q2 written
    # with other spaces) too, and so do test row 9 and dev row 4, whose German premises are Q1's and Q2's.
    # The rest of dev and of Q3 (6-8) and Q4 (11) stays, in file order; "NS" (row 7) matches nothing.
    test = load_examples(XNLI, "test", "en", source)
    dev = load_examples(XNLI, "dev", "en", source)
    assert rows == [dev[i] for i in (0, 1, 2, 3, 5)] + [test[i] for i in (6, 7, 8, 11)]
    assert load_examples(XNLI, "train-minus-test-12", "en", source) == [dev[i] for i in (0, 1, 2, 3, 5)]
    assert load_examples(XNLI, "train-minus-test-4", "en", source, max_examples=7) == rows[:7]
    assert load_examples(XNLI, "dev", "en", source) == dev and len(dev) == 6  # dev itself is unchanged


def test_train_from_files_errors(tmp_path):
    source = DataSource("local", str(_xnli_folder(tmp_path)))
    with pytest.raises(XlgmError, match="en only"):
        load_examples(XNLI, "train-minus-test-4", "de", source)
    with pytest.raises(XlgmError, match="has only 12 rows"):
        load_examples(XNLI, "train-minus-test-13", "en", source)
    with pytest.raises(XlgmError, match="no xnli train-en.tsv; `train-minus-test-N`"):
        load_examples(XNLI, "train", "en", source)
    with pytest.raises(XlgmError, match="unknown split 'training'"):
        load_examples(XNLI, "training", "en", source)
    with pytest.raises(XlgmError, match="the Hub has its own `train` split"):
        load_examples(XNLI, "train-minus-test-4", "en", DataSource("hf"))
    with pytest.raises(XlgmError, match="the bundled `train` shares nothing with any bundled test row"):
        load_examples(XNLI, "train-minus-test-100", "en")
    with pytest.raises(XlgmError, match="the bundled train split is en only"):
        load_examples(XNLI, "train", "sw")
    (tmp_path / "xnli" / "test-de.tsv").write_text("de\tde\tneutral\n", encoding="utf-8")
    with pytest.raises(XlgmError, match=r"parallel files of different lengths \(\[1, 12\] rows\)"):
        load_examples(XNLI, "train-minus-test-4", "en", source)


def test_a_folder_with_a_train_file_keeps_it(tmp_path):
    folder = _xnli_folder(tmp_path)
    _write(folder / "xnli", "train-en.tsv", [("A premise.", "A hypothesis.", "neutral")])
    rows = load_examples(XNLI, "train", "en", DataSource("local", str(folder)))
    assert rows == [Example("A premise.", "A hypothesis.", 1)]


def test_pawsx_drops_rows_sharing_either_sentence(tmp_path):
    folder = tmp_path / "pawsx"
    _write(folder, "dev-en.tsv", [("S1", "S9", "1"), ("S8", "S7", "0")])
    _write(
        folder,
        "test-en.tsv",
        [
            ("S1", "S2", "1"),
            ("S3", "S4", "0"),  # evaluation rows (N = 2)
            ("S4", "S5", "0"),  # S4 is an evaluation sentence
            ("S6", "S2", "1"),  # S2 too, in the other field
            ("S6", "S7", "0"),
            ("S10", "S11", "1"),
        ],
    )  # in German, S3's translation
    _write(
        folder,
        "test-de.tsv",
        [
            ("T1", "T2", "1"),
            ("T3", "T4", "0"),
            ("T4", "T5", "0"),
            ("T6", "T2", "1"),
            ("T6", "T7", "0"),
            ("T3", "T11", "1"),
        ],
    )
    rows = load_examples(PAWSX, "train-minus-test-2", "en", DataSource("local", str(tmp_path)))
    assert rows == [Example("S8", "S7", 0), Example("S6", "S7", 0)]


def test_group_holdout_keeps_premises_on_one_side():
    rows = [Example(f"P{p}", f"H{p}.{h}", h) for p in range(10) for h in range(3)]
    train, held = group_holdout(XNLI, rows, 0.1, seed=3)
    assert len(held) == 3 and len(train) == 27
    assert len(_premises(held)) == 1 and not _premises(held) & _premises(train)
    assert sorted(train + held, key=rows.index) == rows
    assert group_holdout(XNLI, rows, 0.1, seed=3) == (train, held)
    assert group_holdout(XNLI, rows, 0.0, seed=3) == (rows, [])
    # PAWS-X: a sentence shared by two pairs ties them (and whatever they are tied to) into one group.
    pairs = [Example("a", "b", 1), Example("c", "d", 0), Example("b", "e", 0), Example("e", "f", 1)]
    for seed in range(6):
        train, held = group_holdout(PAWSX, pairs, 0.25, seed=seed)
        assert held in ([pairs[1]], [pairs[0], pairs[2], pairs[3]])
        assert not _sentences(held) & _sentences(train)


@pytest.mark.parametrize("task, size", [(XNLI, 6108), (PAWSX, 2609)])
def test_bundled_train_shares_nothing_with_any_evaluation_row(task, size):
    train = load_examples(task, "train", "en")
    assert len(train) == size
    evaluation = {lang: load_examples(task, "test", lang) for lang in task.languages}
    assert all(len(rows) == BUNDLED_TEST_ROWS for rows in evaluation.values())  # parallel: row i is one item
    shared_text = _premises if task is XNLI else _sentences
    for lang, rows in evaluation.items():
        assert not shared_text(train) & shared_text(rows), lang
    # English dev first (those of its rows that share nothing with the evaluation rows), then test rows.
    dev = load_examples(task, "dev", "en")
    dev_rows = set(dev)
    from_dev = [r for r in train if r in dev_rows]
    assert from_dev == train[: len(from_dev)] and len(from_dev) > 0.7 * len(dev)
    assert not set(train[len(from_dev) :]) & dev_rows
    assert len(dev) == {"xnli": 2490, "pawsx": 2000}[task.name]  # the dev split itself is unchanged
    if task is XNLI:
        assert len(_premises(train)) * 3 == len(train)  # whole premises: three hypotheses each


@pytest.mark.slow
def test_bundled_subset_is_what_shared_data_rebuilds(shared_data, tmp_path):
    build_subset(shared_data, tmp_path)
    for task in (XNLI, PAWSX):
        shipped = sorted(p.name for p in (bundled_dir() / task.name).glob("*.tsv"))
        assert shipped == sorted(p.name for p in (tmp_path / task.name).glob("*.tsv"))
        for name in shipped:
            assert (tmp_path / task.name / name).read_bytes() == (bundled_dir() / task.name / name).read_bytes()


def _index_of(rows: list[Example]) -> dict[Example, int]:
    index: dict[Example, int] = {}
    for i, row in enumerate(rows):
        index.setdefault(row, i)
    return index


def _check_by_row_index(task, shared_data: Path, train: list[Example], evaluation_indices: set[int]) -> None:
    """Through the parallel files: the training rows, found by position in English dev and test, are exactly
    the dev and test rows whose premises (PAWS-X: sentences) in every language occur in no evaluation row
    of that language; the evaluation rows themselves are not among them."""
    source = DataSource("local", str(shared_data))
    shared_text = _premises if task is XNLI else _sentences
    files = {
        name: {lang: load_examples(task, name, lang, source) for lang in task.languages} for name in ("dev", "test")
    }
    taken = {lang: shared_text(rows[i] for i in evaluation_indices) for lang, rows in files["test"].items()}
    expected = []
    for name in ("dev", "test"):
        length = len(files[name]["en"])
        assert all(len(rows) == length for rows in files[name].values())
        expected += [
            files[name]["en"][i]
            for i in range(length)
            if all(not shared_text([rows[i]]) & taken[lang] for lang, rows in files[name].items())
        ]
    assert train == expected
    test_at = _index_of(files["test"]["en"])
    assert not {test_at[r] for r in train if r in test_at} & evaluation_indices


@pytest.mark.slow
@pytest.mark.parametrize("task", [XNLI, PAWSX])
def test_bundled_train_against_shared_data_by_row_index(task, shared_data):
    at = _index_of(load_examples(task, "test", "en", DataSource("local", str(shared_data))))
    evaluation_indices = {at[r] for r in load_examples(task, "test", "en")}
    assert len(evaluation_indices) == BUNDLED_TEST_ROWS
    _check_by_row_index(task, shared_data, load_examples(task, "train", "en"), evaluation_indices)


@pytest.mark.slow
@pytest.mark.parametrize("task, n", [(XNLI, 500), (XNLI, 1500), (PAWSX, 500)])
def test_shared_data_train_minus_test_n(task, n, shared_data):
    train = load_examples(task, f"train-minus-test-{n}", "en", DataSource("local", str(shared_data)))
    _check_by_row_index(task, shared_data, train, set(range(n)))
