"""``saebench report OUTPUT``: one self-contained HTML page of a run's results, read from the store alone.

Sections: the leaderboard (sortable), the sparsity–fidelity frontier plots of the metrics each
scorer declares (saebench.results.plots), scaling fits and SAE-to-SAE similarity heatmaps, per-latent cards with highlighted activating examples,
the sections plugins contribute (``register_report_sections``: TreeProbe's trees are one), and the
run's configuration and versions. The page fetches nothing (saebench.results.html).

Uncertainty (saebench.results.intervals): a leaderboard value whose cell stored per-unit statistics
shows "value ± half-width" of its bootstrap interval (the bounds in its tooltip), the frontier plots
draw the intervals as error bars, and per headline metric with a direction the SAEs tied with the
best of their model and hook point (a bootstrap of the difference, paired where the SAEs share
units) are starred. Headline metrics without an interval are listed with the reason.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from saebench import plugin_manager
from saebench.errors import SaebenchError
from saebench.interp.records import RecordSet
from saebench.results.heatmaps import similarity_section
from saebench.results.html import esc, fmt, page, split_column
from saebench.results.intervals import (
    STABLE_RANK_CORRELATION,
    SAEKey,
    StoredUnits,
    intervals,
    reliability,
    tied_with_best,
    without_interval,
)
from saebench.results.leaderboard import ID_COLUMNS, leaderboard_rows
from saebench.results.plots import frontier, headline
from saebench.results.scaling import scaling_section
from saebench.run.store import ResultsStore
from saebench.uncertainty import DEFAULT_RESAMPLES, Interval

EXAMPLES_PER_LATENT = 5


def write_report(
    output: str | Path, file: str | Path | None = None, latents: int = 50, resamples: int = DEFAULT_RESAMPLES
) -> Path:
    """Render the report of the results folder ``output`` to ``file`` (default OUTPUT/report.html);
    intervals are bootstrapped with ``resamples`` draws."""
    columns, rows = leaderboard_rows(output)  # also the leaderboard's one-line error when there is no store
    noise = Noise.of(StoredUnits.load(output), columns, rows, resamples)
    with ResultsStore.existing(output) as store:
        cells, details, runs = store.cells(), store.cell_details(), store.runs()
        scorers, configs = store.scorer_info(), store.cell_configs()
        archs = architectures(store.sae_configs(), configs)
        cards = _latent_cards(store, details, latents)
        stored = _stored_cells(details, rows, scorers)
        scaling = scaling_section(store, resamples)
    name = runs[-1]["matrix"].get("name") if runs else None
    sections = [
        ("leaderboard", "Leaderboard", _leaderboard(columns, rows, cells, noise)),
        ("frontier", "Sparsity–fidelity frontier", frontier(columns, rows, archs, scorers, noise.intervals)),
        ("latents", "Latents", cards),
    ]
    if scaling is not None:
        sections.insert(2, ("scaling", "Scaling", scaling))
    similarity = similarity_section(output)
    if similarity is not None:
        sections.insert(2, ("similarity", "SAE-to-SAE similarity", similarity))
    repeats = reliability(columns, rows)
    if repeats:
        sections.insert(2, ("seeds", "Across seeds", _reliability(repeats)))
    for info in plugin_manager.get_registry().of_kind("report_section"):
        body = info.obj().render(stored)
        if body is not None:
            sections.append((info.name, info.obj.title or info.name, body))
    sections.append(("config", "Configuration", _config(runs)))
    path = Path(file) if file is not None else Path(output) / "report.html"
    path.write_text(page(f"saebench report: {name}" if name else "saebench report", sections), encoding="utf-8")
    return path


def architectures(saes: dict[tuple[str, str, str], dict], configs: list[dict]) -> dict[tuple[str, str, str], str]:
    """Each SAE's architecture: as the run resolved it (the store's ``saes``; ``baseline:KIND`` for a
    baseline, which is a TopK SAE but its own series), else from a trained SAE's ``train`` block in its
    cells' configuration, else "unknown"."""
    out = {key: _arch(cfg) for key, cfg in saes.items() if cfg.get("arch")}
    for c in configs:
        key = (c["model"], c["hookpoint"], c["sae"])
        train = (c["config"].get("sae") or {}).get("train") if isinstance(c["config"].get("sae"), dict) else None
        if key not in out and isinstance(train, dict) and train.get("arch"):
            out[key] = str(train["arch"])
    for c in configs:
        out.setdefault((c["model"], c["hookpoint"], c["sae"]), "unknown")
    return out


def _arch(cfg: dict) -> str:
    baseline = cfg.get("baseline")
    return f"baseline:{baseline.get('kind')}" if isinstance(baseline, dict) else str(cfg["arch"])


