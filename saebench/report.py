"""``saebench report OUTPUT``: one self-contained HTML page of a run's results.

Sections: the leaderboard (sortable), sparsity-fidelity frontier plots, per-latent cards with
highlighted activating examples, TreeProbe trees, and the run's configuration and versions.

The page fetches nothing: CSS and JS are inline and plots are data-URI ``<img>``s (an ``<img>``
never runs a script inside an SVG). Every string that comes from the data goes through :func:`esc`;
as a second line of defence the page's Content-Security-Policy allows no script but its own (by
hash), so an escaping slip would show up as refused markup, not run.
"""

from __future__ import annotations

import base64
import hashlib
import html
import io
import json
import math
import re
import string
import time
from pathlib import Path
from typing import Any, Iterable

from saebench.leaderboard import ID_COLUMNS, leaderboard_rows
from saebench.store import ResultsStore

L0 = "sparsity.l0"
#: the headline metrics of each built-in scorer that are drawn against L0 (regex over metric names)
PLOTTED = {
    "reconstruction": r"explained_variance|mse|cosine",
    "downstream": r"ce_loss_score|kl_score|delta_lm_loss",
    "detection": r"balanced_accuracy|auc", "fuzzing": r"balanced_accuracy|auc", "embedding": r"auc",
    "surprisal": r"auc", "intervention": r"score", "simulation": r"correlation",
    "sparse_probing": r"k\d+_accuracy", "absorption": r"mean_absorption_fraction",
    "treeprobe": r"head_accuracy|tree_hard_accuracy|rule_flip_rate",
}
#: series colours, given to the architectures in sorted order so an architecture has one colour in every plot
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
EXAMPLES_PER_LATENT = 5
# "detection[llm].auc" -> ("detection[llm]", "auc"): an explainer's name may hold a dot
_COLUMN = re.compile(r"([^.\[]*(?:\[[^\]]*\])?)\.(.+)", re.S)

CSS = """
body{font:14px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#1d2330;margin:0;background:#f6f7f9}
header{background:#1d2330;color:#fff;padding:14px 28px}header h1{margin:0;font-size:20px}
nav a{color:#c9d4ff;margin-right:16px;text-decoration:none}main{max-width:1280px;margin:0 auto;padding:8px 28px 40px}
section{background:#fff;border:1px solid #e1e4ea;border-radius:6px;padding:4px 18px 16px;margin-top:18px}
h2{font-size:17px;border-bottom:1px solid #e1e4ea;padding-bottom:6px}h3{font-size:15px;margin:18px 0 6px}
small,.note,.empty{color:#667085}.empty{font-style:italic}.error{color:#b42318}
.scroll{overflow-x:auto}table{border-collapse:collapse;font-variant-numeric:tabular-nums}
th,td{padding:3px 9px;border-bottom:1px solid #eceef2;white-space:nowrap}td.num{text-align:right}
td:not(.num){white-space:normal;max-width:18em;overflow-wrap:break-word}
thead th{background:#f0f2f5;font-weight:600}th.group{text-align:center;border-left:2px solid #fff}
th[data-col]{cursor:pointer;user-select:none}th[data-col]:hover{background:#e3e7ee}
th[aria-sort=ascending]::after{content:" \\25B2"}th[aria-sort=descending]::after{content:" \\25BC"}
tbody tr:nth-child(even){background:#fafbfc}
.plots{display:grid;grid-template-columns:repeat(auto-fill,minmax(380px,1fr));gap:12px}
.plots img{width:100%;height:auto;border:1px solid #eceef2}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(420px,1fr));gap:12px}
.card{border:1px solid #e1e4ea;border-radius:6px;padding:8px 12px}.card h4{margin:2px 0 4px}
.card p{margin:4px 0}.ex{font:12px/1.6 ui-monospace,Menlo,Consolas,monospace;white-space:pre-wrap;
word-break:break-word;border-top:1px dashed #eceef2;padding:3px 0}.tok{border-radius:2px}
ul.tree,ul.tree ul{list-style:none;padding-left:18px;border-left:1px solid #d0d5dd;margin:2px 0}
ul.tree li{margin:3px 0}.rule{font-weight:600}.classes{color:#667085}.leaf{color:#175cd3}
.node-info{font-size:12px;color:#475467;margin:2px 0 2px 18px}ul.tree .node-info ul{border:0;padding-left:8px}pre{background:#f6f7f9;padding:10px;overflow:auto}
"""

