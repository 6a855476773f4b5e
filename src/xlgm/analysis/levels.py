"""At which level of the study's design does a correlation hold: between seeds of one configuration, or only
between configurations?

A study's runs come in configurations (the runs that share every setting but the seed). A correlation over all
runs mixes two sources: differences between configurations (SAM at rho 0.1 fits worse than AdamW, and is
sharper) and differences between seeds of one configuration. The run-level permutation test
(`xlgm.analysis.permutation`) treats the R runs as exchangeable; these tests separate the two levels.

Within configurations. The statistic is Kendall's tau-b over the pairs of rows in one stratum: the same
configuration and the same position (training step; one position for a measure taken once a run), from
different runs, i.e. seeds of the same hyperparameters compared at the same step:

    tau_w = sum_{pairs} sign(x_i - x_j) sign(y_i - y_j) / sqrt(N_x N_y)

N_x (N_y) counting the pairs not tied in x (y). H0: within each configuration the runs are exchangeable (a
run's measure trajectory is independent of its target trajectory given the configuration). The permutations
move runs only among the runs of their own configuration (all prod_c g_c! of them when that is <= n_perm,
exact; (3!)^5 = 7776 for 5 configurations of 3 seeds; else n_perm random ones, p = (1 + hits) / (1 + n_perm)).
Differences between configurations are kept intact by every permutation, so they cannot make this test
significant. With one run a configuration there is no pair and no test.

Between configurations. Each configuration's mean measure and mean target (over its rows where both are finite)
and Kendall's tau over the C configurations, with the exact permutation p of the C means (C! = 120 for 5; random
permutations beyond 8 configurations). The smallest attainable p is 2/C! for a perfect ranking (the reverse
ranking is as extreme): 0.017 for 5 configurations.

Two-level bootstrap. A resample draws C configurations with replacement, then, within each drawn configuration,
its g_c runs with replacement (Davison & Hinkley 1997, §3.8, for two-stage sampling); a run's checkpoints move
with it. The percentile interval of tau over those resamples reflects that the runs of one configuration are
not independent draws, where the run-level bootstrap treats the R runs as such.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np
import pandas as pd
from scipy import stats

from xlgm.analysis.correlation import MIN_ROWS, bootstrap_statistics, percentile_interval
from xlgm.analysis.frame import CONFIGURATION, AnalysisInputError, RunReduce, Unit, require_columns
from xlgm.analysis.permutation import layout, run_permutations, run_positions
from xlgm.analysis.report_table import prepare_frame

LEVEL_COLUMNS = [
    "tau_within",
    "p_within",
    "n_pairs_within",
    "within_permutations",
    "within_exact",
    "tau_between",
    "p_between",
    "n_configurations",
    "between_permutations",
    "tau_lo_2level",
    "tau_hi_2level",
    "level_note",
]


@dataclass(frozen=True)
class LevelResult:
    """The within-configuration test, the between-configuration test and the two-level interval of one pair."""

    tau_within: float
    p_within: float
    n_pairs_within: int
    within_permutations: int
    within_exact: bool
    tau_between: float
    p_between: float
    n_configurations: int
    between_permutations: int
    tau_lo_2level: float
    tau_hi_2level: float
    level_note: str = ""

    def as_dict(self) -> dict:
        return asdict(self)


def _groups(run_config: np.ndarray) -> list[np.ndarray]:
    return [np.flatnonzero(run_config == c) for c in np.unique(run_config)]


def within_permutations(run_config: np.ndarray, n_perm: int, seed: int | None) -> tuple[np.ndarray, bool]:
    """(B, R) permutations of R runs that move runs only within their configuration (identity first), and
    whether they are all of them."""
    groups = _groups(run_config)
    n_runs = run_config.size
    total = math.prod(math.factorial(g.size) for g in groups)
    if total <= max(n_perm, 1):
        perms = np.tile(np.arange(n_runs, dtype=np.intp), (total, 1))
        for row, choice in enumerate(itertools.product(*(itertools.permutations(g) for g in groups))):
            for g, order in zip(groups, choice):
                perms[row, g] = order
        return perms, True
    rng = np.random.default_rng(seed)
    perms = np.tile(np.arange(n_runs, dtype=np.intp), (n_perm + 1, 1))
    for g in groups:
        perms[1:, g] = rng.permuted(np.tile(g, (n_perm, 1)), axis=1)
    return perms, False


def _p_value(values: np.ndarray, exact: bool) -> float:
    observed = abs(values[0])
    if not math.isfinite(observed):
        return math.nan
    finite = values[np.isfinite(values)]
    pool = finite if exact else finite[1:]
    hits = int(np.sum(np.abs(pool) >= observed * (1 - 1e-12) - 1e-14))
    return hits / pool.size if exact else (1 + hits) / (1 + pool.size)


def stratified_tau(x_perm: np.ndarray, y: np.ndarray, first: np.ndarray, second: np.ndarray) -> np.ndarray:
    """Kendall tau-b over the given pairs (first[p], second[p]) for every row of x_perm (B, N); NaN cells are
    left out of a pair's count."""
    with np.errstate(invalid="ignore"):
        sx = np.sign(x_perm[:, first] - x_perm[:, second])
    valid = np.isfinite(sx)
    sx = np.where(valid, sx, 0.0)
    sy = np.sign(y[first] - y[second])
    num = sx @ sy
    den_x = np.abs(sx).sum(axis=1)
    den_y = valid.astype(float) @ np.abs(sy)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.clip(num / np.sqrt(den_x * den_y), -1.0, 1.0)