def _stored_cells(details: list[dict], rows: list[dict], scorers: dict[str, dict]) -> list[dict[str, Any]]:
    """The finished cells as a report section sees them: with their metrics and their scorer's plugin name."""
    metrics = {(r["model"], r["hookpoint"], r["sae"]): r for r in rows}
    out = []
    for c in details:
        row = metrics.get((c["model"], c["hookpoint"], c["sae"]), {})
        own = {split_column(k)[1]: v for k, v in row.items() if split_column(k)[0] == c["scorer"]}
        plugin = scorers.get(c["scorer"], {}).get("plugin") or c["scorer"].split("[")[0]
        out.append({**c, "plugin": plugin, "metrics": own})
    return out


# -- uncertainty -------------------------------------------------------------------------------------
@dataclass
class Noise:
    """What the page shows of the intervals: per SAE and column its Interval, per directed headline
    column the SAEs tied with the best, and the headline columns without an interval (with why)."""

    intervals: dict[SAEKey, dict[str, Interval]] = field(default_factory=dict)
    tied: dict[str, set[SAEKey]] = field(default_factory=dict)
    missing: dict[str, str] = field(default_factory=dict)
    resamples: int = DEFAULT_RESAMPLES

    @classmethod
    def of(cls, stored: StoredUnits, columns: list[str], rows: list[dict], resamples: int) -> Noise:
        ivs = intervals(stored, columns, resamples=resamples)
        tied = {}
        for column in columns:
            declared = headline(column, stored.scorers)
            if declared is None or declared.higher_is_better is None:
                continue
            marked = tied_with_best(stored, column, rows, resamples=resamples)
            contested = _contested(stored, column, rows)  # a lone SAE is not "tied with the best"
            tied[column] = {k for k in marked if k[:2] in contested}
        return cls(ivs, tied, without_interval(stored, columns, rows), resamples)

    def interval(self, row: dict, column: str) -> Interval | None:
        iv = self.intervals.get((row["model"], row["hookpoint"], row["sae"]), {}).get(column)
        return iv if iv is not None and iv.low is not None and iv.high is not None else None

    def is_tied(self, row: dict, column: str) -> bool:
        return (row["model"], row["hookpoint"], row["sae"]) in self.tied.get(column, ())


def _contested(stored: StoredUnits, column: str, rows: list[dict]) -> set[tuple[str, str]]:
    """The (model, hook point)s where at least two SAEs have a value of ``column`` and its units."""
    seen: dict[tuple[str, str], int] = {}
    for r in rows:
        key = (r["model"], r["hookpoint"], r["sae"])
        if isinstance(r.get(column), (int, float)) and stored.units(key, column) is not None:
            seen[key[:2]] = seen.get(key[:2], 0) + 1
    return {group for group, n in seen.items() if n >= 2}


def _unit_names(noise: Noise) -> str:
    kinds = dict.fromkeys(iv.unit for by in noise.intervals.values() for iv in by.values() if iv.low is not None)
    return " / ".join(_plural(k) for k in sorted(kinds))


def _plural(unit: str) -> str:
    return "test examples" if unit == "example" else f"{unit}s"


def _legend(noise: Noise) -> str:
    """The line above the table that says what ± and ★ mean (empty when the page shows neither)."""
    units = _unit_names(noise)
    if not units:
        return ""
    level = next(iv.level for by in noise.intervals.values() for iv in by.values())
    star = "; ★ tied with the best within noise (per model and hook point)" if any(noise.tied.values()) else ""
    return (
        f'<p class="note">± : {level:.0%} bootstrap interval over {esc(units)} ({noise.resamples} resamples){star}</p>'
    )


def _missing(noise: Noise) -> str:
    if not noise.missing:
        return ""
    items = "".join(f"<li><code>{esc(c)}</code>: {esc(why)}</li>" for c, why in noise.missing.items())
    return f'<h3>Metrics without an interval</h3><ul class="no-interval">{items}</ul>'


def _reliability(repeats: list[dict[str, Any]]) -> str:
    rows = []
    for r in repeats:
        if r["stable"] is None:
            verdict = "no ranking to compare (fewer than 3 SAEs, or all equal)"
        elif r["stable"]:
            verdict = "stable"
        else:
            verdict = '<strong class="unstable">unstable</strong>: the ranking changes with the seed'
        rows.append(
            f"<tr><td><code>{esc(r['metric'])}</code></td><td>{r['seeds']}</td><td>{r['saes']}</td>"
            f"<td>{fmt(r['mean_rank_correlation'])}</td><td>{fmt(r['min_rank_correlation'])}</td><td>{verdict}</td></tr>"
        )
    head = "".join(f"<th>{h}</th>" for h in ("metric", "seeds", "SAEs", "mean ρ", "min ρ", ""))
    return (
        f'<p class="note">Spearman correlation of the SAEs\' values between every two seeds; a metric is '
        f"flagged unstable when the mean is below {STABLE_RANK_CORRELATION}.</p>"
        f'<table class="reliability"><thead><tr>{head}</tr></thead><tbody>{"".join(rows)}</tbody></table>'
    )


