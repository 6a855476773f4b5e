"""One family of validators for every number and list a user hands in, on the command line or in a spec.

Each raises `XlgmError` with one line that names the field (a flag or a spec key, as the caller says it)
and what was expected. Config dataclasses call them in `__post_init__`, so a CLI flag and a spec key with
the same meaning are checked by the same code.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from typing_extensions import TypeIs

from xlgm.core.errors import XlgmError

T = TypeVar("T")

MIN_MAX_LENGTH = 8
# What `--device` accepts (xlgm.core.devices.resolve_device finds out whether the device is there).
DEVICE_PATTERN = re.compile(r"auto|cpu|mps|cuda(:\d+)?")
# Position-embedding tables of these model types start after the padding index (fairseq's convention):
# `max_position_embeddings` counts padding_idx + 1 slots no token can use.
PADDING_OFFSET_POSITIONS = ("roberta", "xlm-roberta", "camembert", "xlm-roberta-xl", "longformer")


def flag(name: str) -> str:
    """The command-line flag of a config field: `max_examples` -> `--max-examples`."""
    return "--" + name.replace("_", "-")


def require(ok: bool, message: str) -> None:
    if not ok:
        raise XlgmError(message)


def _is_int(value: object) -> TypeIs[int]:
    return isinstance(value, int) and not isinstance(value, bool)


def at_least(field: str, value: object, minimum: int) -> int:
    require(_is_int(value) and value >= minimum, f"{field}: expected an integer >= {minimum}, got {value!r}")
    return value  # type: ignore[return-value]


def positive_int(field: str, value: object) -> int:
    return at_least(field, value, 1)


def non_negative_int(field: str, value: object) -> int:
    return at_least(field, value, 0)


def row_limit(field: str, value: object) -> int | None:
    """A number of rows to keep: absent (all rows) or at least 1."""
    return None if value is None else positive_int(field, value)


def batch_size(field: str, value: object) -> int:
    return positive_int(field, value)


def seed(field: str, value: object) -> int:
    return non_negative_int(field, value)


def max_length(field: str, value: object, model_positions: int | None = None) -> int:
    """Tokens a row is truncated to: at least 8, at most the model's positions when known."""
    require(
        _is_int(value) and value >= MIN_MAX_LENGTH, f"{field}: expected an integer >= {MIN_MAX_LENGTH}, got {value!r}"
    )
    if model_positions is not None:
        require(
            value <= model_positions,  # type: ignore[operator]
            f"{field}: {value} is more than the model's {model_positions} positions",
        )
    return value  # type: ignore[return-value]


def model_positions(model_config: Any) -> int | None:
    """How many tokens a model can read at most, from its config; None when positions are relative (T5)."""
    positions = getattr(model_config, "max_position_embeddings", None)
    if not _is_int(positions):
        return None
    if getattr(model_config, "model_type", None) in PADDING_OFFSET_POSITIONS:
        positions -= (getattr(model_config, "pad_token_id", None) or 0) + 1
    return positions


def device(field: str, value: object) -> str:
    """`auto`, `cpu`, `cuda`, `cuda:N` or `mps` (whether that device exists is resolve_device's question)."""
    require(
        isinstance(value, str) and DEVICE_PATTERN.fullmatch(value) is not None,
        f"{field}: expected one of auto, cpu, cuda, cuda:N, mps, got {value!r}",
    )
    return value  # type: ignore[return-value]


def positive_float(field: str, value: object) -> float:
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0,
        f"{field}: expected a number > 0, got {value!r}",
    )
    return float(value)  # type: ignore[arg-type]


def non_negative_float(field: str, value: object) -> float:
    require(
        isinstance(value, (int, float)) and not isinstance(value, bool) and value >= 0,
        f"{field}: expected a number >= 0, got {value!r}",
    )
    return float(value)  # type: ignore[arg-type]


def finite_number(field: str, value: object) -> float:
    """An int or float that is not NaN or infinite (objective options: ρ, λ, η, rates)."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    require(ok, f"{field}: expected a finite number, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def non_negative_number(field: str, value: object) -> float:
    number = finite_number(field, value)
    require(number >= 0, f"{field}: expected a number >= 0, got {number:g}")
    return number


def rate(field: str, value: object) -> float:
    """A probability-like rate in [0, 1)."""
    number = finite_number(field, value)
    require(0.0 <= number < 1.0, f"{field}: expected a number in [0, 1), got {number:g}")
    return number


def count(field: str, value: object) -> int:
    """An integer >= 1 (a sub-batch size, every-k-steps); a float with an integral value counts as that
    integer."""
    if isinstance(value, float) and value.is_integer():
        value = int(value)
    return positive_int(field, value)


def optional_count(field: str, value: object) -> int | None:
    """`count`, or None (meaning 'all' or unset)."""
    return None if value is None else count(field, value)


def boolean(field: str, value: object) -> bool:
    require(isinstance(value, bool), f"{field}: expected true or false, got {value!r}")
    return value  # type: ignore[return-value]


def fraction(field: str, value: object, *, closed_right: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool)
    ok = ok and (0 <= value <= 1 if closed_right else 0 <= value < 1)  # type: ignore[operator]
    require(ok, f"{field}: expected a number in [0, 1{']' if closed_right else ')'}, got {value!r}")
    return float(value)  # type: ignore[arg-type]


def one_of(field: str, value: T, choices: Iterable[T]) -> T:
    choices = tuple(choices)
    require(value in choices, f"{field}: expected one of {', '.join(map(str, choices))}, got {value!r}")
    return value


def non_empty_list(field: str, values: Sequence[T]) -> list[T]:
    items = [v for v in values if v not in ("", None)]
    require(
        len(items) > 0 and len(items) == len(values),
        f"{field}: expected a non-empty list without blanks, got {list(values)!r}",
    )
    return list(items)


def comma_list(field: str, text: str) -> list[str]:
    """`en,de,sw` -> ['en', 'de', 'sw']; blanks (`,`, `en,,de`) are an error, not skipped."""
    return non_empty_list(field, [part.strip() for part in text.split(",")])


# The rule of every option that more than one place takes (a CLI flag, a config, a spec key), by its field
# name: written once here, so `--max-length` and a spec's `train.max_length` are checked by the same code.
FIELD_RULES: dict[str, Callable[[str, Any], Any]] = {
    "max_examples": row_limit,
    "max_train_examples": row_limit,
    "max_length": max_length,
    "batch_size": batch_size,
    "grad_accum": positive_int,
    "seed": seed,
    "epochs": positive_float,
    "lr": positive_float,
    "weight_decay": non_negative_float,
    "warmup_ratio": fraction,
    "holdout_fraction": fraction,
    "max_grad_norm": non_negative_float,  # 0 disables clipping
    "save_every": non_negative_int,  # 0: the last checkpoint only
    "patience": non_negative_int,  # 0: no early stopping
    "log_every": positive_int,
    "device": device,
}


def check_field(label: str, name: str, value: Any) -> Any:
    """`value` checked by the rule of field `name` (unchanged when the field has none); errors say `label`."""
    rule = FIELD_RULES.get(name)
    return value if rule is None else rule(label, value)
