"""Helpers of the report tests: synthetic OUT/analysis files that follow /verdict_schema (verdict.csv, health.csv,
settings.json) for the tiny study's measures, and a stdlib parser of the HTML report's tables."""

from __future__ import annotations

import json
from html.parser import HTMLParser
from pathlib import Path

import pandas as pd

from xlgm.analysis.health import HEALTH_COLUMNS
from xlgm.analysis.verdict import VERDICT_COLUMNS

# margin does not predict transfer beyond the fit and tracks the fit (its accuracy and source rows agree, between
# configurations only); frobenius-distance is excluded (constant)
_MARGIN = {"measure": "margin", "n_runs": 2, "n_checkpoints": 4, "n_configurations": 2, "expected_sign": 1}
_MARGIN.update(
    reference="Bassi et al. 2024", health="healthy", finding="tracks fit; does not predict transfer beyond fit"
)
_FROBENIUS = {"measure": "frobenius-distance", "n_runs": 2, "n_checkpoints": 4, "expected_sign": -1}
_FROBENIUS.update(reference="Jiang et al. 2020", verdict="excluded", finding="excluded")
_FROBENIUS.update(health="constant across units", reason="constant across units")
_DECIDED = {"decided": True, "verdict": "agrees", "level": "between configurations only", "tau_within": 0.1}
VERDICT_ROWS = [
    {**_MARGIN, "target": "transfer_residual", "tau": -0.2, "ci_low": -0.61, "ci_high": 0.33, "p_raw": 0.41}
    | {"p_holm": 1.0, "p_bh": 0.55, "decided": False, "verdict": "inconclusive", "reason": "CI spans 0"},
    {**_MARGIN, "target": "mean_accuracy", "tau": 0.583, "ci_low": 0.14, "ci_high": 0.9, "p_raw": 0.0021}
    | {"p_holm": 0.0094, "p_bh": 0.0047, "psi": 0.5, "cmi_k": 0.173, **_DECIDED},
    {**_MARGIN, "target": "source_accuracy", "tau": 0.61, "ci_low": 0.2, "ci_high": 0.9, "p_raw": 0.002}
    | {"p_holm": 0.0094, "p_bh": 0.0047, **_DECIDED},
    *({**_FROBENIUS, "target": t} for t in ("transfer_residual", "mean_accuracy", "source_accuracy")),
]
HEALTH_ROWS = [
    ["margin", 4, 4, 0, 0, False, True, ""],
    ["frobenius-distance", 4, 4, 0, 0, True, False, "constant across units"],
]
SETTINGS = {
    "spec": {"name": "tiny", "task": "xnli", "measures": {"names": ["margin", "frobenius-distance"]}},
    "measures": {"margin": {}, "frobenius-distance": {"per_layer": False}},
    "data_sizes": {"train_rows": 29, "eval_rows": {"en": 8, "de": 8}, "measure_examples": 16},
    "versions": {"torch": "2.13.0", "transformers": "5.24.0"},
    "wall_time": {"training_seconds": 0.4, "evaluation_seconds": 0.1, "measure_seconds": 0.05},
}


def write_analysis(folder: Path, verdict_rows=VERDICT_ROWS, health_rows=HEALTH_ROWS, settings=SETTINGS) -> Path:
    """OUT/analysis/{verdict.csv, health.csv, settings.json} under `folder`; returns `folder`."""
    analysis = folder / "analysis"
    analysis.mkdir(parents=True, exist_ok=True)
    if verdict_rows is not None:
        pd.DataFrame(verdict_rows).reindex(columns=VERDICT_COLUMNS).to_csv(analysis / "verdict.csv", index=False)
    if health_rows is not None:
        pd.DataFrame(health_rows, columns=HEALTH_COLUMNS).to_csv(analysis / "health.csv", index=False)
    if settings is not None:
        (analysis / "settings.json").write_text(json.dumps(settings, indent=1))
    return folder


class TableParser(HTMLParser):
    """Every <table> of a page as [(class, [[(tag, text), ...] per row])], and every <h2> in order."""

    def __init__(self) -> None:
        super().__init__()
        self.tables: list[tuple[str, list[list[tuple[str, str]]]]] = []
        self.headings: list[str] = []
        self.order: list[str] = []  # "h2:<text>" and "table:<class>" in document order
        self._cell: list[str] | None = None
        self._tag = ""
        self._in_h2: list[str] | None = None
        self._text_row = False

    def handle_starttag(self, tag, attrs):
        if tag == "table":
            self.tables.append((dict(attrs).get("class", ""), []))
            self.order.append(f"table:{dict(attrs).get('class', '')}")
        elif tag == "tr" and self.tables:
            self.tables[-1][1].append([])
            self._text_row = dict(attrs).get("class") == "text"
        elif tag in ("td", "th"):
            # a cell of a row of text columns (the verdict's reference, health, reason) is tagged "td.text"
            self._cell, self._tag = [], f"{tag}.text" if self._text_row else tag
        elif tag == "h2":
            self._in_h2 = []

    def handle_endtag(self, tag):
        if tag in ("td", "th") and self._cell is not None:
            self.tables[-1][1][-1].append((self._tag, "".join(self._cell).strip()))
            self._cell = None
        elif tag == "h2" and self._in_h2 is not None:
            text = "".join(self._in_h2).strip()
            self.headings.append(text)
            self.order.append(f"h2:{text}")
            self._in_h2 = None

    def handle_data(self, data):
        if self._cell is not None:
            self._cell.append(data)
        if self._in_h2 is not None:
            self._in_h2.append(data)


def parse_tables(page: str) -> TableParser:
    parser = TableParser()
    parser.feed(page)
    return parser


def table_dicts(rows: list[list[tuple[str, str]]]) -> list[dict[str, str]]:
    """A parsed table with one header row as dicts keyed by the header; a row of text columns under a row
    (`name: text · name: text`) adds its columns to that row's dict."""
    header = [text for _, text in rows[0]]
    out: list[dict[str, str]] = []
    for row in rows[1:]:
        if len(row) == 1 and row[0][0] == "td.text":
            out[-1].update(part.split(": ", 1) for part in row[0][1].split(" · "))
        else:
            out.append(dict(zip(header, (text for _, text in row))))
    return out
