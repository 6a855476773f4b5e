"""A new objective or measure is one module: the registries import every module of their package, and what a
module registers (`@register_objective`, `@register_measure`) is there. Shown on a made-up package written here,
with an objective class and a measure."""

from __future__ import annotations

import importlib
import sys
import textwrap

from xlgm.core.modules import import_submodules
from xlgm.measures.base import _REGISTRY, get_measure
from xlgm.objectives import OBJECTIVES, build_objective

OBJECTIVE = """
from dataclasses import dataclass

from xlgm.objectives.adamw import AdamWObjective  # imported, not defined here: registered once, by adamw.py
from xlgm.objectives.registry import register_objective


@dataclass(frozen=True)
class NoisyConfig:
    scale: float = 0.1


@register_objective
class NoisyObjective:
    name = "noisy"
    config_class = NoisyConfig
    reference = "made up for a test"
    summary = "cross-entropy"
    loop_facts = ()

    def __init__(self, config):
        self.config = config

    def micro_step(self, model, batch, ctx):
        return {}
"""

MEASURE = """
from dataclasses import dataclass

from xlgm.measures.base import MeasureResult, register_measure


@dataclass(frozen=True)
class Config:
    pass


@register_measure("made-up-parameter-count", reference="a test", config_cls=Config, expected_sign=None)
def parameter_count(ctx, config):
    return MeasureResult("made-up-parameter-count", float(sum(p.numel() for p in ctx.params)))
"""


def test_a_module_is_all_a_new_objective_or_measure_needs(tmp_path, monkeypatch):
    package = tmp_path / "plugins_pkg"
    (package / "inner").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "inner" / "__init__.py").write_text("")
    (package / "noisy.py").write_text(textwrap.dedent(OBJECTIVE))
    (package / "inner" / "count.py").write_text(textwrap.dedent(MEASURE))
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        modules = import_submodules(importlib.import_module("plugins_pkg"))
        assert [m.__name__ for m in modules] == ["plugins_pkg.inner", "plugins_pkg.inner.count", "plugins_pkg.noisy"]
        assert list(OBJECTIVES)[-1] == "noisy" and OBJECTIVES["noisy"].factory.__name__ == "NoisyObjective"
        assert build_objective("noisy", scale=0.2).config.scale == 0.2
        assert get_measure("made-up-parameter-count").expected_sign is None
    finally:
        _REGISTRY.pop("made-up-parameter-count", None)
        OBJECTIVES.pop("noisy", None)
        for name in [m for m in sys.modules if m.startswith("plugins_pkg")]:
            del sys.modules[name]
