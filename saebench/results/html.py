"""What every part of the HTML report shares: escaping, number formatting, the page's CSS, script and frame.

A report section contributed by a plugin uses :func:`esc` on every string that comes from the data
and :func:`fmt` for numbers. The page fetches nothing: CSS and JS are inline, and its
Content-Security-Policy allows no script but its own (by hash), so an escaping slip shows up as
refused markup, not as a script that runs.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import re
import string
from typing import Any

#: series colours, given to the architectures in sorted order so an architecture has one colour in every plot
PALETTE = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#e377c2", "#17becf"]
# "detection[llm].auc" -> ("detection[llm]", "auc"): an explainer's name may hold a dot; a repeated
# cell's label ends in its seed ("detection[llm]@s1")
_COLUMN = re.compile(r"([^.\[]*(?:\[[^\]]*\])?(?:@s-?\d+)?)\.(.+)", re.S)

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
.pm{color:#667085;font-size:12px}td.tied{background:#fef6e0}.star{color:#b54708}
.unstable{color:#b42318}
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
<body><header><h1>$title</h1><nav>$nav</nav></header>
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
    """A leaderboard column's (scorer label, metric)."""
    m = _COLUMN.fullmatch(column)
    return (m.group(1), m.group(2)) if m else (column, "")


def finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def page(title: str, sections: list[tuple[str, str, str]]) -> str:
    """The whole document: ``sections`` are (id, title, body HTML), linked from the header in order."""
    script_hash = "sha256-" + base64.b64encode(hashlib.sha256(JS.encode()).digest()).decode()
    nav = "".join(f'<a href="#{esc(sid)}">{esc(name)}</a>' for sid, name, _ in sections)
    body = "".join(
        f'<section id="{esc(sid)}"><h2>{esc(name)}</h2>{content}</section>' for sid, name, content in sections
    )
    return PAGE.substitute(title=esc(title), css=CSS, js=JS, script_hash=script_hash, nav=nav, body=body)
