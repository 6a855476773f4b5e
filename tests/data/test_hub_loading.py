"""The Hugging Face datasets path, with `datasets.load_dataset` replaced by an in-memory dataset.

The Hub is unreachable in tests; what is checked is our side: the dataset id, the config (language), the
split names, the text fields and the label range.
"""

from __future__ import annotations

import datasets
import pytest

from xlgm.core.errors import XlgmError
from xlgm.data.hub import load_hub_split
from xlgm.data.loading import DataSource, load_examples
from xlgm.data.tasks import PAWSX, XNLI


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
