"""The leaderboard: one row per (model, hook point, SAE), one column per ``scorer.metric``."""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path

from saebench.errors import ConfigError
from saebench.run.store import ResultsStore

ID_COLUMNS = ["model", "hookpoint", "sae"]


def leaderboard_rows(output: str | Path) -> tuple[list[str], list[dict]]:
    """(metric columns in first-seen order, rows) from a results folder: SAEs in the newest plan's order,
    then any others (of earlier matrices) in the order they were stored."""
    with ResultsStore.existing(output) as store:
        order = {key: i for i, key in enumerate(store.sae_order())}
        stored = [(c["model"], c["hookpoint"], c["sae"]) for c in store.cells()]
        metrics = list(store.metrics())
    keys = sorted(
        dict.fromkeys(stored), key=lambda k: order.get(k, len(order))
    )  # every SAE gets a row, even if all its cells failed
    rows = {k: dict(zip(ID_COLUMNS, k)) for k in keys}
    rank = {k: i for i, k in enumerate(keys)}
    columns: list[str] = []
    for model, hookpoint, sae, scorer, metric, value in sorted(metrics, key=lambda m: rank[m[:3]]):  # stable
        column = f"{scorer}.{metric}"
        if column not in columns:
            columns.append(column)
        rows[(model, hookpoint, sae)][column] = value
    return columns, list(rows.values())


def latent_rows(output: str | Path) -> tuple[list[str], list[dict]]:
    """One row per (model, hook point, SAE, latent): each explainer's explanation and each
    interpretability scorer's per-latent metrics (``explain[llm]``, ``detection.balanced_accuracy``...)."""
    with ResultsStore.existing(output) as store:
        stored = store.latent_rows()
    columns: list[str] = []
    rows: dict[tuple, dict] = {}
    for r in stored:
        row = rows.setdefault(
            (r["model"], r["hookpoint"], r["sae"], r["latent"]),
            {"model": r["model"], "hookpoint": r["hookpoint"], "sae": r["sae"], "latent": r["latent"]},
        )
        result = json.loads(r["result"]) if r["result"] else {}
        if r["status"] == "failed":
            values = {f"{r['scorer']}.error": r["error"]}
        elif r["scorer"].startswith("explain["):
            values = {r["scorer"]: result.get("text"), f"{r['scorer']}.failure": result.get("failure")}
        else:
            values = {f"{r['scorer']}.{k}": v for k, v in (result.get("metrics") or {}).items()}
        for column, value in values.items():
            if column not in columns:
                columns.append(column)
            row[column] = value
    return columns, list(rows.values())


def details_json(output: str | Path, scorer: str | None = None) -> str:
    """The details of every finished cell (of one scorer) as JSON: TreeProbe's trees and rules,
    per-task probe results, histograms..."""
    with ResultsStore.existing(output) as store:
        cells = [c for c in store.cell_details() if scorer is None or c["scorer"] == scorer]
    if scorer is not None and not cells:
        raise ConfigError(f"no finished cell of scorer {scorer!r} in this run", "--scorer")
    return json.dumps(cells, indent=1)


def render(
    output: str | Path, fmt: str = "csv", sort: str | None = None, descending: bool = False, latents: bool = False
) -> str:
    columns, rows = latent_rows(output) if latents else leaderboard_rows(output)
    ids = ID_COLUMNS + ["latent"] if latents else ID_COLUMNS
    if sort is not None:
        if sort not in columns and sort not in ids:
            raise ConfigError(f"unknown column {sort!r}; columns: {', '.join(ids + columns)}", "--sort")
        present = [r for r in rows if r.get(sort) is not None]
        missing = [r for r in rows if r.get(sort) is None]  # empty cells go last either way
        rows = sorted(present, key=lambda r: r[sort], reverse=descending) + missing
    header = ids + columns
    if fmt == "json":
        return json.dumps([{c: r.get(c) for c in header} for r in rows], indent=2)
    if fmt == "csv":
        buf = io.StringIO()
        writer = csv.writer(buf, lineterminator="\n")
        writer.writerow(header)
        for r in rows:
            writer.writerow(["" if r.get(c) is None else _csv(r[c]) for c in header])
        return buf.getvalue().rstrip("\n")
    if fmt == "markdown":
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        for r in rows:
            lines.append("| " + " | ".join(_md(r.get(c)) for c in header) + " |")
        return "\n".join(lines)
    raise ConfigError(f"unknown format {fmt!r}; formats: csv, json, markdown", "--format")


def _csv(value) -> str:
    return repr(value) if isinstance(value, float) else str(value)


def _md(value) -> str:
    if value is None:
        return ""
    if isinstance(value, str):
        return " ".join(value.split()).replace("|", "\\|")
    if isinstance(value, float):
        if value != 0 and (abs(value) >= 1e5 or abs(value) < 1e-3):
            return f"{value:.3g}"
        return f"{value:.4f}".rstrip("0").rstrip(".") if not math.isinf(value) else str(value)
    return str(value)
