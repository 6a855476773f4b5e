"""`mvr`: Multi-view Subword Regularization (Wang, Ruder & Neubig, "Multi-view Subword Regularization",
NAACL 2021; code: github.com/cindyxinyiwang/multiview-subword-regularization).

Each training example is seen in two views, its deterministic segmentation x (the batch the loop built)
and a sampled segmentation x̂ (re-tokenized here from `train_rows[idx]`), and the loss is

    0.5 · CE(f(x), y) + 0.5 · CE(f(x̂), y) + λ · KL(p(·|x) ‖ p(·|x̂))

with the KL averaged over the micro-batch. Direction and gradients follow the authors' code
(`third_party/run_mv_classify.py`, also in Bassi et al.'s fork): `KLDivLoss(reduction="batchmean")` with
input log p(·|x̂) and target p(·|x) (temperature 1), i.e. KL from the deterministic to the sampled view;
it is not symmetrized and gradients flow through *both* views (neither is detached).

Options (active only with `--objective mvr`):

* `lam` (`--mvr-lambda`, default per task: XNLI 0.2, PAWS-X 0.6): λ. The defaults are the authors' `KL`
  in their training scripts, github.com/cindyxinyiwang/multiview-subword-regularization
  `scripts/train_mv_xnli.sh` (`KL=0.2`) and `scripts/train_mv_pawsx.sh` (`KL=0.6`), read at commit
  7674a1b. (The same repository's later `mvr_scripts/train_mvr_xnli.sh`, and Bassi et al.'s fork of it,
  set `KL=0.6` for XNLI too: pass `--mvr-lambda 0.6` for that setting.)
  Which task's default applies is the objective's `task` argument (`build_objective("mvr", task=...)`,
  given by the training loop); an objective built without one takes XNLI's.
* `rate` (`--mvr-rate`, default 0.2): how the sampled view is drawn — WordPiece dropout probability for
  WordPiece tokenizers (mBERT), sentencepiece-style smoothing α for Unigram tokenizers (XLM-R, e5, mT5);
  0.2 is the authors' `BPE_DROP=0.2`, which their code uses as exactly these two things. 0 turns sampling
  off: the sampled view *is* the deterministic one, so no second forward is run and the loss is exactly
  CE (the KL is 0). See `xlgm.objectives.segmentation`.
* `max_length`: truncation length of the sampled view (`longest_first`, the tokenizer's own pair format
  and special tokens). It must equal the one used for the deterministic batch: pass it explicitly, or
  put it in `ctx.extras["max_length"]`; else the tokenizer's `model_max_length` (if finite) or 512.
* `seed`: seeds the sampler when the loop gives no `ctx.generator`.

Cost: two forward/backward passes, the second on a longer input. With multilingual-e5's 250k-piece
vocabulary, α = 0.2 makes the sampled view about 1.9x as many tokens as the deterministic one on English
(α = 0.1: 2.6x, 0.3: 1.4x, 0.5: 1.1x; WordPiece dropout 0.2 on a small vocabulary: about 1.25x), so a
step costs roughly 1 + that ratio times an AdamW step, and more of the sampled view is cut by
`max_length`. Re-tokenizing runs on the CPU (about 15-25 ms per 32 pairs with e5's vocabulary here),
after the deterministic forward is queued so that it overlaps with it on a GPU.

Differences from the authors' code: the sampled segmentation is redrawn for every micro-batch (theirs
is drawn once and cached for the whole training run), and the WordPiece dropout never produces [UNK]
where the deterministic tokenizer does not (see segmentation.py). Sampling is seeded from
`ctx.generator` (one 62-bit draw per micro-batch), so runs are reproducible.

Accumulation, clipping, mixed precision and DDP need nothing special: both views' forwards are part of
one loss, back-propagated once with `ctx.backward` (scaled by `ctx.loss_scale`); logits go to fp32
before the softmaxes.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F

from xlgm.core import validation
from xlgm.core.errors import XlgmError
from xlgm.core.options import check_fields, flag_label, option
from xlgm.core.types import TaggedSentence
from xlgm.data.tasks import get_task
from xlgm.objectives.base import StepContext
from xlgm.objectives.common import (
    cross_entropy,
    logits_of,
    upcast,
)
from xlgm.objectives.registry import register_objective
from xlgm.objectives.segmentation import SubwordSampler

DEFAULT_MAX_LENGTH = 512
NO_TOKEN_TASKS = (
    "mvr does not train token tasks yet: its second view re-segments sentence-pair text, and re-segmenting "
    "tagged words so that each keeps its tag on its first subword is not implemented"
)


def consistency_kl(logits_det: torch.Tensor, logits_sampled: torch.Tensor) -> torch.Tensor:
    """KL(p_det ‖ p_sampled), mean over the batch (the authors' KLDivLoss(log p̂, p, 'batchmean'))."""
    log_p_det = F.log_softmax(upcast(logits_det), dim=-1)
    log_p_sampled = F.log_softmax(upcast(logits_sampled), dim=-1)
    return F.kl_div(log_p_sampled, log_p_det, reduction="batchmean", log_target=True)


# λ when none is given, by task: the authors' scripts (see the module docstring for the files).
DEFAULT_KL_WEIGHT = {"xnli": 0.2, "pawsx": 0.6}
DEFAULT_TASK = "xnli"


def default_kl_weight(task: str) -> float:
    if task not in DEFAULT_KL_WEIGHT:
        raise XlgmError(
            f"mvr has no default KL weight for task {task!r} (it has one for "
            f"{', '.join(DEFAULT_KL_WEIGHT)}); give lam (--mvr-lambda)"
        )
    return DEFAULT_KL_WEIGHT[task]


@dataclass(frozen=True)
class MVRConfig:
    # None: the task's default, DEFAULT_KL_WEIGHT
    lam: float | None = field(
        default=None,
        metadata=option(
            "--mvr-lambda",
            "mvr: KL weight (default per task, the authors' scripts: xnli 0.2, pawsx 0.6)",
            rule=validation.non_negative_number,
        ),
    )
    rate: float = field(
        default=0.2,
        metadata=option(
            "--mvr-rate",
            "mvr: WordPiece dropout rate / Unigram sampling alpha; 0 disables sampling",
            rule=validation.rate,
        ),
    )
    max_length: int | None = field(
        default=None,
        metadata=option(
            help="tokens a re-segmented row is cut to (the training loop gives its max_length)",
            rule=validation.optional_count,
            cli=False,
        ),
    )
    seed: int = field(default=0, metadata=option(help="seeds the sampler when the loop gives no generator", cli=False))

    def __post_init__(self):
        check_fields(self, label=flag_label(type(self)), store=True)


def is_known_token_task(task: str) -> bool:
    """Whether `task` names a token task: a built-in one, or one whose task file this process has read."""
    try:
        return get_task(task).is_token_task
    except XlgmError:
        return False


@register_objective
class MVRObjective:
    name = "mvr"
    config_class = MVRConfig
    reference = "Wang, Ruder & Neubig, Multi-view Subword Regularization, NAACL 2021"
    summary = "0.5 CE(det) + 0.5 CE(sampled) + lambda * KL(p_det || p_sampled)"
    loop_facts = ("task",)

    def __init__(self, config: MVRConfig | None = None, task: str | None = None):
        self.config = config or MVRConfig()
        if task is not None and is_known_token_task(task):  # a task this process has not read: refused in setup()
            raise XlgmError(NO_TOKEN_TASKS)
        # λ in use: the given one, else the authors' value for the task
        self.lam = self.config.lam if self.config.lam is not None else default_kl_weight(task or DEFAULT_TASK)
        self.sampler: SubwordSampler | None = None
        self.rows: Sequence[Any] | None = None
        self._rng = random.Random(self.config.seed)
        self._default_max_length = DEFAULT_MAX_LENGTH

    def setup(self, model: torch.nn.Module, tokenizer: Any, train_rows: Any) -> None:
        if train_rows and isinstance(train_rows[0], TaggedSentence):
            raise XlgmError(NO_TOKEN_TASKS)
        self.rows = train_rows
        if self.config.rate == 0:
            self.sampler = None  # nothing to sample: the second view is the first
            return
        if tokenizer is None:
            raise XlgmError("MVR needs the model's tokenizer to re-segment the training text")
        if train_rows is None:
            raise XlgmError("MVR needs the training rows (their text) to re-segment them")
        if getattr(tokenizer, "pad_token_id", None) is None:
            raise XlgmError("MVR pads the sampled view dynamically and needs a tokenizer with a pad token")
        model_max = getattr(tokenizer, "model_max_length", None)
        if isinstance(model_max, int) and 0 < model_max < 100_000:
            self._default_max_length = model_max
        self.sampler = SubwordSampler(tokenizer, self.config.rate, self.config.max_length)
        self._tokenizer = tokenizer

    def _seed(self, ctx: StepContext) -> int:
        gen = ctx.generator
        if gen is None:
            return self._rng.getrandbits(62)
        return int(torch.randint(0, 2**62, (1,), generator=gen, device=gen.device).item())

    def sampled_batch(
        self,
        batch: dict[str, torch.Tensor],
        rng: random.Random,
        ctx: StepContext | None = None,
        idx: list[int] | None = None,
    ) -> dict[str, torch.Tensor]:
        """The sampled view of `batch`: the rows `batch["idx"]` (or `idx`, already on the host)
        re-tokenized with sampled segmentations, padded to their longest, on the batch's device."""
        if self.sampler is None or self.rows is None:
            raise XlgmError("MVR: setup() was not called with a tokenizer and the training rows")
        if "idx" not in batch:
            raise XlgmError("MVR needs batch['idx'] (the rows of the training set) to re-segment the text")
        if idx is None:
            idx = batch["idx"].tolist()
        max_length = self.config.max_length
        if max_length is None and ctx is not None:
            max_length = ctx.extras.get("max_length")
        self.sampler.set_max_length(max_length or self._default_max_length)
        rows = [self.rows[i] for i in idx]
        encoded = self.sampler.encode([(r.text_a, r.text_b) for r in rows], rng)
        ids = batch["input_ids"]
        return self.sampler.collate(
            encoded,
            pad_id=self._tokenizer.pad_token_id,
            device=ids.device,
            token_type_ids="token_type_ids" in batch,
            padding_side=getattr(self._tokenizer, "padding_side", "right"),
        ) | {"labels": batch["labels"], "idx": batch["idx"]}

    def micro_step(self, model: torch.nn.Module, batch: dict[str, torch.Tensor], ctx: StepContext) -> dict[str, float]:
        labels = batch["labels"]
        if self.config.rate == 0:
            # The sampled view equals the deterministic one: 0.5 CE + 0.5 CE + λ·0 = CE.
            loss = cross_entropy(logits_of(model, batch), labels)
            ctx.backward(loss * ctx.loss_scale)
            value = loss.item()
            return {"loss": value, "objective": value, "mvr_ce_sampled": value, "mvr_kl": 0.0}
        if self.sampler is None:
            raise XlgmError("MVR: setup() was not called with a tokenizer and the training rows")
        if "idx" not in batch:
            raise XlgmError("MVR needs batch['idx'] (the rows of the training set) to re-segment the text")
        rng = random.Random(self._seed(ctx))
        idx = batch["idx"].tolist()
        # The deterministic forward is queued before re-tokenizing, so that on a GPU the CPU work of the
        # sampled view overlaps with it (nothing in between waits for the device).
        logits = logits_of(model, batch)
        sampled = self.sampled_batch(batch, rng, ctx, idx=idx)
        logits_sampled = logits_of(model, sampled)
        ce_det = cross_entropy(logits, labels)
        ce_sampled = cross_entropy(logits_sampled, labels)
        kl = consistency_kl(logits, logits_sampled)
        loss = 0.5 * ce_det + 0.5 * ce_sampled + self.lam * kl
        ctx.backward(loss * ctx.loss_scale)
        values = torch.stack([ce_det, loss, ce_sampled, kl]).detach().tolist()  # one device sync
        return dict(zip(("loss", "objective", "mvr_ce_sampled", "mvr_kl"), values))