# Sorts the leaderboard by the data-sort keys: numbers numerically, blanks last both ways.
JS = """
document.querySelectorAll("table.sortable").forEach(function (table) {
  var heads = table.querySelectorAll("thead th[data-col]");
  heads.forEach(function (th) {
    function sort() {
      var col = Number(th.dataset.col), numeric = th.dataset.type === "num";
      var dir = th.getAttribute("aria-sort") === "ascending" ? -1 : 1;
      heads.forEach(function (h) { h.removeAttribute("aria-sort"); });
      th.setAttribute("aria-sort", dir > 0 ? "ascending" : "descending");
      var body = table.tBodies[0], rows = Array.prototype.slice.call(body.rows);
      rows.sort(function (a, b) {
        var x = a.cells[col].dataset.sort, y = b.cells[col].dataset.sort;
        if (x === "" || y === "") { return (x === "") - (y === ""); }
        return dir * (numeric ? Number(x) - Number(y) : x.localeCompare(y));
      });
      rows.forEach(function (r) { body.appendChild(r); });
    }
    th.addEventListener("click", sort);
    th.addEventListener("keydown", function (e) { if (e.key === "Enter") { sort(); } });
  });
});
"""

PAGE = string.Template("""<!doctype html>
<html lang="en"><head><meta charset="utf-8">
<meta http-equiv="Content-Security-Policy" content="default-src 'none'; img-src data:; style-src 'unsafe-inline'; script-src '$script_hash'">
<meta name="viewport" content="width=device-width, initial-scale=1">
<title>$title</title><style>$css</style></head>
<body><header><h1>$title</h1><nav><a href="#leaderboard">Leaderboard</a><a href="#frontier">Frontier</a>
<a href="#latents">Latents</a><a href="#trees">TreeProbe</a><a href="#config">Configuration</a></nav></header>
<main>$body</main><script>$js</script></body></html>
""")


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any) -> str:
    """3-4 significant digits; whole numbers (token counts) in full."""
    if value is None:
        return ""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return str(value)
    if float(value).is_integer() and abs(value) < 1e15:
        return f"{int(value):,}"
    if abs(value) >= 1000:
        return f"{value:,.0f}"
    return f"{value:.3e}" if abs(value) < 1e-3 else f"{value:.4g}"


def split_column(column: str) -> tuple[str, str]:
    m = _COLUMN.fullmatch(column)
    return (m.group(1), m.group(2)) if m else (column, "")


def write_report(output: str | Path, file: str | Path | None = None, latents: int = 50) -> Path:
    """Render the report of the results folder ``output`` to ``file`` (default OUTPUT/report.html)."""
    columns, rows = leaderboard_rows(output)  # also the leaderboard's one-line error when there is no store
    store = ResultsStore(output, create=False)
    try:
        cells, details = store.cells(), store.cell_details()
        archs = _architectures(store)
        cards = _latent_cards(store, details, latents)
        runs = store.runs()
    finally:
        store.close()
    name = runs[-1]["matrix"].get("name") if runs else None
    sections = [
        ("leaderboard", "Leaderboard", _leaderboard(columns, rows, cells)),
        ("frontier", "Sparsity–fidelity frontier", _plots(columns, rows, archs)),
        ("latents", "Latents", cards),
        ("trees", "TreeProbe trees", _trees(details)),
        ("config", "Configuration", _config(runs)),
    ]
    body = "".join(f'<section id="{sid}"><h2>{title}</h2>{content}</section>' for sid, title, content in sections)
    script_hash = "sha256-" + base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()
    page = PAGE.substitute(title=esc(f"saebench report: {name}" if name else "saebench report"), css=CSS, js=JS,
                           script_hash=script_hash, body=body)
    path = Path(file) if file is not None else Path(output) / "report.html"
    path.write_text(page, encoding="utf-8")
    return path


