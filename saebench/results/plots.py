"""The report's frontier plots: every metric a scorer declares as plotted, against the declared sparsity axis.

A scorer declares its headline metrics (``Scorer.headline``: saebench.Metric); the run stores the
declarations of each scorer label (``store.scorer_info()``), and a store written before they were
stored falls back to the installed plugin of that name. Nothing here knows a scorer by name.
Plots are matplotlib figures rendered to SVG data-URI ``<img>``s (an ``<img>`` never runs a script).
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


def headline(column: str, scorers: dict[str, dict[str, Any]]) -> Metric | None:
    """The declaration that covers a leaderboard column, or None when its scorer declares none for it."""
    label, metric = split_column(column)
    info = scorers.get(label)
    if info is not None:
        declared = [Metric(**m) for m in info["headline"]]
    else:
        try:
            declared = list(plugin_manager.get("scorer", label.split("[")[0]).headline)
        except PluginError:  # a scorer not installed here, from a store without declarations
            declared = []
    return next((m for m in declared if re.fullmatch(m.name, metric)), None)


def frontier(columns: list[str], rows: list[dict], archs: dict, scorers: dict[str, dict]) -> str:
    """The frontier plots: each metric a scorer declares with ``plot``, against the declared sparsity axis."""
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
                (r[x], r[column], arch, f"{r['sae']} ({r['hookpoint']})" if several else r["sae"])
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
    for arch in sorted({p[2] for p in points}):
        series = sorted(p for p in points if p[2] == arch)
        ax.plot(
            [p[0] for p in series],
            [p[1] for p in series],
            "o-",
            color=colours[arch],
            label=arch,
            markersize=6,
            linewidth=1.2,
        )
        for x, y, _, label in series:  # long names are cut here; the table has them whole
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
