"""How sure a number is: per-unit statistics, bootstrap intervals, and paired comparisons between SAEs.

A scorer whose metric averages over *units* (evaluation contexts, latents, test examples) returns,
beside its metrics, a :class:`Units`: one row of sums per unit and, per metric, how the metric is
computed from the column totals (:class:`Ratio`). The runner stores it beside the cell, so an
interval is recomputed from the store in milliseconds, without rerunning anything.

Why whole units: tokens of one context are correlated, so resampling tokens would understate the
spread; a ratio metric (CE loss score, explained variance) is recomputed from the resampled
*totals*, never as a ratio of separately resampled means. Intervals are percentile bootstrap
intervals (Efron & Tibshirani 1993, ch. 13) from ``resamples`` draws of the units with replacement
(within each stratum when ``strata`` are given: a probe metric that averages per-task accuracies
keeps each task's size), seeded, so the same store gives the same interval.

Comparisons (:func:`compare`) of two SAEs evaluated on the same units (contexts, test examples) are
paired: both are recomputed on the *same* resample, which cancels the variation the units share.
Latents of two SAEs are different things, so per-latent metrics are compared unpaired (each SAE's
latents resampled independently). The p-value is the two-sided bootstrap p-value of "no
difference": 2·min(P*(d ≤ 0), P*(d ≥ 0)) with the (count + 1) / (resamples + 1) correction.
"""

from __future__ import annotations

import json
import zlib
from collections.abc import Sequence
from typing import Literal

import numpy as np
from pydantic import BaseModel, Field, model_validator

from saebench.errors import ShapeError

#: unit kinds that are the same things for every SAE of one model (so comparisons pair them)
PAIRED_UNITS = frozenset({"context", "example", "word", "text"})
DEFAULT_RESAMPLES = 1000
DEFAULT_LEVEL = 0.95
#: draws generated at once (memory: BLOCK × units floats)
BLOCK = 200


class Ratio(BaseModel):
    """metric = Σ_units Σ_c num[c]·column_c  /  Σ_units Σ_c den[c]·column_c (None when the denominator is 0)."""

    kind: Literal["ratio"] = "ratio"
    num: dict[str, float]
    den: dict[str, float]


class Units(BaseModel):
    """Per-unit sufficient statistics of one cell: ``columns[name][i]`` belongs to unit ``ids[i]``."""

    unit: str = Field(description="what one row is: context, latent, example, word...")
    ids: list[int | str]
    strata: list[int] | None = Field(None, description="resample within these groups (e.g. a probe task)")
    columns: dict[str, list[float]]
    metrics: dict[str, Ratio]

    @model_validator(mode="before")
    @classmethod
    def _known_estimators(cls, data):
        # a store written by a version with estimators this one lacks still loads: those metrics get no interval
        if isinstance(data, dict) and isinstance(data.get("metrics"), dict):
            data = {
                **data,
                "metrics": {
                    k: v
                    for k, v in data["metrics"].items()
                    if not isinstance(v, dict) or v.get("kind", "ratio") == "ratio"
                },
            }
        return data

    @model_validator(mode="after")
    def _aligned(self) -> Units:
        n = len(self.ids)
        for name, col in self.columns.items():
            if len(col) != n:
                raise ValueError(f"column {name!r} has {len(col)} rows for {n} units")
        if self.strata is not None and len(self.strata) != n:
            raise ValueError(f"{len(self.strata)} strata for {n} units")
        for metric, est in self.metrics.items():
            missing = (set(est.num) | set(est.den)) - set(self.columns)
            if missing:
                raise ValueError(f"metric {metric!r} uses unknown column {sorted(missing)[0]!r}")
        return self

    @property
    def n(self) -> int:
        return len(self.ids)

    def prefixed(self, prefix: str) -> Units:
        """The same statistics with metric names ``PREFIX.metric`` (the leaderboard's column names)."""
        return self.model_copy(update={"metrics": {f"{prefix}.{k}": v for k, v in self.metrics.items()}})

    def subset(self, positions: np.ndarray) -> Units:
        """The units at ``positions`` (in that order), for pairing two cells on their shared units."""
        pos = [int(p) for p in positions]
        return Units(
            unit=self.unit,
            ids=[self.ids[p] for p in pos],
            strata=None if self.strata is None else [self.strata[p] for p in pos],
            columns={k: [v[p] for p in pos] for k, v in self.columns.items()},
            metrics=dict(self.metrics),
        )

    # -- values --------------------------------------------------------------------------------
    def value(self, metric: str) -> float | None:
        """The metric on all units (equal to the scorer's own number, up to float rounding)."""
        v = float(self.values(metric, np.ones((1, self.n)))[0])
        return v if np.isfinite(v) else None

    def values(self, metric: str, weights: np.ndarray) -> np.ndarray:
        """The metric under each row of ``weights`` [draws, units] (how often each unit was drawn); NaN where undefined."""
        est = self.metrics[metric]
        w = np.asarray(weights, dtype=np.float64)
        if w.ndim != 2 or w.shape[1] != self.n:
            raise ShapeError(f"weights {list(w.shape)} for {self.n} units", metric)
        num, den = self._combine(est.num), self._combine(est.den)
        top, bottom = w @ num, w @ den
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.where(bottom != 0, top / np.where(bottom != 0, bottom, 1.0), np.nan)
        return out

    def _combine(self, coefs: dict[str, float]) -> np.ndarray:
        out = np.zeros(self.n)
        for name, c in coefs.items():
            out += c * np.asarray(self.columns[name], dtype=np.float64)
        return out

    # -- storage ---------------------------------------------------------------------------------
    def to_blob(self) -> bytes:
        return zlib.compress(self.model_dump_json().encode(), 6)

    @classmethod
    def from_blob(cls, blob: bytes) -> Units:
        return cls.model_validate(json.loads(zlib.decompress(blob)))


