"""The study's progress bar and its estimate of the time left.

The bar counts units. Its total is known before the first unit: the checkpoints of a run not yet trained are
expected from the spec (`units.expected_checkpoints`), so the bar only moves forward. The time left is estimated
per kind of unit (`WorkClock`): a training costs a hundred evaluations, so tqdm's own ETA would mislead.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from tqdm.auto import tqdm

from xlgm.study.db import StudyDB
from xlgm.study.spec import StudySpec
from xlgm.study.units import planned_units


def unit_cost_key(unit_id: str, objectives: dict[str, str]) -> tuple[str, str]:
    """What a unit's cost is estimated from: trainings of the same objective, evaluations, the same measure."""
    kind, _, rest = unit_id.partition("/")
    if kind == "train":
        return kind, objectives.get(rest, "")
    if kind in ("measure", "group"):
        return kind, unit_id.split("/")[-2 if kind == "measure" else -1]
    return kind, ""


def unit_cost_keys(unit_id: str, objectives: dict[str, str]) -> list[tuple[str, str]]:
    """The keys a unit's cost is estimated from, the closest first: for a measure, the same setting (its name and
    config hash: a sweep's settings may see 16 rows or 256), then `unit_cost_key`, then the unit's kind."""
    key = unit_cost_key(unit_id, objectives)
    setting = [(key[0], "/".join(unit_id.split("/")[-2:]))] if key[0] == "measure" else []
    return [*setting, key, (key[0], "*")]


class WorkClock:
    """The time the study's unfinished units will take, from the seconds its finished units took: each unit costs
    the mean of finished units of its closest key with any (`unit_cost_keys`); a kind none of whose units has
    finished is unknown (the estimate is then a lower bound)."""

    def __init__(self, objectives: dict[str, str], finished: dict[str, float]):
        self.objectives = objectives
        self.sums: dict[tuple[str, str], list[float]] = {}
        for unit_id, seconds in finished.items():
            self.add(unit_id, seconds)

    def add(self, unit_id: str, seconds: float | None) -> None:
        if seconds is None:
            return
        for k in unit_cost_keys(unit_id, self.objectives):
            total = self.sums.setdefault(k, [0.0, 0])
            total[0] += seconds
            total[1] += 1

    def remaining(self, units: Sequence[str]) -> tuple[float, bool]:
        """(seconds, complete): the estimate and whether every unit's kind has a finished unit to go by."""
        seconds, complete = 0.0, True
        for unit_id in units:
            total = next((t for k in unit_cost_keys(unit_id, self.objectives) if (t := self.sums.get(k))), None)
            if total is None:
                complete = False
                continue
            seconds += total[0] / total[1]
        return seconds, complete


def eta_text(seconds: float, complete: bool) -> str:
    minutes = int(round(seconds / 60))
    text = f"{minutes // 60}h{minutes % 60:02d}m" if minutes >= 60 else f"{minutes}m"
    return f"eta {'' if complete else '>'}{text}"


class StudyProgress:
    """The study's bar over units. Its total is known before the first unit: the checkpoints of a run not yet
    trained are expected from the spec (`expected_checkpoints`). Should a training save other checkpoints than
    expected, the total follows the real ones (and at the end the bar closes at the real total)."""

    def __init__(self, spec: StudySpec, db: StudyDB, plans: dict[str, list[str]], done: set[str], show: bool):
        self.spec, self.db, self.done, self.plans = spec, db, set(done), plans
        units = [u for us in plans.values() for u in us]
        self.total = self.planned = len(units)
        self.totals = [self.total]  # every total the bar showed, in order
        # tqdm's own ETA assumes every unit costs the same; a training costs a hundred evaluations
        self.bar = tqdm(
            total=self.total,
            initial=sum(u in self.done for u in units),
            desc=f"study {spec.name}",
            unit="unit",
            disable=not show,
            position=0,
            dynamic_ncols=True,
            bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]",
        )
        self.now = 0
        self.clock = WorkClock(
            {c.run_id: c.objective for c in spec.run_configs()},
            dict(db.query("SELECT unit_id, seconds FROM work WHERE seconds IS NOT NULL")),
        )
        self._show_eta()

    def _show_eta(self) -> None:
        todo = [u for us in self.plans.values() for u in us if u not in self.done]
        self.bar.set_postfix_str(eta_text(*self.clock.remaining(todo)), refresh=False)

    def _set_total(self, total: int) -> None:
        self.total = total
        self.totals.append(total)
        self.bar.total = total
        self.bar.refresh()

    def commit(self, unit: dict[str, Any]) -> None:
        self.db.commit_unit(unit)
        self.done.add(unit["unit_id"])
        self.now += 1
        if unit["kind"] == "train":
            units = planned_units(self.spec, unit["run_id"], unit["checkpoints"])
            if len(units) != len(self.plans[unit["run_id"]]):  # the training saved other checkpoints than expected
                self._set_total(self.total + len(units) - len(self.plans[unit["run_id"]]))
            self.plans[unit["run_id"]] = units
        self.clock.add(unit["unit_id"], unit.get("seconds"))
        self._show_eta()
        self.bar.update(1)

    def close(self) -> tuple[int, int]:
        units = [u for us in self.plans.values() for u in us]
        finished = sum(u in self.done for u in units)
        if finished == len(units) and self.total != finished:
            self._set_total(finished)
        self.bar.close()
        return finished, len(units)
