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


def test_combined_record_is_the_last_session_of_one_kind_else_mixed():
    amd = {"cpu": "AMD EPYC", "isa": ["avx512_bf16"], "gpu": None, "threads": 2, "precision": "bf16", "torch": "2"}
    amd_again = {**amd, "versions": {"xlgm": "later"}}
    intel = {**amd, "cpu": "Intel Xeon", "isa": ["amx_bf16", "avx512_bf16"]}
    assert machine.combined_record([]) is None
    assert machine.combined_record([amd, amd_again]) == amd_again
    mixed = machine.combined_record([amd, intel, amd_again])
    assert mixed == {"mixed": [amd, intel]}
    assert machine.machine_kind(mixed) == f"mixed: {machine.machine_kind(amd)} | {machine.machine_kind(intel)}"
    assert "AMD EPYC" in machine.describe_machine(mixed) and "Intel Xeon" in machine.describe_machine(mixed)
    assert machine.combined_record([None, amd]) == amd  # a session before machines were recorded: not another kind
    assert machine.combined_record([None]) is None
