"""Shared helpers for the objective tests: tiny tokenizers, a tiny BERT, batches and a reference step loop.

Not a test module (no test_ prefix); the test files import it (pytest puts this folder on sys.path).
"""

from __future__ import annotations

import functools
import random

import pytest
import torch
from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
from transformers import BertConfig, BertForSequenceClassification, PreTrainedTokenizerFast

from xlgm.data.tasks import Example
from xlgm.objectives.base import StepContext

CORPUS = [
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the stage tonight.",
    "Nobody expected the unaffable inspector to smile.",
    "The children were reading books in the quiet library.",
    "She sells seashells by the seashore every morning.",
    "Transformers learn representations of multilingual sentences.",
    "The weather was unexpectedly pleasant for the festival.",
    "Several researchers compared optimizers on translation tasks.",
    "He quickly understood that the premise contradicted the hypothesis.",
    "Paraphrases express the same meaning with different words.",
    "Generalization across languages depends on shared subwords.",
    "Sharpness aware minimization perturbs the weights before descending.",
    "A woman is slicing tomatoes while the radio is playing.",
    "The committee postponed the meeting until further notice.",
    "Rivers and mountains separate the neighbouring villages.",
    "Interesting experiments require careful reproducible measurements.",
]


@pytest.fixture(autouse=True)
def single_thread():
    """Tiny models gain nothing from intra-op threads and lose a lot when the cores are shared; restored
    after each test. Autouse in every module that imports it."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def sentences(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    return [rng.choice(CORPUS) for _ in range(n)]


def make_rows(n: int, seed: int = 0, num_labels: int = 3) -> list[Example]:
    rng = random.Random(seed)
    return [Example(rng.choice(CORPUS), rng.choice(CORPUS), rng.randrange(num_labels)) for _ in range(n)]


@functools.cache
def wordpiece_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer = normalizers.BertNormalizer(lowercase=True)
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(CORPUS * 4, trainers.WordPieceTrainer(vocab_size=160, special_tokens=specials))
    cls, sep = tok.token_to_id("[CLS]"), tok.token_to_id("[SEP]")
    tok.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", cls), ("[SEP]", sep)]
    )
    tok.decoder = decoders.WordPiece()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        unk_token="[UNK]",
        pad_token="[PAD]",
        cls_token="[CLS]",
        sep_token="[SEP]",
        mask_token="[MASK]",
        model_max_length=64,
    )


@functools.cache
def unigram_tokenizer() -> PreTrainedTokenizerFast:
    specials = ["<s>", "<pad>", "</s>", "<unk>"]
    tok = Tokenizer(models.Unigram())
    tok.normalizer = normalizers.NFKC()
    tok.pre_tokenizer = pre_tokenizers.Metaspace()
    trainer = trainers.UnigramTrainer(vocab_size=180, special_tokens=specials, unk_token="<unk>")
    tok.train_from_iterator(CORPUS * 4, trainer)
    bos, eos = tok.token_to_id("<s>"), tok.token_to_id("</s>")
    tok.post_processor = processors.TemplateProcessing(
        single="<s> $A </s>", pair="<s> $A </s> </s> $B </s>", special_tokens=[("<s>", bos), ("</s>", eos)]
    )
    tok.decoder = decoders.Metaspace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<s>",
        eos_token="</s>",
        unk_token="<unk>",
        pad_token="<pad>",
        cls_token="<s>",
        sep_token="</s>",
        model_max_length=64,
    )


def tiny_model(vocab_size: int = 200, seed: int = 0, num_labels: int = 3, dtype=torch.float32, dropout: float = 0.0):
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=vocab_size,
        hidden_size=16,
        num_hidden_layers=2,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=80,
        type_vocab_size=2,
        num_labels=num_labels,
        hidden_dropout_prob=dropout,
        attention_probs_dropout_prob=dropout,
    )
    model = BertForSequenceClassification(config).to(dtype)
    model.train()
    return model


def make_batch(tokenizer, rows, idx, max_length: int = 48, token_type_ids: bool = True) -> dict[str, torch.Tensor]:
    chosen = [rows[i] for i in idx]
    enc = tokenizer(
        [r.text_a for r in chosen],
        [r.text_b for r in chosen],
        truncation=True,
        max_length=max_length,
        padding="longest",
        return_tensors="pt",
        return_token_type_ids=token_type_ids,
    )
    batch = {k: v for k, v in enc.items() if k in ("input_ids", "attention_mask", "token_type_ids")}
    if not token_type_ids:
        batch.pop("token_type_ids", None)
    batch["labels"] = torch.tensor([r.label for r in chosen], dtype=torch.long)
    batch["idx"] = torch.tensor(list(idx), dtype=torch.long)
    return batch


def params_of(model) -> list[torch.Tensor]:
    return [p.detach().clone() for p in model.parameters()]


def same_params(a, b) -> bool:
    return all(torch.equal(x, y) for x, y in zip(a, b))


def run_steps(objective, model, steps, *, accelerator=None, lr: float = 1e-2, seed: int = 0, optimizer=None):
    """The reference loop: per step, micro_step over its micro-batches, then AdamW step and
    zero_grad(set_to_none=True). `steps` is a list of lists of micro-batches. Returns the logs."""
    if optimizer is None:
        optimizer = torch.optim.AdamW(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    logs = []
    for step, micro_batches in enumerate(steps):
        for i, batch in enumerate(micro_batches):
            ctx = StepContext(accelerator, step, micro_index=i, num_micro=len(micro_batches), generator=generator)
            logs.append(objective.micro_step(model, batch, ctx))
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    return logs


def split(batch, sizes):
    """Split a batch into micro-batches of the given sizes (rows in order)."""
    out, start = [], 0
    for n in sizes:
        out.append({k: v[start : start + n] for k, v in batch.items()})
        start += n
    return out
