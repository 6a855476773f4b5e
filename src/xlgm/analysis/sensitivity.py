"""How a measure's verdict depends on its settings: the data it sees and its options (a study spec's sweeps).

`sensitivity_table` gives one row per (measure setting, verdict target): the setting (the measure, the rows it
saw, each swept option), the verdict's tau with its run-level CI, Holm p and verdict at that setting
(`xlgm.analysis.verdict`, where every setting is a measure of its own), and how much the measure moves for
reasons other than the runs, at that setting:

    draw_spread   the median over units of the measure's own spread over its random draws (NaN: it draws none)
    seed_spread   the mean over configurations (those with 2 runs or more) of the sd of its run values across
                  the configuration's seeds
    spread, mean  the sd and the mean of its run values over all runs
    draw_share, seed_share   draw_spread / spread and seed_spread / spread: how much of the spread the verdict
                  correlates is noise of the draws, or of the seed
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from xlgm.analysis.frame import CONFIGURATION

SETTING, ROWS = "setting", "rows"
VERDICT_PART = ["target", "tau", "ci_low", "ci_high", "p_holm", "verdict", "n_runs"]
SPREAD_COLUMNS = ["mean", "spread", "seed_spread", "draw_spread", "seed_share", "draw_share"]


def spreads(runs: pd.DataFrame, settings: list[str], draws: pd.DataFrame) -> pd.DataFrame:
    """Per setting (a measure column of `runs`, one row per run with its `configuration`): `SPREAD_COLUMNS`.
    `draws` holds each unit's stored spread over draws: columns `setting`, `spread`."""
    out = []
    for setting in settings:
        values = pd.to_numeric(runs[setting], errors="coerce")
        finite = runs.assign(value=values)[np.isfinite(values)]
        by_config = finite.groupby(CONFIGURATION)["value"]
        seed_sd = by_config.std(ddof=1)[by_config.size() >= 2]
        spread = float(finite["value"].std(ddof=1)) if len(finite) >= 2 else np.nan
        draw = pd.to_numeric(draws.loc[draws[SETTING] == setting, "spread"], errors="coerce").dropna()
        draw_spread = float(draw.median()) if len(draw) else np.nan
        seed_spread = float(seed_sd.mean()) if len(seed_sd) else np.nan
        scale = spread if spread and np.isfinite(spread) else np.nan
        out.append(
            {
                SETTING: setting,
                "mean": float(finite["value"].mean()) if len(finite) else np.nan,
                "spread": spread,
                "seed_spread": seed_spread,
                "draw_spread": draw_spread,
                "seed_share": seed_spread / scale,
                "draw_share": draw_spread / scale,
            }
        )
    return pd.DataFrame(out, columns=[SETTING, *SPREAD_COLUMNS])


def sensitivity_table(
    verdict: pd.DataFrame, settings: pd.DataFrame, runs: pd.DataFrame, draws: pd.DataFrame
) -> pd.DataFrame:
    """One row per (setting, verdict target), in the order of `settings` and of the verdict's targets.

    Args:
        verdict: `xlgm.analysis.verdict.verdict_table`, whose `measure` is the setting's name.
        settings: one row per setting: `setting` (its name in the analysis), `measure`, `rows` (the data size,
            NaN for all rows) and a column per swept option (NaN where the option is the measure's default).
        runs: one row per run: `configuration` and each setting's value (the analysis' run-level frame).
        draws: the stored spread over draws of each (unit, setting): columns `setting`, `spread`.
    """
    names = list(settings[SETTING])
    table = settings.merge(
        verdict[["measure", *VERDICT_PART]].rename(columns={"measure": SETTING}), on=SETTING, how="inner"
    )
    table = table.merge(spreads(runs, names, draws), on=SETTING, how="left")
    order = {name: i for i, name in enumerate(names)}
    targets = {t: i for i, t in enumerate(dict.fromkeys(verdict["target"]))}
    table = table.sort_values(
        [SETTING, "target"], key=lambda c: c.map(order) if c.name == SETTING else c.map(targets), kind="stable"
    )
    return table.reset_index(drop=True)


STABILITY_COLUMNS = ["measure", "target", "settings", "verdicts", "holds", "tau_min", "tau_max", "at_min", "at_max"]


def stability_table(table: pd.DataFrame) -> pd.DataFrame:
    """Whether each answer of a swept measure holds at every setting: one row per (measure, target) of the
    measures with two settings or more. `verdicts` counts the settings of each verdict ("agrees 3,
    inconclusive 1"); `holds` is "holds" when every setting has the same verdict, else "flips"; `tau_min` and
    `tau_max` are its range over the settings, `at_min` and `at_max` the settings where it takes them."""
    rows = []
    for (measure, target), part in table.groupby(["measure", "target"], sort=False):
        if part[SETTING].nunique() < 2:
            continue
        counts = part["verdict"].astype(str).value_counts()
        tau = pd.to_numeric(part["tau"], errors="coerce")
        finite = tau[np.isfinite(tau)]
        rows.append(
            {
                "measure": measure,
                "target": target,
                "settings": int(part[SETTING].nunique()),
                "verdicts": ", ".join(f"{v} {n}" for v, n in counts.items()),
                "holds": "holds" if len(counts) == 1 else "flips",
                "tau_min": float(finite.min()) if len(finite) else np.nan,
                "tau_max": float(finite.max()) if len(finite) else np.nan,
                "at_min": part.loc[finite.idxmin(), SETTING] if len(finite) else None,
                "at_max": part.loc[finite.idxmax(), SETTING] if len(finite) else None,
            }
        )
    return pd.DataFrame(rows, columns=STABILITY_COLUMNS)


def option_columns(table: pd.DataFrame) -> list[str]:
    """The swept options' columns of a sensitivity table: those between `rows` and `target`."""
    columns = list(table.columns)
    return columns[columns.index(ROWS) + 1 : columns.index("target")]