class Interval(BaseModel):
    point: float | None
    low: float | None
    high: float | None
    level: float
    resamples: int
    units: int
    unit: str


class Comparison(BaseModel):
    """A − B for one metric: the difference on all units, its interval and the p-value of "no difference"."""

    metric: str
    a: float | None
    b: float | None
    diff: float | None
    low: float | None
    high: float | None
    p_value: float | None
    paired: bool
    units: int
    unit: str
    level: float
    resamples: int


def draws(n: int, strata: list[int] | None, resamples: int, rng: np.random.Generator) -> np.ndarray:
    """Bootstrap weights [resamples, n]: how often each unit is drawn (within its stratum, which keeps its size)."""
    out = np.zeros(resamples * n)
    offsets = (np.arange(resamples) * n)[:, None]
    groups = (
        [np.arange(n)] if strata is None else [np.flatnonzero(np.asarray(strata) == s) for s in sorted(set(strata))]
    )
    for members in groups:
        picked = members[rng.integers(0, members.size, size=(resamples, members.size))]
        out += np.bincount((picked + offsets).ravel(), minlength=resamples * n)
    return out.reshape(resamples, n)


def _percentile(values: np.ndarray, level: float) -> tuple[float | None, float | None]:
    ok = values[np.isfinite(values)]
    if ok.size < 0.5 * values.size or ok.size == 0:  # undefined on most resamples: no interval
        return None, None
    lo, hi = np.quantile(ok, [(1 - level) / 2, 1 - (1 - level) / 2])
    return float(lo), float(hi)


def _group(units: Units | Sequence[Units]) -> list[Units]:
    return [units] if isinstance(units, Units) else list(units)


def _mean_point(group: list[Units], metric: str) -> float | None:
    points = [u.value(metric) for u in group]
    return None if any(p is None for p in points) else float(np.mean(points))  # type: ignore[arg-type]


