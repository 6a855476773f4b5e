"""`--executor ray`: grid points as Ray tasks on a local Ray instance; the driver alone writes the same rows."""

from __future__ import annotations

import pytest
from study_testlib import UNITS, table_rows

from xlgm.study.runner import run_study
from xlgm.study.spec import load_spec

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'xlgm[ray]')")


@pytest.fixture(scope="module")
def local_ray():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


def test_ray_executor_gives_the_local_rows(local_ray, tiny_study, tiny_spec_path, tmp_path):
    out = tmp_path / "ray"
    result = run_study(load_spec(tiny_spec_path), out, executor="ray", show_progress=False)
    assert result.units_done == result.units_total == result.units_now == UNITS
    got, want = table_rows(out / "study.sqlite"), table_rows(tiny_study / "study.sqlite")
    for table in ("runs", "checkpoints", "evaluations", "work"):
        assert got[table] == want[table], table
    assert len(got["measures"]) == len(want["measures"])
    for g, w in zip(got["measures"], want["measures"]):
        assert g[:4] == w[:4] and g[4] == pytest.approx(w[4], rel=1e-5)
    # Rerunning on Ray finds everything done and submits nothing.
    again = run_study(load_spec(tiny_spec_path), out, executor="ray", show_progress=False)
    assert again.units_now == 0 and table_rows(out / "study.sqlite") == got
