"""The leaderboard: one row per (model, hook point, SAE), one column per ``scorer.metric``."""

from __future__ import annotations

import csv
import fnmatch
import io
import json
import math
import statistics
from dataclasses import dataclass, field
from pathlib import Path

from saebench.errors import ConfigError
from saebench.results.html import split_column
from saebench.results.intervals import StoredUnits, intervals, without_interval
from saebench.results.plots import headline
from saebench.run.plan import compared_with, split_seed
from saebench.run.store import ResultsStore
from saebench.uncertainty import DEFAULT_LEVEL, DEFAULT_RESAMPLES

ID_COLUMNS = ["model", "hookpoint", "sae"]
CI_SUFFIXES = (".ci_low", ".ci_high")
SEED_SD = ".seed_sd"


def leaderboard_rows(output: str | Path) -> tuple[list[str], list[dict]]:
    """(metric columns by scorer in the newest plan's order, rows) from a results folder: SAEs in that plan's order,
    then any others (of earlier matrices) in the order they were stored."""
    with ResultsStore.existing(output) as store:
        order = {key: i for i, key in enumerate(store.sae_order())}
        scorer_rank = {scorer: i for i, scorer in enumerate(store.scorer_order())}
        stored = [(c["model"], c["hookpoint"], c["sae"]) for c in store.cells()]
        metrics = [m for m in store.metrics() if compared_with(m[3]) is None]  # pairs: saebench compare
    keys = sorted(
        dict.fromkeys(stored), key=lambda k: order.get(k, len(order))
    )  # every SAE gets a row, even if all its cells failed
    rows = {k: dict(zip(ID_COLUMNS, k)) for k in keys}
    rank = {k: i for i, k in enumerate(keys)}
    columns: dict[str, int] = {}  # column -> its scorer's place in the plan
    for model, hookpoint, sae, scorer, metric, value in sorted(metrics, key=lambda m: rank[m[:3]]):  # stable
        column = f"{scorer}.{metric}"
        columns.setdefault(column, scorer_rank.get(scorer, len(scorer_rank)))
        rows[(model, hookpoint, sae)][column] = value
    return _across_seeds(sorted(columns, key=columns.__getitem__), list(rows.values()))


def _across_seeds(columns: list[str], rows: list[dict]) -> tuple[list[str], list[dict]]:
    """Repeated cells (``detection@s1.auc``...) as ``detection.auc``, the mean over seeds, beside
    ``detection.auc.seed_sd`` (the sample standard deviation across seeds) and ``.seeds`` (how many
    had a value); the per-seed columns follow every other column."""
    groups: dict[str, list[str]] = {}
    for c in columns:
        label, metric = split_column(c)
        base, seed = split_seed(label)
        if seed is not None:
            groups.setdefault(f"{base}.{metric}", []).append(c)
    if not groups:
        return columns, rows
    for r in rows:
        for column, per_seed in groups.items():
            values = [r[c] for c in per_seed if isinstance(r.get(c), int | float) and math.isfinite(r[c])]
            r[column] = statistics.fmean(values) if values else None
            r[f"{column}{SEED_SD}"] = statistics.stdev(values) if len(values) > 1 else None
            r[f"{column}.seeds"] = float(len(values))
    out: list[str] = []
    for c in columns:
        label, metric = split_column(c)
        base, seed = split_seed(label)
        if seed is None:
            out.append(c)
        elif f"{base}.{metric}" not in out:
            out += [f"{base}.{metric}", f"{base}.{metric}{SEED_SD}", f"{base}.{metric}.seeds"]
    return out + [c for per_seed in groups.values() for c in per_seed], rows


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


@dataclass
class View:
    """What a leaderboard shows besides the rows: intervals, a column selection, the compact headline view."""

    ci: bool = False
    level: float = DEFAULT_LEVEL
    resamples: int = DEFAULT_RESAMPLES
    columns: str | None = None  # comma-separated globs over the metric columns
    compact: bool = False  # one headline metric per scorer, values shown as "v ± h"
    notes: list[str] = field(default_factory=list)  # filled by render: what a reader should know (no interval...)


