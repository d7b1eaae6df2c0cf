"""``saebench compare OUTPUT``: the compare cells (saebench.run.compare) as one row per ordered pair of SAEs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saebench.errors import ConfigError
from saebench.results.intervals import StoredUnits, intervals
from saebench.results.leaderboard import table
from saebench.run.plan import compared_with
from saebench.run.store import ResultsStore
from saebench.uncertainty import DEFAULT_LEVEL, DEFAULT_RESAMPLES

PAIR_COLUMNS = ["model", "sae_a", "hookpoint_a", "sae_b", "hookpoint_b"]


def pair_rows(output: str | Path) -> tuple[list[str], list[dict[str, Any]]]:
    """(metric columns in first-seen order, one row per finished compare cell, in the order stored)."""
    with ResultsStore.existing(output) as store:
        details = {(c["model"], c["hookpoint"], c["sae"], c["scorer"]): c["details"] for c in store.cell_details()}
        metrics = list(store.metrics())
    columns: list[str] = []
    rows: dict[tuple[str, str, str, str], dict[str, Any]] = {}
    for model, hookpoint, sae, scorer, metric, value in metrics:
        other = compared_with(scorer)
        if other is None:
            continue
        key = (model, hookpoint, sae, scorer)
        about = details.get(key, {})
        row = rows.setdefault(
            key,
            {
                "model": model,
                "sae_a": sae,
                "hookpoint_a": hookpoint,
                "sae_b": about.get("sae_b", other),
                "hookpoint_b": about.get("hookpoint_b", hookpoint),
                "_label": scorer,
            },  # fmt: skip
        )
        row[metric] = value
        if metric not in columns:
            columns.append(metric)
    return columns, list(rows.values())


def render_pairs(
    output: str | Path,
    fmt: str = "csv",
    *,
    ci: bool = False,
    level: float = DEFAULT_LEVEL,
    resamples: int = DEFAULT_RESAMPLES,
) -> str:
    """The pairs as CSV, JSON or markdown; with ``ci``, each metric's bootstrap interval over A's latents."""
    columns, rows = pair_rows(output)
    if not rows:
        raise ConfigError("no finished compare cells here; add 'compare: true' to the matrix and run it", output)
    header = PAIR_COLUMNS + columns
    if ci:
        found = intervals(StoredUnits.load(output), level=level, resamples=resamples)
        header = PAIR_COLUMNS
        for c in columns:
            header = header + [c, f"{c}.ci_low", f"{c}.ci_high"]
            for r in rows:
                iv = found.get((r["model"], r["hookpoint_a"], r["sae_a"]), {}).get(f"{r['_label']}.{c}")
                r[f"{c}.ci_low"], r[f"{c}.ci_high"] = (iv.low, iv.high) if iv else (None, None)
    notes = [f"intervals: {level:.0%} percentile bootstrap over A's latents, {resamples} resamples"] if ci else []
    return table(header, rows, fmt, notes=notes)
