"""The Hugging Face datasets path, with `datasets.load_dataset` replaced by an in-memory dataset.

The Hub is unreachable in tests; what is checked is our side: the dataset id, the config (language), the
split names, the text fields and the label range; for token tasks, the words and tags columns and the tags
mapped by name, against the same sentences read from the files.
"""

from __future__ import annotations

import datasets
import pytest

from xlgm.core.errors import XlgmError
from xlgm.data.hub import load_hub_split, load_hub_tagged
from xlgm.data.loading import DataSource, load_examples, load_tagged_sentences
from xlgm.data.tasks import PANX, PAWSX, UDPOS, XNLI


@pytest.fixture
def fake_hub(monkeypatch):
    calls = []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        if path == "facebook/xnli":
            return datasets.Dataset.from_dict({"premise": ["p1", "p2"], "hypothesis": ["h1", "h2"], "label": [0, 2]})
        if path == "google-research-datasets/paws-x":
            return datasets.Dataset.from_dict({"id": [1], "sentence1": ["s1"], "sentence2": ["s2"], "label": [1]})
        raise FileNotFoundError(path)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_xnli_from_hub(fake_hub):
    rows = load_examples(XNLI, "dev", "sw", DataSource("hf"))
    assert fake_hub == [("facebook/xnli", "sw", "validation")]
    assert [(r.text_a, r.text_b, r.label) for r in rows] == [("p1", "h1", 0), ("p2", "h2", 2)]


def test_pawsx_from_hub(fake_hub):
    rows = load_hub_split(PAWSX, "train", "en")
    assert fake_hub == [("google-research-datasets/paws-x", "en", "train")]
    assert rows[0].label == 1 and rows[0].text_b == "s2"


def test_hub_failure_is_a_clear_error(monkeypatch):
    def offline(*a, **kw):
        raise ConnectionError("offline")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(XlgmError, match=r"facebook/xnli \(de, test\).*offline"):
        load_hub_split(XNLI, "test", "de")


def test_label_out_of_range(monkeypatch):
    monkeypatch.setattr(
        datasets,
        "load_dataset",
        lambda *a, **kw: datasets.Dataset.from_dict({"premise": ["p"], "hypothesis": ["h"], "label": [-1]}),
    )
    with pytest.raises(XlgmError, match="row 0: label -1 out of range"):
        load_hub_split(XNLI, "test", "de")


# Token tasks: the Hub's columns are built from the bundled CoNLL files with `datasets`' own json loader and
# ClassLabel features, in a tag order other than the task's, so that tags must map by name.
HUB_TAG_NAMES = {
    "udpos": ["NOUN", "PUNCT", "ADP", "NUM", "SYM", "SCONJ", "ADJ", "PART", "DET", "CCONJ", "PROPN", "PRON", "X",
              "_", "ADV", "INTJ", "VERB", "AUX"],  # universal_dependencies' upos order, with its "_"
    "panx": ["O", "B-PER", "I-PER", "B-ORG", "I-ORG", "B-LOC", "I-LOC"],
}  # fmt: skip


def _hub_like(task, sentences, folder, column_names=("tokens", "tags")):
    """A Dataset read by datasets' json loader from rows written as the Hub's: words and ClassLabel tag ids."""
    import json

    names = HUB_TAG_NAMES[task.name]
    path = folder / f"{task.name}.jsonl"
    with path.open("w", encoding="utf-8") as f:
        for s in sentences:
            row = {column_names[0]: list(s.words), column_names[1]: [names.index(task.label_names[t]) for t in s.tags]}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    features = datasets.Features(
        {
            column_names[0]: datasets.List(datasets.Value("string")),
            column_names[1]: datasets.List(datasets.ClassLabel(names=names)),
        }
    )
    return REAL_LOAD_DATASET(
        "json", data_files=str(path), features=features, split="train", cache_dir=str(folder / "c")
    )


