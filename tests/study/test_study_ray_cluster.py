"""`--executor ray` on a 2-node local cluster (`ray.cluster_utils.Cluster`, 1 CPU a node): every node is checked
to see the study folder before the first task, the rows equal the local executor's, and a node killed while its
run trains (a third node, added for it) leaves a complete study with the same rows.

Tolerance: evaluations (counts) exactly; measures to 1e-5 relative. The local study here runs on one torch thread,
as each 1-CPU Ray task does, so they agree to the last digit on one machine; a local run on more threads differs
in the last digits (about 1e-7 relative; sharpness-diff about 1e-4), from float sums in another order.

The node kill does not race Ray's timing: the first task that starts on a worker node pauses right after its run's
first checkpoint and says so in a file; the test kills that node (as kill -9 would) only then. Ray retries the task
on another node (the executor keeps Ray's default retries), and the retry resumes the run from that checkpoint.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from study_testlib import UNITS, table_rows

from xlgm.core.errors import XlgmError
from xlgm.runs import RunDir
from xlgm.study import executors
from xlgm.study.runner import run_study
from xlgm.study.spec import load_spec

ray = pytest.importorskip("ray", reason="ray is not installed (pip install 'xlgm[ray]')")
cluster_utils = pytest.importorskip("ray.cluster_utils")
pytestmark = pytest.mark.slow  # about a minute on 2 busy cores: starting two Ray nodes and their workers

# Bounds on the waits of the node-kill test (each a few seconds when nothing goes wrong): for a task to reach its
# run's first checkpoint on a worker node, and for the study to finish once that node is gone.
PAUSE_WITHIN_S = 240.0
FINISH_WITHIN_S = 240.0


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


def assert_local_rows(out: Path, local: Path) -> None:
    """The study in `out` holds the rows of the local study in `local` (see the tolerance above)."""
    got, want = table_rows(out / "study.sqlite"), table_rows(local / "study.sqlite")
    for table in ("runs", "checkpoints", "evaluations", "work"):
        assert got[table] == want[table], table
    assert [g[:4] for g in got["measures"]] == [w[:4] for w in want["measures"]]
    assert [g[4] for g in got["measures"]] == pytest.approx([w[4] for w in want["measures"]], rel=1e-5)


def test_two_nodes_give_the_local_rows(two_nodes, tiny_study, tiny_spec_path, tmp_path):
    out = tmp_path / "ray"
    result = run_study(load_spec(tiny_spec_path), out, executor="ray", cpus_per_task=1, show_progress=False)
    assert result.units_done == result.units_total == result.units_now == UNITS
    assert_local_rows(out, tiny_study)


def pausing_run_point(gate: str, head_node_id: str):
    """`executors.ray_run_point` for the node-kill test: the first task that starts on a node other than the head
    claims `gate/claimed`, trains its run to the first checkpoint, writes `gate/paused` (node id, run id) and
    sleeps until its node is killed; every other task, the retry included, runs as it would."""
    original = executors.ray_run_point

    def run_point(task):  # runs in a Ray worker; a nested function, so Ray ships it by value
        import os

        import ray as worker_ray

        from xlgm.recipes import train as train_recipe

        node_id = worker_ray.get_runtime_context().get_node_id()
        if node_id != head_node_id:
            try:
                (Path(gate) / "claimed").open("x").close()
            except FileExistsError:
                return original(task)
            save = train_recipe.CheckpointSaver.save

            def save_then_pause(saver, step: int) -> None:
                save(saver, step)
                paused = Path(gate) / "paused"
                paused.with_suffix(".tmp").write_text(json.dumps({"node": node_id, "run_id": task.config.run_id}))
                os.replace(paused.with_suffix(".tmp"), paused)
                time.sleep(PAUSE_WITHIN_S + FINISH_WITHIN_S)  # the test kills this node long before
                raise RuntimeError("the paused task's node was not killed")

            train_recipe.CheckpointSaver.save = save_then_pause  # this worker process dies with its node
        return original(task)

    return run_point


def wait_for_file(path: Path, within_s: float, study: threading.Thread, outcome: dict) -> str:
    deadline = time.monotonic() + within_s
    while not path.exists():
        assert study.is_alive(), f"the study ended before any task paused on a worker node: {outcome}"
        assert time.monotonic() < deadline, f"no task paused at its first checkpoint within {within_s:.0f} s"
        time.sleep(0.2)
    return path.read_text()


def test_a_node_killed_mid_run_leaves_a_complete_study(two_nodes, tiny_study, tiny_spec_path, tmp_path, monkeypatch):
    two_nodes.add_node(num_cpus=1)  # the two tasks go to 2 of 3 nodes; 2 stay alive for the other tests
    two_nodes.wait_for_nodes()
    gate = tmp_path / "gate"
    gate.mkdir()
    monkeypatch.setattr(executors, "ray_run_point", pausing_run_point(str(gate), two_nodes.head_node.node_id))
    out, outcome = tmp_path / "ray", {}

    def run() -> None:
        try:
            outcome["result"] = run_study(
                load_spec(tiny_spec_path), out, executor="ray", cpus_per_task=1, show_progress=False
            )
        except BaseException as err:  # noqa: BLE001 - handed to the test's thread below
            outcome["error"] = err

    study = threading.Thread(target=run, daemon=True)
    study.start()
    paused = json.loads(wait_for_file(gate / "paused", PAUSE_WITHIN_S, study, outcome))
    victim = next(n for n in two_nodes.worker_nodes if n.node_id == paused["node"])
    two_nodes.remove_node(victim, allow_graceful=False)  # every process of the node killed, as by kill -9
    study.join(FINISH_WITHIN_S)
    assert not study.is_alive(), f"the study did not finish within {FINISH_WITHIN_S:.0f} s of the node's death"
    if "error" in outcome:
        raise outcome["error"]

    result = outcome["result"]
    assert result.units_done == result.units_total == result.units_now == UNITS
    assert not victim.any_processes_alive()  # (Ray's node table may still list it: it learns of deaths late)
    run_dir = next(p for p in (out / "runs").iterdir() if RunDir(p).config["run_id"] == paused["run_id"])
    sessions = RunDir(run_dir).state["machines"]  # trained to step 2 on the killed node, resumed from there
    assert [s["from_step"] for s in sessions] == [0, 2]
    assert_local_rows(out, tiny_study)
