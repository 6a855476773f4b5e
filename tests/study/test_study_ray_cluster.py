"""`--executor ray` on a 2-node local cluster (`ray.cluster_utils.Cluster`, 1 CPU a node): every node is checked
to see the study folder before the first task, and the rows equal the local executor's.

Tolerance: evaluations (counts) exactly; measures to 1e-5 relative. The local study here runs on one torch thread,
as each 1-CPU Ray task does, so they agree to the last digit on one machine; a local run on more threads differs
in the last digits (about 1e-7 relative; sharpness-diff about 1e-4), from float sums in another order.

A node killed mid-run is a manual check (it takes minutes and depends on Ray's timing): see README, "Studies on
a cluster".
"""

from __future__ import annotations

import pytest
from study_testlib import UNITS, table_rows

from xlgm.core.errors import XlgmError
from xlgm.study import executors
from xlgm.study.runner import run_study
from xlgm.study.spec import load_spec

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'xlgm[ray]')")
cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = pytest.mark.slow  # about a minute on 2 busy cores: starting two Ray nodes and their workers


@pytest.fixture(scope="module")
def two_nodes():
    cluster = cluster_utils.Cluster(initialize_head=True, head_node_args={"num_cpus": 1})
    cluster.add_node(num_cpus=1)
    ray.init(address=cluster.address, log_to_driver=False)
    cluster.wait_for_nodes()
    yield cluster
    ray.shutdown()
    cluster.shutdown()


def test_every_node_is_checked_and_a_blind_one_named(two_nodes, tmp_path, monkeypatch):
    assert len([n for n in ray.nodes() if n["Alive"]]) == 2
    executors.check_nodes_see(ray, tmp_path / "study")  # both nodes read and write it
    assert list((tmp_path / "study").iterdir()) == []  # the markers are gone
    problems = executors.node_problems(ray, tmp_path, "no-such-marker")
    assert len(problems) == 2 and all("FileNotFoundError" in p for p in problems.values())
    monkeypatch.setattr(executors, "node_problems", lambda ray, out, marker: dict(list(problems.items())[1:]))
    with pytest.raises(XlgmError) as err:
        executors.check_nodes_see(ray, tmp_path / "study")
    blind = next(iter(problems))
    message = str(err.value)
    assert "\n" not in message and "1 Ray node(s) do not see the study folder" in message
    assert blind not in message and list(problems)[1] in message


def test_two_nodes_give_the_local_rows(two_nodes, tiny_study, tiny_spec_path, tmp_path):
    out = tmp_path / "ray"
    result = run_study(load_spec(tiny_spec_path), out, executor="ray", cpus_per_task=1, show_progress=False)
    assert result.units_done == result.units_total == result.units_now == UNITS
    got, want = table_rows(out / "study.sqlite"), table_rows(tiny_study / "study.sqlite")
    for table in ("runs", "checkpoints", "evaluations", "work"):
        assert got[table] == want[table], table
    assert [g[:4] for g in got["measures"]] == [w[:4] for w in want["measures"]]
    assert [g[4] for g in got["measures"]] == pytest.approx([w[4] for w in want["measures"]], rel=1e-5)