# -- leaderboard -------------------------------------------------------------------------------------
def _leaderboard(columns: list[str], rows: list[dict], cells: list[dict]) -> str:
    if not rows:
        return '<p class="empty">No results in this store yet.</p>'
    groups: dict[str, list[str]] = {}
    for column in columns:
        groups.setdefault(split_column(column)[0], []).append(column)
    ordered = ID_COLUMNS + [c for cols in groups.values() for c in cols]
    top = "".join(f'<th rowspan="2" data-col="{i}" tabindex="0">{esc(c)}</th>' for i, c in enumerate(ID_COLUMNS))
    top += "".join(f'<th class="group" colspan="{len(cols)}">{esc(g)}</th>' for g, cols in groups.items())
    second = "".join(f'<th data-col="{i}" data-type="num" tabindex="0" title="{esc(c)}">{esc(split_column(c)[1])}</th>'
                     for i, c in enumerate(ordered) if i >= len(ID_COLUMNS))
    body = "".join("<tr>" + "".join(_cell(r.get(c)) for c in ordered) + "</tr>" for r in rows)
    out = (f'<div class="scroll"><table class="sortable" id="leaderboard-table"><thead><tr>{top}</tr><tr>{second}</tr>'
           f'</thead><tbody>{body}</tbody></table></div><p class="note">Click a column header to sort; '
           'click again to reverse. Empty cells: not computed.</p>')
    failed = [c for c in cells if c["status"] == "failed"]
    if failed:
        items = "".join(f'<li>{esc(c["sae"])} × {esc(c["scorer"])}: <span class="error">{esc(c["error"])}</span></li>'
                        for c in failed)
        out += f"<details><summary>{len(failed)} failed cell(s)</summary><ul>{items}</ul></details>"
    return out


def _cell(value: Any) -> str:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        key = repr(float(value)) if math.isfinite(value) else ("Infinity" if value > 0 else "-Infinity")
        return f'<td class="num" data-sort="{esc(key)}">{esc(fmt(value))}</td>'
    return f'<td data-sort="{esc("" if value is None else value)}">{esc("" if value is None else value)}</td>'


# -- frontier plots ----------------------------------------------------------------------------------
def _architectures(store: ResultsStore) -> dict[tuple[str, str, str], str]:
    out: dict[tuple[str, str, str], str] = {}
    for c in store.cell_configs():
        key = (c["model"], c["hookpoint"], c["sae"])
        if out.get(key, "unknown") == "unknown":
            out[key] = _arch(c["config"].get("sae"))
    return out


def _arch(identity: Any) -> str:
    """A trained SAE's architecture is in its training config; a checkpoint's only in its own cfg.json
    (native ``arch``, SAELens ``architecture``) while that is still on disk."""
    if not isinstance(identity, dict):
        return "unknown"
    train = identity.get("train")
    if isinstance(train, dict) and train.get("arch"):
        return str(train["arch"])
    if isinstance(identity.get("path"), str):
        try:
            cfg = json.loads((Path(identity["path"]) / "cfg.json").read_text())
            arch = cfg.get("arch") or cfg.get("architecture")
            if isinstance(arch, str) and arch:
                return arch
        except (OSError, ValueError, AttributeError):
            pass
    return "unknown"


def _plotted(column: str) -> bool:
    scorer, metric = split_column(column)
    pattern = PLOTTED.get(scorer.split("[")[0])
    return pattern is not None and re.fullmatch(pattern, metric) is not None