REAL_LOAD_DATASET = datasets.load_dataset


@pytest.fixture
def token_hub(monkeypatch, tmp_path):
    """`datasets.load_dataset` for the token tasks' Hub ids, serving the bundled sentences in the Hub's form."""
    calls = []

    def load_dataset(path, name=None, split=None, **kw):
        calls.append((path, name, split))
        task = {"google/xtreme": UDPOS, "unimelb-nlp/wikiann": PANX}[path]
        lang = {"udpos.French": "fr", "udpos.English": "en", "de": "de"}[name]
        ours = {"test": "test", "validation": "dev", "train": "train"}[split]
        return _hub_like(task, load_tagged_sentences(task, ours, lang, max_sentences=50), tmp_path, task.hf_text_fields)

    monkeypatch.setattr(datasets, "load_dataset", load_dataset)
    return calls


def test_udpos_from_hub_equals_the_files(token_hub):
    rows = load_tagged_sentences(UDPOS, "test", "fr", DataSource("hf"))
    assert token_hub == [("google/xtreme", "udpos.French", "test")]
    assert rows == load_tagged_sentences(UDPOS, "test", "fr", max_sentences=50)
    assert len(rows) == 50 and len({t for s in rows for t in s.tags}) > 10


def test_panx_from_hub_equals_the_files(token_hub):
    rows = load_hub_tagged(PANX, "dev", "de")
    assert token_hub == [("unimelb-nlp/wikiann", "de", "validation")]
    assert rows == load_tagged_sentences(PANX, "dev", "de", max_sentences=50)


def test_a_language_the_hub_dataset_lacks(token_hub):
    with pytest.raises(XlgmError, match="google/xtreme has no udpos data for lt; read it from a folder"):
        load_tagged_sentences(UDPOS, "test", "lt", DataSource("hf"))
    assert token_hub == []


def test_hub_token_rows_are_checked(monkeypatch, tmp_path):
    def serve(ds):
        monkeypatch.setattr(datasets, "load_dataset", lambda *a, **kw: ds)

    good = load_tagged_sentences(UDPOS, "test", "en", max_sentences=3)
    features = datasets.Features(
        {
            "tokens": datasets.List(datasets.Value("string")),
            "pos_tags": datasets.List(datasets.ClassLabel(names=HUB_TAG_NAMES["udpos"])),
        }
    )
    underscore = HUB_TAG_NAMES["udpos"].index("_")
    serve(datasets.Dataset.from_dict({"tokens": [["a", "b"]], "pos_tags": [[0, underscore]]}, features=features))
    with pytest.raises(XlgmError, match=r"google/xtreme \(en, test\) row 0: tag 13 is not a udpos tag"):
        load_hub_tagged(UDPOS, "test", "en")
    serve(datasets.Dataset.from_dict({"tokens": [["a", ""]], "pos_tags": [[0, 1]]}, features=features))
    with pytest.raises(XlgmError, match="row 0: an empty word"):
        load_hub_tagged(UDPOS, "test", "en")
    serve(datasets.Dataset.from_dict({"tokens": [["a"], []], "pos_tags": [[0], []]}, features=features))
    with pytest.raises(XlgmError, match=r"row 1: 0 word\(s\) and 0 tag\(s\)"):
        load_hub_tagged(UDPOS, "test", "en")
    serve(_hub_like(UDPOS, good, tmp_path))  # columns tokens/tags, not the task's tokens/pos_tags
    with pytest.raises(XlgmError, match="no column 'pos_tags'; it has tokens, tags"):
        load_hub_tagged(UDPOS, "test", "en")
    # string tags (no ClassLabel) map by name
    serve(datasets.Dataset.from_dict({"tokens": [["Paris"]], "pos_tags": [["PROPN"]]}))
    assert load_hub_tagged(UDPOS, "test", "en")[0].tags == (UDPOS.label_names.index("PROPN"),)
