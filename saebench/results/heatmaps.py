"""The report's "SAE-to-SAE similarity" section: per compare metric, a heatmap of SAE A (rows) against
SAE B (columns), each cell annotated with its value (saebench compare prints the same numbers)."""

from __future__ import annotations

import base64
import io
from pathlib import Path
from typing import Any

import numpy as np

from saebench.results.html import esc
from saebench.results.pairs import pair_rows

#: drawn first, in this order; any other compare metric follows
ORDER = ("hungarian_cosine", "decoder_max_cosine", "activation_correlation", "explanation_similarity")


def similarity_section(output: str | Path) -> str | None:
    """The section's HTML, or None when the run has no finished compare cell."""
    columns, rows = pair_rows(output)
    if not rows:
        return None
    several = len({(r["model"], r["hookpoint_a"]) for r in rows} | {(r["model"], r["hookpoint_b"]) for r in rows}) > 1
    label = (lambda s, h: f"{s} @ {h}") if several else (lambda s, h: s)
    names = list(dict.fromkeys([label(r["sae_a"], r["hookpoint_a"]) for r in rows]
                               + [label(r["sae_b"], r["hookpoint_b"]) for r in rows]))  # fmt: skip
    metrics = [m for m in ORDER if m in columns] + [m for m in columns if m not in ORDER and "frac" not in m]
    figures = []
    for metric in metrics:
        grid = np.full((len(names), len(names)), np.nan)
        for r in rows:
            if isinstance(r.get(metric), int | float):
                a, b = (
                    names.index(label(r["sae_a"], r["hookpoint_a"])),
                    names.index(label(r["sae_b"], r["hookpoint_b"])),
                )
                grid[a, b] = r[metric]
        if np.isfinite(grid).any():
            figures.append(
                f'<figure><img alt="{esc(metric)}" src="data:image/svg+xml;base64,{_heatmap(grid, names, metric)}">'
                "</figure>"
            )
    return (
        "<p>Each ordered pair of SAEs (row A, column B; saebench compare OUTPUT has every metric): "
        "decoder_max_cosine is the mean over A's latents of the best cosine with B's decoder rows, "
        "hungarian_cosine the mean cosine of a one-to-one matching, activation_correlation the mean "
        "Pearson correlation of matched latents on the evaluation tokens, explanation_similarity the "
        "mean embedding cosine of matched latents' explanations.</p>" + "".join(figures)
    )


def _heatmap(grid: np.ndarray, names: list[str], metric: str) -> str:
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, no GUI backend

    size = 1.2 + 0.55 * len(names)
    fig = Figure(figsize=(size + 1.5, size))
    ax = fig.add_subplot()
    image: Any = ax.imshow(np.ma.masked_invalid(grid), vmin=min(0.0, float(np.nanmin(grid))), vmax=1.0, cmap="viridis")
    for (i, j), v in np.ndenumerate(grid):
        if np.isfinite(v):
            ax.text(j, i, f"{v:.2f}", ha="center", va="center", fontsize=7, color="white" if v < 0.6 else "black")
    ax.set_xticks(range(len(names)), names, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(names)), names, fontsize=7)
    ax.set_xlabel("SAE B", parse_math=False)
    ax.set_ylabel("SAE A", parse_math=False)
    ax.set_title(metric, fontsize=9, parse_math=False)
    fig.colorbar(image, ax=ax, fraction=0.046)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="svg", metadata={"Date": None})
    return base64.b64encode(buf.getvalue()).decode()
