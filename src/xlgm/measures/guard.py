"""The shared guard every measure runs in: the model comes back exactly as it went in.

Measures perturb weights, switch modes and flip `requires_grad`; a measure that forgets to undo one of these
silently corrupts the model for whatever runs next (the next measure, an evaluation). So this is written once:

    with preserved(model, seed) as generator:
        ...  # eval mode; perturb freely; raise freely

On entry: every submodule's `training` flag, every parameter's data (values *and* the tensor object, in
case a measure rebinds `p.data`), `requires_grad` and `.grad`, and every buffer are recorded; the model is put
in eval mode; gradients are enabled (a caller inside `torch.no_grad()` would otherwise break gradient-based
measures). On exit, normal or by exception, all of it is restored bitwise.

Randomness: the measure gets its own `torch.Generator`, seeded from `seed`, on the model's device. The global
RNG (CPU and CUDA) is forked: it is seeded from `seed` too, so that anything drawing from it inside (dropout
in the `paper` mode of sharpness-diff) is deterministic, and the caller's RNG state is restored on exit.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn


def model_device(model: nn.Module) -> torch.device:
    for p in model.parameters():
        return p.device
    for b in model.buffers():
        return b.device
    return torch.device("cpu")


class _Snapshot:
    """Everything the guard restores."""

    def __init__(self, model: nn.Module):
        self.modes = [(m, m.training) for m in model.modules()]
        self.params = list(model.parameters())
        self.param_data = [p.data for p in self.params]
        self.param_values = [p.detach().clone() for p in self.params]
        self.requires_grad = [p.requires_grad for p in self.params]
        self.grads = [p.grad for p in self.params]
        # Buffers by owner, so a rebound buffer attribute (module.buf = new tensor) is put back too.
        self.buffers = [
            (module, key, buf, buf.detach().clone())
            for module in model.modules()
            for key, buf in module._buffers.items()
            if buf is not None
        ]

    @torch.no_grad()
    def restore(self) -> None:
        for p, data, value, flag, grad in zip(
            self.params, self.param_data, self.param_values, self.requires_grad, self.grads
        ):
            if p.data is not data:
                p.data = data
            data.copy_(value)
            p.requires_grad_(flag)
            p.grad = grad
        for module, key, buf, value in self.buffers:
            if module._buffers.get(key) is not buf:
                module._buffers[key] = buf
            buf.copy_(value)
        for module, flag in self.modes:
            module.training = flag


def _cuda_devices() -> list[int]:
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        return list(range(torch.cuda.device_count()))
    return []


@contextlib.contextmanager
def preserved(model: nn.Module, seed: int = 0) -> Iterator[torch.Generator]:
    """Run a measure on `model`: eval mode inside, everything restored on exit; yields a seeded generator."""
    snapshot = _Snapshot(model)
    device = model_device(model)
    try:
        with torch.random.fork_rng(devices=_cuda_devices()):
            torch.manual_seed(seed)
            generator = torch.Generator(device=device)
            generator.manual_seed(seed)
            model.eval()
            with torch.enable_grad():
                yield generator
    finally:
        snapshot.restore()
