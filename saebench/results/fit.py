"""Scaling laws of a metric in an SAE's width (and k): what ``saebench fit`` prints and the report can draw.

Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (section 3, scaling laws) fit the
reconstruction loss against the number of latents n as a power law with an irreducible loss term,
L(n) = c + β·n^α. Per group (the ``--by`` value, e.g. k) we fit that law with c = e^u ≥ 0 and
β = e^v > 0 by least squares on log residuals, log L_i − log(c + β·n_i^α). Across groups the paper
gives a joint law in n and k; as we read it,

    L(n, k) = exp(α + β_k·log k + β_n·log n + γ·log k·log n) + exp(ζ + η·log k),

fitted the same way (in log space) when there are 2 groups or more and more points than its 6 parameters.

Goodness of fit is R² and RMSE of log L. Intervals are 95% percentile bootstraps (seeded): when every
point's cell stored per-unit statistics (saebench.uncertainty), the units are resampled — the same
context indices for every SAE when the units are shared (contexts, examples), so the points move
together as they would on another evaluation set — each SAE's metric recomputed and the laws refitted;
otherwise the (variance-corrected) log residuals of the fit are resampled. Failed refits are dropped
and counted.
"""

from __future__ import annotations

import math
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy.optimize import least_squares

from saebench.errors import ConfigError
from saebench.results.leaderboard import table
from saebench.run.store import CellKey, ResultsStore
from saebench.uncertainty import DEFAULT_LEVEL, DEFAULT_RESAMPLES, PAIRED_UNITS, draws

POWER = "c + b*n^a"
JOINT = "joint"
PARAMS = {POWER: ["c", "b", "a"], JOINT: ["alpha", "beta_k", "beta_n", "gamma", "zeta", "eta"]}
MIN_POINTS = 3
Arr = np.ndarray


@dataclass
class Point:
    """One SAE's value of the metric at its width n (and its ``by`` value k)."""

    sae: tuple[str, str, str]
    n: float
    k: Any
    y: float


@dataclass
class FitResult:
    """One fitted law: its parameters (None when not fitted, with ``reason``), their intervals and its points."""

    group: str
    law: str
    points: list[Point]
    params: dict[str, float] | None = None
    ci: dict[str, tuple[float | None, float | None]] = field(default_factory=dict)
    r2: float | None = None
    rmse_log: float | None = None
    ci_method: str | None = None
    failed_resamples: int = 0
    reason: str | None = None

    def predict(self, n: np.ndarray | float, k: np.ndarray | float | None = None) -> np.ndarray:
        """The fitted L at widths ``n`` (and ``k``, for the joint law): for drawing the curve."""
        if self.params is None:
            raise ValueError(f"{self.law} not fitted for {self.group}: {self.reason}")
        theta = _theta(self.law, self.params)
        return np.exp(_log_model(self.law, theta, np.asarray(n, float), None if k is None else np.asarray(k, float)))


def _theta(law: str, params: dict[str, float]) -> np.ndarray:
    if law == POWER:
        return np.array([math.log(max(params["c"], 1e-300)), math.log(params["b"]), params["a"]])
    return np.array([params[p] for p in PARAMS[JOINT]])


def _params(law: str, theta: np.ndarray) -> dict[str, float]:
    if law == POWER:
        return {"c": float(np.exp(theta[0])), "b": float(np.exp(theta[1])), "a": float(theta[2])}
    return dict(zip(PARAMS[JOINT], map(float, theta)))


def _log_model(law: str, theta: np.ndarray, n: np.ndarray, k: np.ndarray | None) -> np.ndarray:
    ln = np.log(n)
    if law == POWER:
        u, v, a = theta
        return np.logaddexp(u, v + a * ln)  # log(e^u + e^v·n^a), stable
    assert k is not None
    lk = np.log(k)
    al, bk, bn, g, z, e = theta
    return np.logaddexp(al + bk * lk + bn * ln + g * lk * ln, z + e * lk)


def _starts(law: str, n: np.ndarray, k: np.ndarray | None, ly: np.ndarray) -> list[np.ndarray]:
    """Initial guesses: the irreducible term a fraction of the smallest value, the rest a log-linear fit."""
    out = []
    for frac in (0.5, 0.1, 1e-3):
        floor = math.log(frac) + ly.min()
        rest = np.log(np.maximum(np.exp(ly) - math.exp(floor), 1e-12 * np.exp(ly)))
        if law == POWER:
            a, v = np.polyfit(np.log(n), rest, 1)
            out.append(np.array([floor, v, a]))
        else:
            assert k is not None
            design = np.column_stack([np.ones_like(n), np.log(k), np.log(n), np.log(k) * np.log(n)])
            coef = np.linalg.lstsq(design, rest, rcond=None)[0]
            out.append(np.array([*coef, floor, 0.0]))
    return out


