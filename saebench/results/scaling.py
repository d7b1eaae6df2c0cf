"""The report's "Scaling" section: reconstruction FVU against the number of latents, log-log, with the
laws ``saebench fit`` fits drawn over the points (one curve per k, and the joint law's when it fits)."""

from __future__ import annotations

import base64
import io
from typing import Any

import numpy as np

from saebench.results.fit import JOINT, POWER, FitResult, fit_curves, fit_rows
from saebench.results.html import esc
from saebench.run.store import ResultsStore

METRIC, X, BY = "reconstruction.fvu", "d_sae", "k"


def scaling_section(store: ResultsStore, resamples: int) -> str | None:
    """The section's HTML, or None when fewer than 3 SAEs of distinct widths have an FVU (nothing to fit)."""
    if not any(sc == METRIC.partition(".")[0] for *_, sc, _, _ in store.metrics()):
        return None
    quiet: Any = lambda line: None  # noqa: E731 (the report names nothing it skips: the table has every SAE)
    try:
        fits = fit_curves(store, METRIC, X, BY, resamples=resamples, warn=quiet)
    except Exception:  # no FVU column after all: no section, the rest of the report stands
        return None
    power = [f for f in fits if f.law == POWER]
    if len({p.n for f in power for p in f.points}) < 3:
        return None
    header, rows = fit_rows(fits)
    shown = [h for h in header if not h.endswith((".ci_low", ".ci_high")) and h != "failed_resamples"]
    table = "".join("<tr>" + "".join(f"<td>{esc(_value(r, h))}</td>" for h in shown) + "</tr>" for r in rows)
    return (
        f"<p>{esc(METRIC)} against {X} per {BY}: L(n) = c + b·n^a per group and Gao et al.'s joint law in n and k "
        f"(saebench fit; 95% bootstrap intervals in brackets).</p>"
        f'<figure><img alt="{esc(METRIC)} vs {X}" src="data:image/svg+xml;base64,{_plot(fits)}"></figure>'
        f"<table><tr>{''.join(f'<th>{esc(h)}</th>' for h in shown)}</tr>{table}</table>"
    )


def _value(row: dict[str, Any], column: str) -> str:
    v = row.get(column)
    if v is None:
        return ""
    if isinstance(v, float):
        lo, hi = row.get(f"{column}.ci_low"), row.get(f"{column}.ci_high")
        return f"{v:.4g}" + (f" [{lo:.4g}, {hi:.4g}]" if lo is not None and hi is not None else "")
    return str(v)


def _plot(fits: list[FitResult]) -> str:
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, no GUI backend

    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.add_subplot()
    joint = next((f for f in fits if f.law == JOINT and f.params is not None), None)
    for i, f in enumerate(f for f in fits if f.law == POWER):
        colour = f"C{i % 10}"
        n = np.array([p.n for p in f.points])
        ax.plot(n, [p.y for p in f.points], "o", color=colour, label=f.group, markersize=5)
        grid = np.geomspace(n.min(), n.max(), 50)
        if f.params is not None:
            ax.plot(grid, f.predict(grid), "-", color=colour, linewidth=1.2)
        k = f.points[0].k
        if joint is not None and isinstance(k, int | float):
            ax.plot(grid, joint.predict(grid, np.full_like(grid, float(k))), ":", color=colour, linewidth=1)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("latents n (d_sae)", parse_math=False)
    ax.set_ylabel(METRIC, parse_math=False)
    ax.set_title("FVU vs width: fitted c + b·n^a (solid), joint law (dotted)", fontsize=8, parse_math=False)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return base64.b64encode(buf.getvalue()).decode()
