"""The report's word on machines: in the verdict section, a warning and a table when one stage's units come from
more than one kind of machine (`xlgm.study.machines`); the settings section lists every machine."""

from __future__ import annotations

from typing import TYPE_CHECKING

from xlgm.study.analyze import StudyData
from xlgm.study.machines import mixed_machines_note, mixed_units_table

if TYPE_CHECKING:
    from xlgm.study.report.page import Page


def write_mixed_machines(page: Page, data: StudyData) -> None:
    """Nothing when each stage's units come from one kind of machine (or the machines are unknown)."""
    if data.machines.empty or (note := mixed_machines_note(data.machines)) is None:
        return
    page.warning(f"Mixed machines: {note}.")
    page.table(mixed_units_table(data.machines), "machines")
