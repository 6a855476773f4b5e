"""The machine record: what it holds, and when two records count as the same kind of machine."""

from __future__ import annotations

import torch

from xlgm.core import machine


def test_record_holds_cpu_isa_threads_precision_and_versions(monkeypatch):
    monkeypatch.setattr(machine, "cpu_flags", lambda: frozenset({"fma", "avx512f", "amx_bf16", "sse2"}))
    record = machine.machine_record("cpu", "bf16")
    assert record["isa"] == ["amx_bf16", "avx512f", "fma"]
    assert record["threads"] == torch.get_num_threads()
    assert record["precision"] == "bf16"
    assert record["gpu"] is None
    assert record["cpu"]
    assert record["versions"]["torch"] == torch.__version__ == record["torch"]


def test_kind_changes_with_what_picks_kernels_and_not_with_the_cpu_name():
    base = {"cpu": "AMD EPYC", "isa": ["avx512_bf16", "avx512f"], "gpu": None, "threads": 2, "precision": "bf16"}
    base["torch"] = "2.13.0"
    assert machine.machine_kind(base) == machine.machine_kind({**base, "cpu": "Intel Xeon"})
    for change in ({"isa": ["amx_bf16", "avx512_bf16"]}, {"threads": 4}, {"precision": "no"}, {"gpu": "H100"}):
        assert machine.machine_kind(base) != machine.machine_kind({**base, **change}), change
    assert machine.machine_kind(None) == "unknown"
    assert "AMD EPYC" in machine.describe_machine(base)