# -- leaderboard -------------------------------------------------------------------------------------
def _leaderboard(columns: list[str], rows: list[dict], cells: list[dict], noise: Noise | None = None) -> str:
    if not rows:
        return '<p class="empty">No results in this store yet.</p>'
    noise = noise or Noise()
    groups: dict[str, list[str]] = {}
    for column in columns:
        groups.setdefault(split_column(column)[0], []).append(column)
    ordered = ID_COLUMNS + [c for cols in groups.values() for c in cols]
    top = "".join(f'<th rowspan="2" data-col="{i}" tabindex="0">{esc(c)}</th>' for i, c in enumerate(ID_COLUMNS))
    top += "".join(f'<th class="group" colspan="{len(cols)}">{esc(g)}</th>' for g, cols in groups.items())
    second = "".join(
        f'<th data-col="{i}" data-type="num" tabindex="0" title="{esc(c)}">{esc(split_column(c)[1])}</th>'
        for i, c in enumerate(ordered)
        if i >= len(ID_COLUMNS)
    )
    body = "".join(
        "<tr>"
        + "".join(
            _cell(r.get(c), noise.interval(r, c), noise.is_tied(r, c)) if i >= len(ID_COLUMNS) else _cell(r.get(c))
            for i, c in enumerate(ordered)
        )
        + "</tr>"
        for r in rows
    )
    out = (
        f'{_legend(noise)}<div class="scroll"><table class="sortable" id="leaderboard-table"><thead><tr>{top}</tr><tr>{second}</tr>'
        f'</thead><tbody>{body}</tbody></table></div><p class="note">Click a column header to sort; '
        "click again to reverse. Empty cells: not computed.</p>"
    )
    failed = [c for c in cells if c["status"] == "failed"]
    if failed:
        items = "".join(
            f'<li>{esc(c["sae"])} × {esc(c["scorer"])}: <span class="error">{esc(c["error"])}</span></li>'
            for c in failed
        )
        out += f"<details><summary>{len(failed)} failed cell(s)</summary><ul>{items}</ul></details>"
    return out + _missing(noise)


def _cell(value: Any, iv: Interval | None = None, tied: bool = False) -> str:
    """A table cell; a number with an interval reads "value ± half-width" (the bounds in its tooltip)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        key = repr(float(value)) if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
        text, title = esc(fmt(value)), ""
        if iv is not None and iv.low is not None and iv.high is not None:
            text += f' <span class="pm">± {esc(_like(fmt(value), (iv.high - iv.low) / 2))}</span>'
            bounds = f"{iv.level:.0%} interval [{iv.low:.6g}, {iv.high:.6g}] over {iv.units} {_plural(iv.unit)}"
            title = f' title="{esc(bounds)}"'
        if tied:
            text += ' <span class="star" title="tied with the best within noise">★</span>'
        return f'<td class="{"num tied" if tied else "num"}" data-sort="{esc(key)}"{title}>{text}</td>'
    return f'<td data-sort="{esc("" if value is None else value)}">{esc("" if value is None else value)}</td>'


def _like(shown: str, number: float) -> str:
    """``number`` with as many decimals as the formatted value ``shown`` (fmt's own form when that would
    read 0, or when ``shown`` is in e-notation)."""
    if "e" in shown or not math.isfinite(number):
        return fmt(number)
    decimals = len(shown.split(".")[1]) if "." in shown else 0
    out = f"{number:,.{decimals}f}"
    return out if number == 0 or out.strip("0.,") else fmt(number)


# -- latent cards ------------------------------------------------------------------------------------
def _latent_cards(store: ResultsStore, details: list[dict], limit: int) -> str:
    by_sae: dict[tuple, dict[int, dict[str, dict]]] = {}
    for r in store.latent_rows():
        by_sae.setdefault((r["model"], r["hookpoint"], r["sae"]), {}).setdefault(r["latent"], {})[r["scorer"]] = r
    paths = {
        (c["model"], c["hookpoint"], c["sae"]): c["details"].get("records")
        for c in details
        if c["scorer"].startswith("explain[") and isinstance(c["details"], dict)
    }
    parts = []
    for key, latents in by_sae.items():
        if not any(s.startswith("explain[") for per in latents.values() for s in per):
            continue
        shown = sorted(latents)[: max(limit, 0)]
        records, note = _records(paths.get(key), shown)
        parts.append(
            f"<h3>{esc(key[2])} <small>{esc(key[0])} · {esc(key[1])} · {len(shown)} of {len(latents)} "
            "explained latents</small></h3>"
        )
        if note:
            parts.append(f'<p class="note">{esc(note)}</p>')
        parts.append('<div class="cards">' + "".join(_card(j, latents[j], records.get(j)) for j in shown) + "</div>")
    return "".join(parts) or '<p class="empty">No explained latents in this run.</p>'


def _records(path: Any, wanted: Iterable[int]) -> tuple[dict, str | None]:
    """The records of the ``wanted`` latents from the explain cell's records file, or from its parts
    (a Ray run splits them), read in order until every wanted latent is found. Examples are data, not
    metadata: they stay in the cache's records files, and a cleared cache shows cards without them."""
    paths = [path] if isinstance(path, str) else path if isinstance(path, list) else None
    if not paths or not all(isinstance(p, str) for p in paths):
        return {}, "Its explain cell names no latent-records file (computed before reports existed): no examples."
    found: dict = {}
    wanted = set(wanted)
    for p in paths:
        if not Path(p).is_file():
            return found, f"The latent-records file {p} is gone (a cleared cache?): examples are not shown."
        try:
            found.update((r.latent, r) for r in RecordSet.load(p).records if r.latent in wanted)
        except SaebenchError as exc:
            return found, f"{exc}: examples are not shown."
        if len(found) == len(wanted):
            break
    return found, None


