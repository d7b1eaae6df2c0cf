"""Intervals and comparisons from a results store: what ``leaderboard --ci``, ``compare-saes`` and the report show.

Everything here is recomputed from the per-unit statistics the cells stored (saebench.uncertainty);
nothing reruns a model. Columns are leaderboard columns (``scorer.metric``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saebench.errors import ConfigError
from saebench.results.html import split_column
from saebench.results.plots import headline
from saebench.run.plan import split_seed
from saebench.run.store import CellKey, ResultsStore
from saebench.uncertainty import DEFAULT_LEVEL, DEFAULT_RESAMPLES, Comparison, Interval, Units, compare, interval

SAEKey = tuple[str, str, str]  # (model, hookpoint, sae)
#: compare-saes's columns: a and b are the metric of each SAE, diff = a − b
COMPARE_COLUMNS = ["metric", "a", "b", "diff", "ci_low", "ci_high", "p_value", "verdict", "paired", "units", "unit"]


@dataclass
class StoredUnits:
    """Every finished cell's per-unit statistics, by SAE and leaderboard column, and the scorers' declarations."""

    #: a repeated cell's mean-over-seeds column holds one Units per seed
    by_sae: dict[SAEKey, dict[str, Units | list[Units]]] = field(default_factory=dict)
    scorers: dict[str, dict[str, Any]] = field(default_factory=dict)
    cells: set[CellKey] = field(default_factory=set)

    @classmethod
    def load(cls, output: str | Path) -> StoredUnits:
        with ResultsStore.existing(output) as store:
            units = store.units()
            scorers = store.scorer_info()
            cells = {
                CellKey(c["model"], c["hookpoint"], c["sae"], c["scorer"]) for c in store.cells() if not c["error"]
            }
        out = cls(scorers=scorers, cells=cells)
        seeded: dict[tuple[SAEKey, str], dict[int, Units]] = {}
        for key, u in units.items():
            sae = (key.model, key.hookpoint, key.sae)
            columns = out.by_sae.setdefault(sae, {})
            base, seed = split_seed(key.scorer)
            for metric in u.metrics:
                columns[f"{key.scorer}.{metric}"] = u
                if seed is not None:
                    seeded.setdefault((sae, f"{base}.{metric}"), {})[seed] = u
        for (sae, column), by_seed in seeded.items():  # the mean over seeds: every seed's units
            out.by_sae[sae][column] = [by_seed[s] for s in sorted(by_seed)]
        return out

    def units(self, sae: SAEKey, column: str) -> Units | list[Units] | None:
        return self.by_sae.get(sae, {}).get(column)


def _metric(column: str) -> str:
    return column.split(".", 1)[1]


def intervals(
    stored: StoredUnits,
    columns: Sequence[str] | None = None,
    *,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> dict[SAEKey, dict[str, Interval]]:
    """The bootstrap interval of every column (or of ``columns``) of every SAE that stored units for it."""
    out: dict[SAEKey, dict[str, Interval]] = {}
    for sae, by_column in stored.by_sae.items():
        for column, u in by_column.items():
            if columns is None or column in columns:
                iv = interval(u, _metric(column), level=level, resamples=resamples, seed=seed)
                out.setdefault(sae, {})[column] = iv
    return out


def without_interval(stored: StoredUnits, columns: Sequence[str], rows: Sequence[dict]) -> dict[str, str]:
    """Headline columns of the leaderboard that got no interval, with why (the reason a scorer declares,
    or that its cells kept no per-unit statistics)."""
    out: dict[str, str] = {}
    for column in columns:
        declared = headline(column, stored.scorers)
        if declared is None:
            continue
        have = [r for r in rows if stored.units((r["model"], r["hookpoint"], r["sae"]), column) is not None]
        valued = [r for r in rows if r.get(column) is not None]
        if len(have) < len(valued):
            out[column] = declared.no_interval or (
                "its cells stored no per-unit statistics (computed before intervals existed, or by a scorer "
                "that keeps none): rerun them to get one"
            )
    return out


def find_sae(stored_keys: Sequence[SAEKey], name: str) -> SAEKey:
    """The SAE called ``name`` (or ``MODEL/HOOKPOINT/SAE`` when the name is at several hook points)."""
    parts = name.split("/")
    hits = [k for k in stored_keys if (list(k) == parts if len(parts) == 3 else k[2] == name)]
    if not hits:
        names = ", ".join(dict.fromkeys(k[2] for k in stored_keys))
        raise ConfigError(f"no SAE {name!r} in this run; SAEs: {names}", "compare-saes")
    if len(hits) > 1:
        options = ", ".join("/".join(k) for k in hits)
        raise ConfigError(f"SAE {name!r} is at several hook points; name one of {options}", "compare-saes")
    return hits[0]


def compare_saes(
    output: str | Path,
    a: str,
    b: str,
    metrics: Sequence[str] | None = None,
    *,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
    seed: int = 0,
) -> list[dict[str, Any]]:
    """A − B per metric (default: every headline metric both SAEs stored units for), with its interval, the
    p-value and a verdict that reads the metric's direction."""
    stored = StoredUnits.load(output)
    keys = list(stored.by_sae) or [(c.model, c.hookpoint, c.sae) for c in stored.cells]
    ka, kb = find_sae(keys, a), find_sae(keys, b)
    have = [c for c in stored.by_sae.get(ka, {}) if c in stored.by_sae.get(kb, {})]
    if metrics:
        unknown = [m for m in metrics if m not in have]
        if unknown:
            raise ConfigError(
                f"no per-unit statistics of {unknown[0]!r} for both SAEs; metrics: {', '.join(have) or 'none'}",
                "--metric",
            )
        chosen = list(metrics)
    else:
        chosen = [c for c in have if headline(c, stored.scorers) is not None]
    rows = []
    for column in chosen:
        ua, ub = stored.by_sae[ka][column], stored.by_sae[kb][column]
        c = compare(ua, ub, _metric(column), level=level, resamples=resamples, seed=seed)
        declared = headline(column, stored.scorers)
        rows.append({"metric": column, **_row(c, declared.higher_is_better if declared else None, a, b)})
    return rows