def _plots(columns: list[str], rows: list[dict], archs: dict) -> str:
    if L0 not in columns:
        return '<p class="empty">No sparsity.l0 column (add the sparsity scorer to the matrix): nothing to plot.</p>'
    import matplotlib
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, no GUI backend

    keyed = [(r, archs.get((r["model"], r["hookpoint"], r["sae"]), "unknown")) for r in rows]
    colours = {a: PALETTE[i % len(PALETTE)] for i, a in enumerate(sorted({a for _, a in keyed}))}
    several = len({(r["model"], r["hookpoint"]) for r in rows}) > 1
    figures = []
    # a salt keeps the SVG ids reproducible; texts from the data get parse_math=False ("$" is not mathtext)
    with matplotlib.rc_context({"svg.fonttype": "path", "svg.hashsalt": "saebench", "font.size": 8}):
        for column in filter(_plotted, columns):
            points = [(r[L0], r[column], arch, f"{r['sae']} ({r['hookpoint']})" if several else r["sae"])
                      for r, arch in keyed if _finite(r.get(L0)) and _finite(r.get(column))]
            if not points:
                continue
            fig = Figure(figsize=(5.2, 3.6))
            ax = fig.add_subplot()
            right = max(p[0] for p in points)
            for arch in sorted({p[2] for p in points}):
                series = sorted(p for p in points if p[2] == arch)
                ax.plot([p[0] for p in series], [p[1] for p in series], "o-", color=colours[arch], label=arch,
                        markersize=6, linewidth=1.2)
                for x, y, _, label in series:  # long names are cut here; the table has them whole
                    label = label if len(label) <= 28 else label[:27] + "…"
                    left = x == right and len(points) > 1  # the rightmost label would run off the figure
                    ax.annotate(label, (x, y), xytext=(-4 if left else 4, 4), textcoords="offset points", fontsize=7,
                                ha="right" if left else "left", in_layout=False, parse_math=False)
            xs = [p[0] for p in points]
            if min(xs) > 0 and max(xs) > 10 * min(xs):
                ax.set_xscale("log")
            ax.margins(0.12)
            ax.set_xlabel("L0 (active latents per token)")
            ax.set_ylabel(column, parse_math=False)
            ax.set_title(f"{column} vs L0", parse_math=False)
            ax.grid(alpha=0.3)
            for text in ax.legend(title="architecture", fontsize=7, title_fontsize=7).get_texts():
                text.set_parse_math(False)
            fig.tight_layout()
            buf = io.BytesIO()
            fig.savefig(buf, format="svg", metadata={"Date": None})
            figures.append((column, base64.b64encode(buf.getvalue()).decode()))
    if not figures:
        return '<p class="empty">No fidelity metric with values to plot against L0.</p>'
    return '<div class="plots">' + "".join(
        f'<figure><img alt="{esc(c)} vs L0" src="data:image/svg+xml;base64,{data}"></figure>' for c, data in figures
    ) + "</div>"


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


# -- latent cards ------------------------------------------------------------------------------------
def _latent_cards(store: ResultsStore, details: list[dict], limit: int) -> str:
    by_sae: dict[tuple, dict[int, dict[str, dict]]] = {}
    for r in store.latent_rows():
        by_sae.setdefault((r["model"], r["hookpoint"], r["sae"]), {}).setdefault(r["latent"], {})[r["scorer"]] = r
    paths = {(c["model"], c["hookpoint"], c["sae"]): c["details"].get("records") for c in details
             if c["scorer"].startswith("explain[") and isinstance(c["details"], dict)}
    parts = []
    for key, latents in by_sae.items():
        if not any(s.startswith("explain[") for per in latents.values() for s in per):
            continue
        shown = sorted(latents)[:max(limit, 0)]
        records, note = _records(paths.get(key), shown)
        parts.append(f"<h3>{esc(key[2])} <small>{esc(key[0])} · {esc(key[1])} · {len(shown)} of {len(latents)} "
                     "explained latents</small></h3>")
        if note:
            parts.append(f'<p class="note">{esc(note)}</p>')
        parts.append('<div class="cards">' + "".join(_card(j, latents[j], records.get(j)) for j in shown) + "</div>")
    return "".join(parts) or '<p class="empty">No explained latents in this run.</p>'


def _records(path: Any, wanted: Iterable[int]) -> tuple[dict, str | None]:
    """The records of the ``wanted`` latents from the explain cell's records file, or from its parts
    (a Ray run splits them), read in order until every wanted latent is found."""
    from saebench.errors import SaebenchError
    from saebench.records import RecordSet

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
        out.append(f'<p class="note">max activation {esc(fmt(record.max_activation))} · density '
                   f'{esc(fmt(record.density))} · {esc(record.n_activating)} activating windows</p>')
    for scorer, row in sorted(per_scorer.items(), key=lambda kv: not kv[0].startswith("explain[")):
        result = json.loads(row["result"]) if row["result"] else {}
        if row["status"] == "failed":
            text = f'<span class="error">failed: {esc(row["error"])}</span>'
        elif scorer.startswith("explain["):
            text = esc(result["text"]) if result.get("text") else f'<span class="error">no explanation: {esc(result.get("failure"))}</span>'
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
            spans.append(f'<span class="tok" style="background:rgba(230,85,13,{alpha:.2f})" '
                         f'title="{esc(fmt(act))}">{esc(token)}</span>')
        else:
            spans.append(esc(token))
    return "".join(spans)


