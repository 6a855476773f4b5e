"""Distance from initialization: Σ_l ||W_l - W_l^0||_F² (Jiang et al. 2020, measure (40), "frob-distance").

For fine-tuning, the initialization is the pre-trained encoder plus the freshly initialised head, so the
distance measures how far fine-tuning moved the weights. Needs the initial weights: pass `init_state=` (a
state dict, parameter name -> tensor) to `compute_measure`, or `init_state_path` in the config (a
`.safetensors` file; nothing is unpickled). A given `init_state_path` is what the distance is measured from,
also for a run that has initial weights of its own: the option says which reference the user wants, and a
file that is not there is an error when the option is read, not silence.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch

from xlgm.core.errors import XlgmError
from xlgm.core.files import read_safetensors
from xlgm.core.options import option
from xlgm.measures.base import MeasureContext, MeasureResult, register_measure
from xlgm.measures.params import layer_of


def safetensors_file(label: str, value: object) -> str:
    """An existing .safetensors file (a pickled torch.save file is never loaded)."""
    path = Path(str(value)).expanduser()
    if path.suffix != ".safetensors":
        raise XlgmError(
            f"{label}: {path}: the initial state must be a .safetensors file (a pickled torch.save file is never "
            "loaded)"
        )
    if not path.is_file():
        raise XlgmError(f"{label}: {path}: {'a folder, not a file' if path.is_dir() else 'file not found'}")
    return str(value)


@dataclass(frozen=True)
class FrobeniusDistanceConfig:
    init_state_path: str | None = field(
        default=None,
        metadata=option(
            help="a .safetensors file of the initial weights to measure from, instead of the run's own",
            rule=safetensors_file,
        ),
    )


def load_state(path: str | Path) -> dict[str, torch.Tensor]:
    """A state dict from a .safetensors file (a damaged one is one line naming it)."""
    return read_safetensors(safetensors_file("init_state_path", path))


def _init_state(ctx: MeasureContext, config: FrobeniusDistanceConfig) -> Mapping[str, torch.Tensor]:
    state = load_state(config.init_state_path) if config.init_state_path else ctx.inputs.get("init_state")
    if state is None:
        raise XlgmError(
            "frobenius-distance needs the initial weights: measure a run or a checkpoint of one, or set "
            "init_state_path (init_state= in Python)"
        )
    if not isinstance(state, Mapping):
        raise XlgmError(f"init_state must be a mapping of parameter names to tensors, got {type(state).__name__}")
    return state


@register_measure(
    "frobenius-distance",
    reference="Jiang, Neyshabur, Mobahi, Krishnan & Bengio (2020), Fantastic Generalization Measures, ICLR; "
    "distance to initialization Σ ||W - W0||_F², measure (40); Nagarajan & Kolter (2019)",
    config_cls=FrobeniusDistanceConfig,
    inputs=("init_state",),
    expected_sign=-1,
    direction_reference="Nagarajan & Kolter 2019; Jiang et al. 2020, (40): farther from init, worse",
)
def frobenius_distance(ctx: MeasureContext, config: FrobeniusDistanceConfig) -> MeasureResult:
    """Squared distance from initialization Σ_l ||W_l - W_l^0||_F² over the selected parameters.

    value: the total; details: its square root, per-layer (module) and per-parameter sums. Exact (float64).
    """
    init = _init_state(ctx, config)
    missing = [n for n in ctx.names if n not in init]
    if missing:
        raise XlgmError(f"init_state lacks {len(missing)} selected parameter(s), e.g. {', '.join(missing[:3])}")
    per_param: dict[str, float] = {}
    for name, p in ctx.named_params:
        w0 = init[name]
        if tuple(w0.shape) != tuple(p.shape):
            raise XlgmError(f"init_state[{name!r}] has shape {tuple(w0.shape)}, the model {tuple(p.shape)}")
        diff = p.detach().double() - w0.detach().to(p.device, torch.float64)
        per_param[name] = float(diff.pow(2).sum())
    per_layer: dict[str, float] = {}
    for name, value in per_param.items():
        per_layer[layer_of(name)] = per_layer.get(layer_of(name), 0.0) + value
    total = sum(per_param.values())
    return ctx.result(total, distance=total**0.5, per_layer=per_layer, per_parameter=per_param)