def _row(c: Comparison, higher_is_better: bool | None, a: str, b: str) -> dict[str, Any]:
    verdict = "no interval"
    if c.low is not None and c.high is not None:
        if c.low <= 0 <= c.high:
            verdict = "tied (within noise)"
        elif higher_is_better is None:
            verdict = f"{a} higher" if c.low > 0 else f"{b} higher"
        else:
            a_better = (c.low > 0) == higher_is_better
            verdict = f"{a if a_better else b} better"
    return {
        "a": c.a,
        "b": c.b,
        "diff": c.diff,
        "ci_low": c.low,
        "ci_high": c.high,
        "p_value": c.p_value,
        "paired": c.paired,
        "units": c.units,
        "unit": c.unit,
        "verdict": verdict,
    }


def tied_with_best(
    stored: StoredUnits,
    column: str,
    rows: Sequence[dict],
    *,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
) -> set[SAEKey]:
    """The SAEs (of one model and hook point as the best) whose ``column`` is within noise of the best one's:
    the best itself, and every other whose paired difference's interval contains 0."""
    declared = headline(column, stored.scorers)
    if declared is None or declared.higher_is_better is None:
        return set()
    valued = [r for r in rows if isinstance(r.get(column), float | int) and math.isfinite(r[column])]
    out: set[SAEKey] = set()
    for group in {(r["model"], r["hookpoint"]) for r in valued}:
        members = [r for r in valued if (r["model"], r["hookpoint"]) == group]
        best = (max if declared.higher_is_better else min)(members, key=lambda r: r[column])
        kb: SAEKey = (best["model"], best["hookpoint"], best["sae"])
        ub = stored.units(kb, column)
        if ub is None:
            continue
        out.add(kb)
        for r in members:
            k: SAEKey = (r["model"], r["hookpoint"], r["sae"])
            u = stored.units(k, column)
            if k == kb or u is None:
                continue
            c = compare(u, ub, _metric(column), level=level, resamples=resamples)
            if c.low is not None and c.high is not None and c.low <= 0 <= c.high:
                out.add(k)
    return out


RELIABILITY_COLUMNS = ["metric", "seeds", "saes", "mean_rank_correlation", "min_rank_correlation", "stable"]
#: a metric whose SAE ranking correlates less than this between seeds (mean Spearman) is flagged unstable
STABLE_RANK_CORRELATION = 0.8


def reliability(columns: Sequence[str], rows: Sequence[dict]) -> list[dict[str, Any]]:
    """Test–retest reliability of each repeated metric: the Spearman correlation of the SAEs' values
    between every two seeds (over the SAEs with a value in both), its mean and minimum, and whether the
    ranking is stable (mean ≥ STABLE_RANK_CORRELATION). Needs 3 SAEs (two always rank ±1) whose values
    differ within each seed; otherwise the correlations are None."""
    from scipy.stats import spearmanr

    groups: dict[str, dict[int, str]] = {}
    for c in columns:
        label, metric = split_column(c)
        base, seed = split_seed(label)
        if seed is not None:
            groups.setdefault(f"{base}.{metric}", {})[seed] = c
    out = []
    for column, by_seed in groups.items():
        if len(by_seed) < 2:
            continue
        rhos = []
        seeds = sorted(by_seed)
        for i, s in enumerate(seeds):
            for t in seeds[i + 1 :]:
                pairs = [
                    (r[by_seed[s]], r[by_seed[t]]) for r in rows if _num(r.get(by_seed[s])) and _num(r.get(by_seed[t]))
                ]
                a, b = [p[0] for p in pairs], [p[1] for p in pairs]
                # a seed where every SAE scores the same has no ranking to correlate: left out
                if len(pairs) >= 3 and len(set(a)) > 1 and len(set(b)) > 1:
                    rhos.append(float(spearmanr(a, b).statistic))
        mean = sum(rhos) / len(rhos) if rhos else None
        out.append({
            "metric": column,
            "seeds": len(seeds),
            "saes": len(rows),
            "mean_rank_correlation": mean,
            "min_rank_correlation": min(rhos) if rhos else None,
            "stable": None if mean is None else mean >= STABLE_RANK_CORRELATION,
        })  # fmt: skip
    return out


def _num(v: Any) -> bool:
    return isinstance(v, int | float) and math.isfinite(v)