def _fit(law: str, n: Arr, k: Arr | None, y: Arr, start: Arr | None = None) -> Arr | None:
    """Least squares on log residuals; the best of several starts (or from ``start``); None when it fails."""
    if not np.all(np.isfinite(y)) or np.any(y <= 0):
        return None
    ly = np.log(y)
    best = None
    for x0 in [start] if start is not None else _starts(law, n, k, ly):
        try:
            r = least_squares(
                lambda t: ly - _log_model(law, t, n, k), x0, method="lm", xtol=1e-14, ftol=1e-14, gtol=1e-14
            )
        except (ValueError, np.linalg.LinAlgError):
            continue
        if r.status > 0 and np.all(np.isfinite(r.x)) and (best is None or r.cost < best.cost):
            best = r
    return None if best is None else best.x


def _goodness(law: str, theta: np.ndarray, n: np.ndarray, k: np.ndarray | None, y: np.ndarray) -> tuple:
    res = np.log(y) - _log_model(law, theta, n, k)
    total = float(np.sum((np.log(y) - np.log(y).mean()) ** 2))
    r2 = 1 - float(np.sum(res**2)) / total if total > 0 else None
    return r2, float(np.sqrt(np.mean(res**2))), res


def fit_curves(
    store: ResultsStore,
    metric: str,
    x: str = "d_sae",
    by: str | None = None,
    *,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
    level: float = DEFAULT_LEVEL,
    warn: Callable[[str], None] | None = None,
) -> list[FitResult]:
    """``c + b*n^a`` per ``by`` group (one group without it), and the joint law across groups, of the
    leaderboard column ``metric`` (``scorer.metric``) against each SAE's ``x`` (from its config)."""
    warn = warn or (lambda line: print(line, file=sys.stderr))
    scorer, _, name = metric.partition(".")
    values = {(m, h, s): v for m, h, s, sc, k, v in store.metrics() if sc == scorer and k == name}
    if not values:
        columns = sorted({f"{sc}.{k}" for *_, sc, k, _ in store.metrics()})
        raise ConfigError(f"no metric {metric!r} in this run; metrics: {', '.join(columns) or 'none'}", "--metric")
    configs = store.sae_configs()
    trained = {
        (c["model"], c["hookpoint"], c["sae"]): c["config"]["sae"].get("train")
        for c in store.cell_configs()
        if isinstance(c["config"].get("sae"), dict) and isinstance(c["config"]["sae"].get("train"), dict)
    }
    points = []
    for key, y in values.items():
        cfg: dict[str, Any] = configs.get(key, {})
        train: dict[str, Any] = cfg["train"] if isinstance(cfg.get("train"), dict) else trained.get(key) or {}
        got = {f: train.get(f) if train.get(f) is not None else cfg.get(f) for f in (x, by) if f}
        missing = [f for f, v in got.items() if v is None] + ([] if y is not None else [metric])
        width = got[x]
        if y is None or missing or not (isinstance(width, int | float) and width > 0):
            warn(f"saebench fit: skipped {'/'.join(key)}: no {' or '.join(missing) or f'positive {x}'}")
            continue
        points.append(Point(key, float(width), got.get(by) if by else None, float(y)))
    groups: dict[Any, list[Point]] = {}
    for p in sorted(points, key=lambda p: (str(type(p.k)), p.k if p.k is not None else 0, p.n)):
        groups.setdefault(p.k, []).append(p)
    out = [_one(POWER, "all" if k is None else f"{by}={k}", ps) for k, ps in groups.items()]
    if by is not None:
        out.append(
            _one(
                JOINT,
                "all",
                points,
                groups=len(groups),
                numeric_k=all(isinstance(v, int | float) and v > 0 for v in groups),
            )
        )
    _bootstrap(store, metric, out, resamples, seed, level)
    return out


def _one(law: str, group: str, points: list[Point], groups: int = 1, numeric_k: bool = True) -> FitResult:
    out = FitResult(group, law, points)
    need = MIN_POINTS if law == POWER else len(PARAMS[JOINT]) + 1  # ≥ 7 points
    if law == JOINT and groups < 2:
        out.reason = f"the joint law needs 2 groups or more, got {groups}"
    elif law == JOINT and not numeric_k:
        out.reason = "the joint law needs positive numeric group values (k)"
    elif len(points) < need:
        out.reason = f"needs {need} points or more (more than its {len(PARAMS[law])} parameters), got {len(points)}"
    if out.reason:
        return out
    n, k, y = _arrays(law, points)
    theta = _fit(law, n, k, y)
    if theta is None:
        out.reason = "the least-squares fit failed"
        return out
    out.params = _params(law, theta)
    out.r2, out.rmse_log, _ = _goodness(law, theta, n, k, y)
    return out