def _card(latent: int, per_scorer: dict[str, dict], record: Any) -> str:
    out = [f'<article class="card"><h4>latent {esc(latent)}</h4>']
    if record is not None:
        out.append(
            f'<p class="note">max activation {esc(fmt(record.max_activation))} · density '
            f"{esc(fmt(record.density))} · {esc(record.n_activating)} activating windows</p>"
        )
    for scorer, row in sorted(per_scorer.items(), key=lambda kv: not kv[0].startswith("explain[")):
        result = json.loads(row["result"]) if row["result"] else {}
        if row["status"] == "failed":
            text = f'<span class="error">failed: {esc(row["error"])}</span>'
        elif scorer.startswith("explain["):
            text = (
                esc(result["text"])
                if result.get("text")
                else f'<span class="error">no explanation: {esc(result.get("failure"))}</span>'
            )
        else:
            text = " · ".join(f"{esc(k)} {esc(fmt(v))}" for k, v in (result.get("metrics") or {}).items())
        out.append(f"<p><b>{esc(scorer)}</b> {text}</p>")
    if record is not None:
        unique = {e.window: e for e in record.train + record.test}.values()
        top = sorted(unique, key=lambda e: -e.max_activation)[:EXAMPLES_PER_LATENT]
        scale = max((e.max_activation for e in top), default=0.0) or 1.0
        out.extend(f'<div class="ex">{_tokens(e.tokens, e.activations, scale)}</div>' for e in top)
    return "".join(out) + "</article>"


def _tokens(tokens: list[str], activations: list[float], scale: float) -> str:
    spans = []
    for token, act in zip(tokens, activations):
        if act > 0:
            alpha = min(act / scale, 1.0)
            spans.append(
                f'<span class="tok" style="background:rgba(230,85,13,{alpha:.2f})" '
                f'title="{esc(fmt(act))}">{esc(token)}</span>'
            )
        else:
            spans.append(esc(token))
    return "".join(spans)


# -- configuration -----------------------------------------------------------------------------------
def _config(runs: list[dict]) -> str:
    if not runs:
        return '<p class="empty">No run recorded.</p>'
    import yaml

    last = runs[-1]
    run_id, seed = last["run_id"], last["seed"]
    text = yaml.safe_dump(
        last["matrix"], sort_keys=False, allow_unicode=True, width=float("inf")
    )  # a folded line would split a value the reader searches for
    version_rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in last["versions"].items())
    run_rows = "".join(
        f"<tr><td>{esc(r['run_id'])}</td><td>{esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['started'])))}</td>"
        f"<td>{esc(fmt(r['finished'] - r['started']) + ' s' if r['finished'] else '')}</td><td>{esc(r['status'])}</td></tr>"
        for r in runs
    )
    return (
        f"<h3>Matrix of run {esc(run_id)} (seed {esc(seed)})</h3><pre>{esc(text)}</pre>"
        f"<h3>Versions</h3><table>{version_rows}</table>"
        f"<h3>Runs</h3><table><thead><tr><th>run</th><th>started</th><th>took</th><th>status</th></tr></thead>"
        f"<tbody>{run_rows}</tbody></table>"
    )