def _within(x, y, grid, run_config, n_perm, seed) -> tuple[float, float, int, int, bool]:
    stratum = pd.factorize(pd.Series(list(zip(run_config[grid.run], grid.position))))[0]
    first, second = (a.ravel() for a in np.triu_indices(x.size, 1))
    same = stratum[first] == stratum[second]
    first, second = first[same], second[same]
    if first.size == 0:
        return math.nan, math.nan, 0, 0, False
    gx = grid.grid(x)
    perms, exact = within_permutations(run_config, n_perm, seed)
    values = stratified_tau(gx[perms[:, grid.run], grid.position], y, first, second)
    return float(values[0]), _p_value(values, exact), int(first.size), len(perms), exact


def _between(x, y, config_of_row, n_perm, seed) -> tuple[float, float, int, int]:
    means = pd.DataFrame({"x": x, "y": y, "c": config_of_row}).groupby("c")[["x", "y"]].mean()
    c = len(means)
    mx, my = means["x"].to_numpy(), means["y"].to_numpy()
    if c < MIN_ROWS or np.all(mx == mx[0]) or np.all(my == my[0]):
        return math.nan, math.nan, c, 0
    perms, exact = run_permutations(c, n_perm, seed)
    sx = np.sign(mx[:, None] - mx[None, :])
    sy = np.sign(my[:, None] - my[None, :])
    num = np.einsum("bij,ij->b", sx[perms[:, :, None], perms[:, None, :]], sy)
    values = np.clip(num / math.sqrt(np.abs(sx).sum() * np.abs(sy).sum()), -1.0, 1.0)
    return float(stats.kendalltau(mx, my).statistic), _p_value(values, exact), c, len(perms)


def two_level_weights(run_config: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, R) run multiplicities of two-level resamples: C configurations drawn with replacement, then
    each drawn configuration's g_c runs drawn with replacement from it."""
    groups = _groups(run_config)
    sizes = np.array([g.size for g in groups])
    table = np.full((len(groups), sizes.max()), -1, dtype=np.intp)
    for i, g in enumerate(groups):
        table[i, : g.size] = g
    drawn = rng.integers(0, len(groups), size=(n_boot, len(groups)))
    pick = np.floor(rng.random((n_boot, len(groups), sizes.max())) * sizes[drawn][:, :, None]).astype(np.intp)
    used = np.arange(sizes.max())[None, None, :] < sizes[drawn][:, :, None]
    runs = table[drawn[:, :, None], pick][used]
    boot = np.repeat(np.arange(n_boot), used.reshape(n_boot, -1).sum(axis=1))
    weights = np.zeros((n_boot, run_config.size))
    np.add.at(weights, (boot, runs), 1.0)
    return weights