# -- TreeProbe trees ---------------------------------------------------------------------------------
def _trees(details: list[dict]) -> str:
    parts = []
    for c in details:
        tasks = c["details"].get("tasks") if isinstance(c["details"], dict) else None
        for task, d in (tasks.items() if isinstance(tasks, dict) else ()):
            if not isinstance(d, dict) or not isinstance(d.get("tree"), dict):
                continue
            m = d.get("metrics") if isinstance(d.get("metrics"), dict) else {}
            facts = " · ".join(f"{k} {fmt(m[k])}" for k in ("head_accuracy", "tree_hard_accuracy", "rule_flip_rate",
                                                            "random_flip_rate", "taxonomy_agreement") if _finite(m.get(k)))
            parts.append(f'<h3>{esc(c["sae"])} <small>{esc(c["scorer"])} · task {esc(task)}</small></h3>'
                         f'<p class="note">{esc(d.get("tree_is", ""))} tree, rules named from '
                         f'{esc(d.get("rule_names_from", "?"))}. {esc(facts)}</p><ul class="tree">{_node(d["tree"])}</ul>')
    return "".join(parts) or '<p class="empty">No TreeProbe cell in this run.</p>'


def _node(node: Any) -> str:
    if not isinstance(node, dict):
        return f"<li>{esc(node)}</li>"
    children = node.get("children")
    if not isinstance(children, list) or not children:
        return f'<li class="leaf">{esc(node.get("name", node.get("id")))}</li>'
    explanations = node.get("explanations") if isinstance(node.get("explanations"), dict) else {}
    items = [f"<li>latent {esc(j)}: {esc(explanations.get(str(j)) or '')}</li>" for j in node.get("latents") or []]
    # a rule may hold dozens of latents: the strongest few stay in view, the rest fold away
    latents = "".join(items[:3]) + (f"<li><details><summary>{len(items) - 3} more rule latents</summary><ul>"
                                    f"{''.join(items[3:])}</ul></details></li>" if len(items) > 3 else "")
    facts = " · ".join(f"{k} {fmt(node[k])}" for k in ("accuracy", "rule_accuracy", "flip_rate", "random_flip_rate")
                       if _finite(node.get(k)))
    leaves = ", ".join(str(x) for x in node.get("leaves") or [])
    return (f'<li><details open><summary><span class="rule">{esc(node.get("rule") or "(no rule)")}</span> '
            f'<span class="classes">[{esc(leaves)}]</span></summary><div class="node-info">node {esc(node.get("id"))}'
            f'{" · " + esc(facts) if facts else ""}<ul>{latents}</ul></div>'
            f'<ul>{"".join(_node(c) for c in children)}</ul></details></li>')


# -- configuration -----------------------------------------------------------------------------------
def _config(runs: list[dict]) -> str:
    if not runs:
        return '<p class="empty">No run recorded.</p>'
    import yaml

    last = runs[-1]
    run_id, seed = last["run_id"], last["seed"]
    text = yaml.safe_dump(last["matrix"], sort_keys=False, allow_unicode=True,
                          width=float("inf"))  # a folded line would split a value the reader searches for
    version_rows = "".join(f"<tr><td>{esc(k)}</td><td>{esc(v)}</td></tr>" for k, v in last["versions"].items())
    run_rows = "".join(
        f"<tr><td>{esc(r['run_id'])}</td><td>{esc(time.strftime('%Y-%m-%d %H:%M:%S', time.localtime(r['started'])))}</td>"
        f"<td>{esc(fmt(r['finished'] - r['started']) + ' s' if r['finished'] else '')}</td><td>{esc(r['status'])}</td></tr>"
        for r in runs)
    return (f"<h3>Matrix of run {esc(run_id)} (seed {esc(seed)})</h3><pre>{esc(text)}</pre>"
            f"<h3>Versions</h3><table>{version_rows}</table>"
            f"<h3>Runs</h3><table><thead><tr><th>run</th><th>started</th><th>took</th><th>status</th></tr></thead>"
            f"<tbody>{run_rows}</tbody></table>")
