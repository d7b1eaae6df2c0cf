"""The report's frontier plots: every metric a scorer declares as plotted, against the declared sparsity axis.

A scorer declares its headline metrics (``Scorer.headline``: saebench.Metric); the run stores the
declarations of each scorer label (``store.scorer_info()``), and a store written before they were
stored falls back to the installed plugin of that name. Nothing here knows a scorer by name.
Plots are matplotlib figures rendered to SVG data-URI ``<img>``s (an ``<img>`` never runs a script).
Where the report gives intervals (saebench.results.intervals), a point carries error bars: the plotted
metric's interval vertically, the sparsity axis's horizontally (SVG ids ``yerr_N`` and ``xerr_N``); a
point without an interval is drawn without them.
"""

from __future__ import annotations

import base64
import io
import re
from typing import Any

from saebench import plugin_manager
from saebench.errors import PluginError
from saebench.interfaces import Metric
from saebench.results.html import PALETTE, esc, finite, split_column
from saebench.run.plan import split_seed


def headline(column: str, scorers: dict[str, dict[str, Any]]) -> Metric | None:
    """The declaration that covers a leaderboard column, or None when its scorer declares none for it."""
    label, metric = split_column(column)
    label = split_seed(label)[0]  # a repeated cell declares what its scorer does
    info = scorers.get(label) or next((i for k, i in scorers.items() if split_seed(k)[0] == label), None)
    if info is not None:
        declared = [Metric(**m) for m in info["headline"]]
    else:
        try:
            declared = list(plugin_manager.get("scorer", label.split("[")[0]).headline)
        except PluginError:  # a scorer not installed here, from a store without declarations
            declared = []
    return next((m for m in declared if re.fullmatch(m.name, metric)), None)


def frontier(
    columns: list[str],
    rows: list[dict],
    archs: dict,
    scorers: dict[str, dict],
    intervals: dict[tuple[str, str, str], dict[str, Any]] | None = None,
) -> str:
    """The frontier plots: each metric a scorer declares with ``plot``, against the declared sparsity axis;
    ``intervals`` ({(model, hookpoint, sae): {column: Interval}}) adds error bars where they exist."""
    declared = {column: headline(column, scorers) for column in columns}
    axis = next(((c, m) for c, m in declared.items() if m is not None and m.axis), None)
    if axis is None:
        return (
            '<p class="empty">No sparsity axis (a scorer that declares one, such as sparsity\'s L0: add it to the '
            "matrix): nothing to plot.</p>"
        )
    import matplotlib

    x, x_label = axis[0], axis[1].label or axis[0]
    keyed = [(r, archs.get((r["model"], r["hookpoint"], r["sae"]), "unknown")) for r in rows]
    colours = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(sorted({a for _, a in keyed}))}
    several = len({(r["model"], r["hookpoint"]) for r in rows}) > 1
    name = x_label.split(" (")[0]
    figures = []
    # a salt keeps the SVG ids reproducible; texts from the data get parse_math=False ("$" is not mathtext)
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "saebench", "font.size": 8}):
        for column in (c for c, m in declared.items() if m is not None and m.plot):
            points = [
                (
                    r[x],
                    r[column],
                    arch,
                    f"{r['sae']} ({r['hookpoint']})" if several else r["sae"],
                    _error(r, x, intervals),
                    _error(r, column, intervals),
                )
                for r, arch in keyed
                if finite(r.get(x)) and finite(r.get(column))
            ]
            if points:
                figures.append((column, _svg(f"{column} vs {name}", column, x_label, points, colours)))
    if not figures:
        return f'<p class="empty">No declared metric with values to plot against {esc(name)}.</p>'
    return (
        '<div class="plots">'
        + "".join(
            f'<figure><img alt="{esc(c)} vs {esc(name)}" src="data:image/svg+xml;base64,{data}"></figure>'
            for c, data in figures
        )
        + "</div>"
    )


def _svg(title: str, y_label: str, x_label: str, points: list[tuple], colours: dict[str, str]) -> str:
    """One plot as base64 SVG: a series per architecture, each point labelled with its SAE."""
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, no GUI backend

    fig = Figure(figsize=(5.2, 3.6))
    ax = fig.add_subplot()
    right = max(p[0] for p in points)
    bars = 0
    for arch in sorted({p[2] for p in points}):
        series = sorted((p for p in points if p[2] == arch), key=lambda p: p[:4])
        ax.plot(
            [p[0] for p in series],
            [p[1] for p in series],
            "o-",
            color=colours[arch],
            label=arch,
            markersize=6,
            linewidth=1.2,
        )
        bars = _error_bars(ax, series, colours[arch], bars)
        for x, y, _, label, *_ in series:  # long names are cut here; the table has them whole
            label = label if len(label) <= 28 else label[:27] + "…"
            left = x == right and len(points) > 1  # the rightmost label would run off the figure
            ax.annotate(
                label,
                (x, y),
                xytext=(-4 if left else 4, 4),
                textcoords="offset points",
                fontsize=7,
                ha="right" if left else "left",
                in_layout=False,
                parse_math=False,
            )
    xs = [p[0] for p in points]
    if min(xs) > 0 and max(xs) > 10 * min(xs):
        ax.set_xscale("log")
    ax.margins(0.12)
    ax.set_xlabel(x_label, parse_math=False)
    ax.set_ylabel(y_label, parse_math=False)
    ax.set_title(title, parse_math=False)
    ax.grid(alpha=0.3)
    for text in ax.legend(title="architecture", fontsize=7, title_fontsize=7).get_texts():
        text.set_parse_math(False)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return base64.b64encode(buf.getvalue()).decode()


def _error(row: dict, column: str, intervals: dict | None) -> tuple[float, float] | None:
    """(below, above) the plotted value: the distances to the bounds of its interval, None without one."""
    iv = (intervals or {}).get((row["model"], row["hookpoint"], row["sae"]), {}).get(column)
    if iv is None or not finite(iv.low) or not finite(iv.high):
        return None
    value = row[column]
    return max(value - iv.low, 0.0), max(iv.high - value, 0.0)


def _error_bars(ax: Any, series: list[tuple], colour: str, count: int) -> int:
    """Each point's interval bars (those it has), under the markers; returns the running count for the ids."""
    for x, y, _, _, xerr, yerr in series:
        for axis, err in (("x", xerr), ("y", yerr)):
            if err is None:
                continue
            bounds = [[err[0]], [err[1]]]
            container = ax.errorbar(
                [x],
                [y],
                **{f"{axis}err": bounds},
                fmt="none",
                ecolor=colour,
                elinewidth=0.9,
                capsize=2,
                alpha=0.55,
                zorder=1.5,
            )
            count += 1
            for collection in container.lines[2]:
                collection.set_gid(f"{axis}err_{count}")
    return count
