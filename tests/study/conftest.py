"""Fixtures of the study tests: the tiny study's spec and the study run to completion in this process."""

from __future__ import annotations

from pathlib import Path

import pytest
from study_testlib import UNITS, one_thread, write_spec


@pytest.fixture(scope="session")
def tiny_spec_path(tiny_bert_dir, tmp_path_factory) -> Path:
    return write_spec(tmp_path_factory.mktemp("spec"), tiny_bert_dir)


@pytest.fixture(scope="session")
def tiny_study(tiny_spec_path, tmp_path_factory) -> Path:
    """The tiny study run to completion in this process (local executor); its folder."""
    from xlgm.study.runner import run_study
    from xlgm.study.spec import load_spec

    out = tmp_path_factory.mktemp("study") / "out"
    with one_thread():
        result = run_study(load_spec(tiny_spec_path), out, show_progress=False, spec_text=tiny_spec_path.read_text())
    assert result.units_done == result.units_total == UNITS
    return out


@pytest.fixture(autouse=True, scope="module")
def _one_torch_thread():
    with one_thread():
        yield
