"""Token-classification heads (output="tokens"): a fresh head on a base model, a trained one kept and mapped
by tag name, the loss on first subwords only, and the embedded model's encoder under a token head."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from xlgm.core.errors import XlgmError
from xlgm.core.types import TaggedSentence
from xlgm.data.tagging import IGNORE_INDEX, TaggedBatchCollator, tokenize_tagged
from xlgm.data.tasks import PANX, UDPOS, XNLI
from xlgm.models.load import load_classifier, load_target
from xlgm.runs import ResolvedTarget

SENTENCES = [
    TaggedSentence(("A", "man", "plays", "a", "guitar", "."), (5, 7, 15, 5, 7, 12)),
    TaggedSentence(("Nobody", "is", "here"), (10, 3, 2)),
]


def save_tagger(folder: Path, tiny_bert_dir: Path, labels: list[str], seed: int = 5):
    """A tiny BertForTokenClassification with a trained-looking head, saved with the tiny BERT's tokenizer."""
    from transformers import AutoTokenizer, BertConfig, BertForTokenClassification

    config = BertConfig.from_pretrained(tiny_bert_dir)
    config.num_labels = len(labels)
    config.id2label = dict(enumerate(labels))
    config.label2id = {name: i for i, name in enumerate(labels)}
    config.hidden_dropout_prob = config.attention_probs_dropout_prob = 0.0
    torch.manual_seed(seed)
    model = BertForTokenClassification(config)
    with torch.no_grad():
        model.classifier.bias.copy_(torch.randn(len(labels)))
    model.save_pretrained(folder)
    AutoTokenizer.from_pretrained(tiny_bert_dir).save_pretrained(folder)
    return model.eval()


def batch_of(tokenizer, task=UDPOS):
    data = tokenize_tagged(tokenizer, SENTENCES, 32)
    return TaggedBatchCollator(tokenizer, data)(list(range(len(data))))


def test_a_base_model_gets_a_fresh_token_head(tiny_bert_dir):
    from transformers import AutoTokenizer, BertForTokenClassification

    model, new = load_classifier(
        str(tiny_bert_dir), UDPOS.num_labels, UDPOS.label_names, output="tokens", return_new=True
    )
    assert isinstance(model, BertForTokenClassification)
    assert new == ["classifier.bias", "classifier.weight"]
    assert model.config.id2label[0] == "ADJ" and model.config.num_labels == 17
    batch = batch_of(AutoTokenizer.from_pretrained(tiny_bert_dir))
    model.eval()
    with torch.no_grad():
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], labels=batch["labels"])
    assert out.logits.shape == (*batch["input_ids"].shape, 17)
    # the model's own loss is the mean over first subwords only: the positions labelled in the batch
    keep = batch["labels"] != IGNORE_INDEX
    assert int(keep.sum()) == sum(len(s.words) for s in SENTENCES)
    expected = torch.nn.functional.cross_entropy(out.logits[keep], batch["labels"][keep])
    torch.testing.assert_close(out.loss, expected)


def test_a_trained_tagger_keeps_its_head_mapped_by_tag_name(tiny_bert_dir, tmp_path):
    folder = tmp_path / "tagger"
    theirs = ["b-loc", "I-LOC", "O", "B-PER", "I-PER", "B-ORG", "I-ORG"]  # another order, other cases
    original = save_tagger(folder, tiny_bert_dir, theirs)
    model, tokenizer = load_target(ResolvedTarget(str(folder)), PANX.num_labels, PANX.label_names, output="tokens")
    batch = batch_of(tokenizer)
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        ours, reference = model(**inputs).logits, original(**inputs).logits
    order = [[name.lower() for name in theirs].index(name.lower()) for name in PANX.label_names]
    torch.testing.assert_close(ours, reference[..., order], rtol=0, atol=1e-6)
    assert model.config.id2label == dict(enumerate(PANX.label_names))


def test_heads_of_the_other_kind_are_not_kept(tiny_bert_dir, tmp_path):
    folder = tmp_path / "tagger"
    save_tagger(folder, tiny_bert_dir, list(PANX.label_names))
    # a token head is no trained sentence-pair head, and the reverse
    with pytest.raises(XlgmError, match="has no trained classification head"):
        load_target(ResolvedTarget(str(folder)), XNLI.num_labels, XNLI.label_names)
    with pytest.raises(XlgmError, match="has no trained classification head"):
        load_target(ResolvedTarget(str(tiny_bert_dir)), UDPOS.num_labels, UDPOS.label_names, output="tokens")
    with pytest.raises(XlgmError, match="its classification head's labels .* are not the task's"):
        load_target(ResolvedTarget(str(folder)), UDPOS.num_labels, UDPOS.label_names, output="tokens")
    with pytest.raises(XlgmError, match="output: expected one of classification, tokens"):
        load_classifier(str(folder), 7, output="spans")


def test_a_random_token_head_is_seeded(tiny_bert_dir):
    a, _ = load_target(ResolvedTarget(str(tiny_bert_dir)), 17, UDPOS.label_names, random_head=4, output="tokens")
    b, _ = load_target(ResolvedTarget(str(tiny_bert_dir)), 17, UDPOS.label_names, random_head=4, output="tokens")
    assert torch.equal(a.classifier.weight, b.classifier.weight)


@pytest.mark.slow
def test_embedded_model_under_a_token_head(embedded_dir, embedded_model, hf_offline, monkeypatch):
    """`embedded` loads as BertForTokenClassification with the converted encoder's weights, and tags the
    words of a sentence tokenized by its own tokenizer."""
    from transformers import BertForTokenClassification

    from xlgm.models import embedded as embedded_module
    from xlgm.models.load import load_tokenizer

    monkeypatch.setattr(embedded_module, "embedded_model_dir", lambda cache_dir=None: embedded_dir)
    model = load_classifier("embedded", UDPOS.num_labels, UDPOS.label_names, output="tokens").eval()
    assert isinstance(model, BertForTokenClassification)
    for name, p in embedded_model.named_parameters():
        if not name.startswith("pooler."):
            assert torch.equal(dict(model.bert.named_parameters())[name], p), name
    batch = batch_of(load_tokenizer("embedded"))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (*batch["input_ids"].shape, 17) and torch.isfinite(logits).all()


def test_an_mt5_gets_a_token_head_on_its_encoder(tiny_mt5_dir, capsys):
    from transformers import AutoTokenizer

    model = load_classifier(str(tiny_mt5_dir), UDPOS.num_labels, UDPOS.label_names, output="tokens").eval()
    assert type(model).__name__ == "MT5ForTokenClassification"
    assert "start random" not in capsys.readouterr().err  # the encoder's weights all came from the file
    batch = batch_of(AutoTokenizer.from_pretrained(tiny_mt5_dir))
    with torch.no_grad():
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    assert logits.shape == (*batch["input_ids"].shape, UDPOS.num_labels)