def render(
    output: str | Path,
    fmt: str = "csv",
    sort: str | None = None,
    descending: bool = False,
    latents: bool = False,
    view: View | None = None,
) -> str:
    view = view or View()
    columns, rows = latent_rows(output) if latents else leaderboard_rows(output)
    ids = ID_COLUMNS + ["latent"] if latents else ID_COLUMNS
    if sort is not None:
        if sort not in columns and sort not in ids:
            raise ConfigError(f"unknown column {sort!r}; columns: {', '.join(ids + columns)}", "--sort")
        present = [r for r in rows if r.get(sort) is not None]
        missing = [r for r in rows if r.get(sort) is None]  # empty cells go last either way
        rows = sorted(present, key=lambda r: r[sort], reverse=descending) + missing
    if not latents:
        columns = _select(output, columns, rows, view)
    header = ids + columns
    if fmt == "markdown" and view.compact:
        return table([c for c in header if not c.endswith(CI_SUFFIXES)], rows, fmt, cell=_pm, notes=view.notes)
    return table(header, rows, fmt, notes=view.notes)


def table(header: list[str], rows: list[dict], fmt: str, cell=None, notes: list[str] = ()) -> str:
    """Rows as CSV, JSON or a markdown table (``notes`` below it); ``cell(row, column)`` formats a markdown cell."""
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
        show = cell or (lambda r, c: _md(r.get(c)))
        lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in header) + "|"]
        lines += ["| " + " | ".join(show(r, c) for c in header) + " |" for r in rows]
        return "\n".join(lines + [f"\n{n}" for n in notes])
    raise ConfigError(f"unknown format {fmt!r}; formats: csv, json, markdown", "--format")


def _select(output: str | Path, columns: list[str], rows: list[dict], view: View) -> list[str]:
    """The metric columns a view shows, with ``.ci_low``/``.ci_high`` beside each that has an interval."""
    if view.columns:
        globs = [g.strip() for g in view.columns.split(",") if g.strip()]
        chosen = [c for c in columns if any(fnmatch.fnmatchcase(c, g) for g in globs)]
        if not chosen:
            raise ConfigError(f"no column matches {view.columns!r}; columns: {', '.join(columns)}", "--columns")
        columns = chosen
    if not (view.ci or view.compact):
        return columns
    stored = StoredUnits.load(output)
    if view.compact and not view.columns:
        columns = _headline_columns(columns, stored.scorers)
        hidden = len(leaderboard_rows(output)[0]) - len(columns)
        view.notes.append(
            f"one headline metric per scorer; {hidden} more column(s): --all (CSV and JSON have every one)"
        )
    found = intervals(stored, columns, level=view.level, resamples=view.resamples)
    out: list[str] = []
    for c in columns:
        out.append(c)
        if any(c in found.get(_key(r), {}) for r in rows):
            out += [f"{c}.ci_low", f"{c}.ci_high"]
            for r in rows:
                iv = found.get(_key(r), {}).get(c)
                r[f"{c}.ci_low"], r[f"{c}.ci_high"] = (iv.low, iv.high) if iv else (None, None)
    if any(c.endswith(CI_SUFFIXES) for c in out):
        view.notes.append(
            f"intervals: {view.level:.0%} percentile bootstrap over whole units (contexts, latents, test examples), "
            f"{view.resamples} resamples"
        )
    for column, why in without_interval(stored, columns, rows).items():
        view.notes.append(f"no interval for {column}: {why}")
    return out


def _headline_columns(columns: list[str], scorers: dict) -> list[str]:
    """Per scorer label, its first column that a headline declaration covers."""
    out, seen = [], set()
    for c in columns:
        label = split_column(c)[0]
        if split_seed(label)[1] is not None or label in seen or headline(c, scorers) is None:
            continue
        seen.add(label)
        out.append(c)
    return out


def _key(r: dict) -> tuple[str, str, str]:
    return (r["model"], r["hookpoint"], r["sae"])


def _pm(r: dict, c: str) -> str:
    """A compact cell: the value, with ± the interval's half-width when it has one."""
    value, low, high = r.get(c), r.get(f"{c}.ci_low"), r.get(f"{c}.ci_high")
    text = _md(value)
    if isinstance(value, float) and low is not None and high is not None:
        text += f" ± {_md((high - low) / 2)}"
    if r.get(f"{c}{SEED_SD}") is not None:
        text += f" (sd {_md(r[f'{c}{SEED_SD}'])} over {int(r[f'{c}.seeds'])} seeds)"
    return text


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