def interval(
    units: Units | Sequence[Units],
    metric: str,
    *,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Interval:
    """The percentile bootstrap interval of ``metric`` over ``units`` (None bounds when there are under 2
    units). Several Units (one per seed of a repeated cell) give the interval of the mean over seeds:
    each seed's units are resampled independently and the resampled values averaged."""
    group = _group(units)
    rng = np.random.default_rng(seed)
    point = _mean_point(group, metric)
    low = high = None
    if min(u.n for u in group) >= 2 and point is not None:
        parts = []
        for start in range(0, resamples, BLOCK):
            size = min(BLOCK, resamples - start)
            parts.append(np.mean([u.values(metric, draws(u.n, u.strata, size, rng)) for u in group], axis=0))
        low, high = _percentile(np.concatenate(parts), level)
    first = group[0]
    n = sum(u.n for u in group)
    return Interval(point=point, low=low, high=high, level=level, resamples=resamples, units=n, unit=first.unit)


def _pair(a: Units, b: Units) -> tuple[Units, Units, bool]:
    """A and B on the units both have, when their kind is shared; unchanged (unpaired) otherwise."""
    if not (a.unit == b.unit and a.unit in PAIRED_UNITS):
        return a, b, False
    pos_b = {u: i for i, u in enumerate(b.ids)}
    shared = [(i, pos_b[u]) for i, u in enumerate(a.ids) if u in pos_b]
    if not shared:
        return a, b, False
    return a.subset(np.array([i for i, _ in shared])), b.subset(np.array([j for _, j in shared])), True


def compare(
    a: Units | Sequence[Units],
    b: Units | Sequence[Units],
    metric: str,
    *,
    metric_b: str | None = None,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> Comparison:
    """A − B for ``metric`` (``metric_b`` names it in B when the labels differ): paired over the units both
    share when the unit kind is shared (contexts, test examples), unpaired otherwise. Lists are the
    seeds of repeated cells, matched in order: the difference of the means over seeds."""
    mb = metric_b or metric
    ga, gb = _group(a), _group(b)
    if len(ga) != len(gb):
        raise ShapeError(f"{len(ga)} seeds against {len(gb)}", metric)
    pairs = [_pair(x, y) for x, y in zip(ga, gb)]
    paired = all(p for _, _, p in pairs)
    rng = np.random.default_rng(seed)
    va, vb = _mean_point([x for x, _, _ in pairs], metric), _mean_point([y for _, y, _ in pairs], mb)
    diff = None if va is None or vb is None else va - vb
    low = high = p = None
    if diff is not None and min(min(x.n, y.n) for x, y, _ in pairs) >= 2:
        parts = []
        for start in range(0, resamples, BLOCK):
            size = min(BLOCK, resamples - start)
            per_seed = []
            for x, y, together in pairs:
                wx = draws(x.n, x.strata, size, rng)
                wy = wx if together else draws(y.n, y.strata, size, rng)
                per_seed.append(x.values(metric, wx) - y.values(mb, wy))
            parts.append(np.mean(per_seed, axis=0))
        d = np.concatenate(parts)
        low, high = _percentile(d, level)
        ok = d[np.isfinite(d)]
        if low is not None:
            tail = min(int((ok <= 0).sum()), int((ok >= 0).sum()))
            p = min(1.0, 2 * (tail + 1) / (ok.size + 1))
    units = sum(x.n if together else min(x.n, y.n) for x, y, together in pairs)
    return Comparison(
        metric=metric,
        a=va,
        b=vb,
        diff=diff,
        low=low,
        high=high,
        p_value=p,
        paired=paired,
        units=units,
        unit=ga[0].unit,
        level=level,
        resamples=resamples,
    )


def mean_units(
    unit: str,
    ids: list,
    values: dict[str, list[float | None]],
    *,
    strata: list[int] | None = None,
    weights: list[float] | None = None,
) -> Units:
    """Units for metrics that are a (weighted) mean over units of a per-unit value (None or NaN: left
    out, as the scorers' means leave it out): per metric a column of w·value (0 where undefined) and
    one of w (0 where undefined). A mean over tasks of per-task means is ``strata`` = task and
    ``weights`` = 1 / (the task's units)."""
    columns: dict[str, list[float]] = {}
    metrics: dict[str, Ratio] = {}
    w = weights or [1.0] * len(ids)
    for name, vals in values.items():
        ok = [v is not None and bool(np.isfinite(v)) for v in vals]
        columns[f"{name}:sum"] = [wi * float(v) if good else 0.0 for v, good, wi in zip(vals, ok, w)]  # type: ignore[arg-type]
        columns[f"{name}:n"] = [wi if good else 0.0 for good, wi in zip(ok, w)]
        metrics[name] = Ratio(num={f"{name}:sum": 1.0}, den={f"{name}:n": 1.0})
    return Units(unit=unit, ids=list(ids), strata=strata, columns=columns, metrics=metrics)