def _arrays(law: str, points: list[Point], y: np.ndarray | None = None) -> tuple:
    n = np.array([p.n for p in points])
    k = np.array([float(p.k) for p in points]) if law == JOINT else None
    return n, k, np.array([p.y for p in points]) if y is None else y


def _unit_draws(store: ResultsStore, metric: str, fits: list[FitResult], resamples: int, seed: int):
    """Per SAE, its metric on each of ``resamples`` unit resamples (paired over shared units), and the method;
    None when some point's cell stored no units for the metric."""
    scorer, _, name = metric.partition(".")
    stored = store.units()
    saes = list(dict.fromkeys(p.sae for f in fits for p in f.points))
    found = [stored.get(CellKey(*sae, scorer)) for sae in saes]
    units = [u for u in found if u is not None and name in u.metrics and u.n >= 2]
    if len(units) < len(saes) or not units:
        return None
    rng = np.random.default_rng(seed)
    shared = set(units[0].ids).intersection(*(u.ids for u in units[1:]))
    if units[0].unit in PAIRED_UNITS and all(u.unit == units[0].unit for u in units) and len(shared) >= 2:
        order = [i for i in units[0].ids if i in shared]
        pos = [{v: j for j, v in enumerate(u.ids)} for u in units]
        aligned = [u.subset(np.array([at[i] for i in order])) for u, at in zip(units, pos)]
        w = draws(len(order), aligned[0].strata, resamples, rng)
        values = {sae: u.values(name, w) for sae, u in zip(saes, aligned)}
        return values, f"paired bootstrap over {len(order)} {units[0].unit}s"
    values = {sae: u.values(name, draws(u.n, u.strata, resamples, rng)) for sae, u in zip(saes, units)}
    return values, f"bootstrap over each SAE's {units[0].unit}s"


def _bootstrap(store: ResultsStore, metric: str, fits: list[FitResult], resamples: int, seed: int, level: float):
    """Each fitted law's percentile intervals, refitted on unit resamples (else on resampled residuals)."""
    fitted = [f for f in fits if f.params is not None]
    if not fitted:
        return
    by_units = _unit_draws(store, metric, fitted, resamples, seed)
    rng = np.random.default_rng(seed)
    for f in fitted:
        n, k, y = _arrays(f.law, f.points)
        theta = _theta(f.law, f.params or {})
        if by_units is None and len(y) <= len(theta):
            f.ci_method = "none (no per-unit statistics, and no residual freedom to resample)"
            continue
        if by_units is not None:
            ys = np.array([by_units[0][p.sae] for p in f.points]).T  # [resamples, points]
            f.ci_method = by_units[1]
        else:
            _, _, res = _goodness(f.law, theta, n, k, y)
            res = (res - res.mean()) * math.sqrt(len(y) / (len(y) - len(theta)))  # residuals' variance restored
            picks = rng.integers(0, len(y), size=(resamples, len(y)))
            ys = np.exp(_log_model(f.law, theta, n, k) + res[picks])
            f.ci_method = "residual bootstrap over points (no per-unit statistics)"
        thetas = [t for t in (_fit(f.law, n, k, row, start=theta) for row in ys) if t is not None]
        f.failed_resamples = resamples - len(thetas)
        if len(thetas) < 0.5 * resamples:
            continue
        drawn = [_params(f.law, t) for t in thetas]
        for p in PARAMS[f.law]:
            lo, hi = np.quantile([d[p] for d in drawn], [(1 - level) / 2, 1 - (1 - level) / 2])
            f.ci[p] = (float(lo), float(hi))


def fit_rows(fits: list[FitResult]) -> tuple[list[str], list[dict[str, Any]]]:
    """(header, rows): one row per fitted law, its parameters with ``.ci_low``/``.ci_high``."""
    names = [p for law in dict.fromkeys(f.law for f in fits) for p in PARAMS[law]]
    header = ["group", "law", *[f"{p}{s}" for p in names for s in ("", ".ci_low", ".ci_high")]]
    header += ["n_points", "r2", "rmse_log", "ci_method", "failed_resamples", "reason"]
    rows = []
    for f in fits:
        row: dict[str, Any] = {"group": f.group, "law": f.law, "n_points": len(f.points), "r2": f.r2}
        row.update(rmse_log=f.rmse_log, ci_method=f.ci_method, failed_resamples=f.failed_resamples, reason=f.reason)
        for p, v in (f.params or {}).items():
            row[p] = v
            row[f"{p}.ci_low"], row[f"{p}.ci_high"] = f.ci.get(p, (None, None))
        rows.append(row)
    return header, rows


def render_fit(output: str | Path, metric: str, x: str, by: str | None, fmt: str = "markdown", **kw: Any) -> str:
    """What ``saebench fit`` prints: the fits of the results folder ``output`` as a table (``kw``: fit_curves's)."""
    with ResultsStore.existing(output) as store:
        return table(*fit_rows(fit_curves(store, metric, x, by, **kw)), fmt)