def level_tests(
    x: Sequence[float],
    y: Sequence[float],
    runs: Sequence,
    configurations: Sequence,
    positions: Sequence | None = None,
    *,
    n_perm: int = 9999,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> LevelResult:
    """The within- and between-configuration tests and the two-level bootstrap interval of tau (module doc)
    for paired rows x, y with their run, configuration and position (step); rows with a NaN are dropped."""
    xa, ya = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    keep = np.isfinite(xa) & np.isfinite(ya)
    run_labels = np.asarray(pd.Series(list(runs), dtype=object))[keep]
    config_labels = np.asarray(pd.Series(list(configurations), dtype=object).astype(str))[keep]
    pos = None if positions is None else np.asarray(list(positions), dtype=object)[keep]
    xs, ys = xa[keep], ya[keep]
    nan = math.nan
    if xs.size < MIN_ROWS or np.all(xs == xs[0]) or np.all(ys == ys[0]):
        return LevelResult(nan, nan, 0, 0, False, nan, nan, 0, 0, nan, nan, "too few rows or a constant x or y")
    grid = layout(run_labels, run_positions(run_labels, pos))
    per_run = pd.DataFrame({"run": grid.run, "config": config_labels}).drop_duplicates()
    if per_run["run"].duplicated().any():
        raise AnalysisInputError("level_tests: a run belongs to more than one configuration")
    run_config = per_run.sort_values("run")["config"].to_numpy()
    notes = []
    tau_w, p_w, pairs, n_w, exact_w = _within(xs, ys, grid, run_config, n_perm, seed)
    if pairs == 0:
        notes.append("one run a configuration: no within-configuration test")
    tau_b, p_b, n_configs, n_b = _between(xs, ys, config_labels, n_perm, seed)
    lo = hi = nan
    if n_boot > 0 and len(np.unique(run_config)) > 1:
        weights = two_level_weights(run_config, n_boot, np.random.default_rng(seed))
        boot = bootstrap_statistics(xs, ys, weights[:, grid.run])["tau"]
        lo, hi = percentile_interval(boot, confidence)
    return LevelResult(tau_w, p_w, pairs, n_w, exact_w, tau_b, p_b, n_configs, n_b, lo, hi, "; ".join(notes))


def level_table(
    frame: pd.DataFrame,
    measures: Sequence[str],
    languages: Sequence[str],
    source: str,
    targets: Sequence[str],
    *,
    unit: Unit = "checkpoint",
    run_reduce: RunReduce = "last",
    n_perm: int = 9999,
    n_boot: int = 1000,
    confidence: float = 0.95,
    seed: int = 0,
) -> pd.DataFrame:
    """`level_tests` of every (measure, target): columns measure, target and `LEVEL_COLUMNS`.

    The configuration of a row is its ``configuration`` column (`xlgm.analysis.frame.CONFIGURATION`), else its
    run (then there is no within-configuration test); checkpoints pair by ``step`` when the unit is the
    checkpoint."""
    data = prepare_frame(frame, measures, languages, source, unit=unit, run_reduce=run_reduce)
    require_columns(data, ["run_id"], "analysis frame (levels)")
    configurations = data[CONFIGURATION if CONFIGURATION in data.columns else "run_id"].to_numpy()
    positions = data["step"].to_numpy() if unit == "checkpoint" and "step" in data.columns else None
    rows = []
    for measure in measures:
        x = pd.to_numeric(data[measure], errors="coerce").to_numpy(dtype=float)
        for target in targets:
            result = level_tests(
                x,
                data[target].to_numpy(dtype=float),
                data["run_id"].to_numpy(),
                configurations,
                positions,
                n_perm=n_perm,
                n_boot=n_boot,
                confidence=confidence,
                seed=seed,
            )
            rows.append({"measure": measure, "target": target, **result.as_dict()})
    return pd.DataFrame(rows, columns=["measure", "target", *LEVEL_COLUMNS])
