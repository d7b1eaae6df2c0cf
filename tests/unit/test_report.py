"""``saebench report``: a self-contained HTML page built from a synthetic results store.

The store is written through ResultsStore with the metric names of the built-in scorers; hostile
strings are planted in every place data reaches the page (tokens, explanations, names, metric
names, error texts, tree rules and class names, the matrix and versions), each tagged with its
place, and must come out escaped. tests/integration/test_report_browser.py opens the same page in Chromium.
"""

import base64
import html
import re
import time
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import numpy as np
import pytest

from saebench.cli import main
from saebench.interp.records import RecordConfig, RecordSet
from saebench.interp.types import Example, Explanation, LatentRecord, LatentScore
from saebench.results.html import PALETTE, fmt
from saebench.results.report import write_report
from saebench.run.store import CellKey, ResultsStore
from saebench.uncertainty import interval, mean_units

PAYLOADS = [
    "<script>alert(1)</script>",
    '"><img src=x onerror=alert(1)>',
    "</textarea><svg onload=alert(1)>",
    "{{7*7}}",
    "&lt;b&gt;",
    '<img src=x onerror="window.__pwned=1">',
]
PLACES = [
    "token",
    "explanation",
    "sae",
    "hookpoint",
    "metric",
    "cell-error",
    "latent-error",
    "rule",
    "class",
    "config",
    "version",
]
MODEL = "gemma3-270m"
HOOK = "layers.6"


def hostile(place: str) -> str:
    return f"[{place}] " + " ".join(PAYLOADS)


def _example(window, tokens, acts):
    return Example(tokens=tokens, activations=acts, window=window)


def _record(latent, token_payload=None):
    train = [
        _example(latent * 100 + i, ["def", " f", "(", "x", "):"], [0.0, 0.5 + i, 0.0, 2.0 * (i + 1), 0.0])
        for i in range(4)
    ]
    if token_payload:
        train.append(_example(latent * 100 + 50, ["print", "(", token_payload, ")"], [0.0, 0.0, 9.5, 0.0]))
    test = [_example(latent * 100 + 60, ["return", " y"], [1.0, 0.0])]
    return LatentRecord(
        latent=latent, n_activating=25 + latent, density=0.0123, max_activation=9.5, train=train, test=test
    )


def _trained(arch):
    return {"sae": {"train": {"arch": arch, "d_sae": 4096}, "train_hash": "x"}, "seed": 0}


def build_store(folder, records_dir):
    """A finished run: four trained SAEs (3 architectures, L0 from 8 to 200), one checkpoint of unknown
    architecture, explanations and detection scores of three latents, a TreeProbe cell, a failed cell."""
    store = ResultsStore(folder)
    matrix = {"name": "report-test", "output": str(folder), "seed": 0, "note": hostile("config"),
              "saes": [{"name": "topk-k8", "train": {"arch": "topk", "k": 8}}]}  # fmt: skip
    run = store.start_run(matrix, {"saebench": "0.1.0", "torch": "2.13.0", "plugin": hostile("version")}, seed=0)

    def cell(key, config, seconds=1.0, **outcome):
        store.write_cell(key, config_hash="h", config=config, run_id=run, seconds=seconds, **outcome)

    def latent(key, j, result=None, error=None):
        store.write_latent(key, j, config_hash="h", result=None if result is None else result.model_dump(), error=error)

    saes = {  # name: (arch, hookpoint, l0, explained variance, ce loss score)
        "topk-k8": ("topk", HOOK, 8.0, 0.8512, 0.8012),
        "topk-k64": ("topk", HOOK, 64.0, 0.95234, 0.9411),
        "relu-l1": ("relu", HOOK, 33.5, 0.68534, 0.679),
        "jumprelu": ("jumprelu", HOOK, 200.0, 0.97, 0.9632),
        hostile("sae"): ("relu", hostile("hookpoint"), 20.0, None, 0.7),
        "ckpt": (None, HOOK, 16.0, 0.9, 0.88),
    }
    for name, (arch, hook, l0, ev, ce) in saes.items():
        config = _trained(arch) if arch else {"sae": {"path": str(folder / "missing-checkpoint"), "format": "auto"}}
        sparsity = {
            "l0": l0,
            "dead_fraction": 0.07,
            "dense_fraction": 0.0,
            "dense_fraction_1pct": 0.01,
            "tokens": 20000,
        }
        cell(CellKey(MODEL, hook, name, "sparsity"), config, metrics=sparsity)
        if ev is None:
            cell(CellKey(MODEL, hook, name, "reconstruction"), config, error=hostile("cell-error"))
        else:
            metrics = {"explained_variance": ev, "fvu": 1 - ev, "mse": 0.02 / ev, "cosine": 0.99, "l2_ratio": 0.97,
                       "relative_reconstruction_bias": 1.01, "tokens": 20000}  # fmt: skip
            cell(CellKey(MODEL, hook, name, "reconstruction"), config, metrics=metrics)
        metrics = {"ce_loss_score": ce, "delta_lm_loss": 3 * (1 - ce), "kl_score": ce - 0.02, "ce_clean": 2.1,
                   "ce_sae": 2.5, "ce_zero": 9.0, "kl_sae": 0.3, "kl_zero": 7.0, "tokens": 4096}  # fmt: skip
        cell(CellKey(MODEL, hook, name, "downstream"), config, metrics=metrics)
    cell(CellKey(MODEL, HOOK, "relu-l1", "third-party"), _trained("relu"), metrics={hostile("metric"): 0.5})

    # interpretability of topk-k8: records on disk, two explainers, detection per latent (one failed)
    records = [_record(j, hostile("token") if j == 3 else None) for j in (3, 11, 42)]
    path = records_dir / "topk-k8-records.json.gz"
    RecordSet(
        records=records, skipped={}, n_windows=600, n_tokens=20000, passes=1, config=RecordConfig(latents=3)
    ).save(path)
    texts = {3: hostile("explanation"), 11: "opening parentheses of function calls", 42: "the keyword return"}
    for explainer in ("llm", "top-tokens"):
        key = CellKey(MODEL, HOOK, "topk-k8", f"explain[{explainer}]")
        cell(key, _trained("topk"), 2.0, metrics={"explained": 3.0, "mean_words": 4.2},
             details={"skipped": {}, "failed": {}, "records": str(path)})  # fmt: skip
        for j, text in texts.items():
            latent(key, j, Explanation(latent=j, explainer=explainer, text=text if explainer == "llm" else "def, ("))
    key = CellKey(MODEL, HOOK, "topk-k8", "detection[llm]")
    cell(key, _trained("topk"), 3.0, metrics={"balanced_accuracy": 0.8125, "auc": 0.874, "failed_latents": 1.0})
    latent(key, 3, LatentScore(latent=3, metrics={"balanced_accuracy": 0.8125, "auc": 0.874}))
    latent(key, 11, LatentScore(latent=11, metrics={"balanced_accuracy": 0.55}))
    latent(key, 42, error=hostile("latent-error"))
    # relu-l1 was explained too, but its records file has since been deleted
    key = CellKey(MODEL, HOOK, "relu-l1", "explain[llm]")
    cell(key, _trained("relu"), metrics={"explained": 1.0}, details={"records": str(records_dir / "deleted.json.gz")})
    latent(key, 7, Explanation(latent=7, explainer="llm", text="commas"))

    tree = {
        "id": 6,
        "leaves": ["keyword", "name", "punct", hostile("class")],
        "latents": [1],
        "explanations": {"1": "identifiers"},
        "rule": "Is there identifiers?",
        "accuracy": 0.97,
        "rule_accuracy": 0.931,
        "flip_rate": 0.62,
        "random_flip_rate": 0.04,
        "children": [
            {
                "id": 4,
                "leaves": ["keyword", "name"],
                "latents": [3],
                "explanations": {"3": "python keywords"},
                "rule": "Is there python keywords?",
                "accuracy": 0.9,
                "rule_accuracy": 0.85,
                "children": [{"id": 0, "name": "keyword"}, {"id": 1, "name": "name"}],
            },
            {
                "id": 5,
                "leaves": ["punct", hostile("class")],
                "latents": [7, 9],
                "explanations": {"7": hostile("rule"), "9": "closing brackets"},
                "rule": f"Is there {hostile('rule')}?",
                "children": [{"id": 2, "name": "punct"}, {"id": 3, "name": hostile("class")}],
            },
        ],
    }
    metrics = {"head_accuracy": 0.912, "tree_hard_accuracy": 0.887}
    task = {"tree": tree, "tree_is": "fine-tuned", "rule_names_from": "explainer", "metrics": metrics}
    cell(CellKey(MODEL, HOOK, "topk-k8", "treeprobe"), _trained("topk"), 5.0, metrics=metrics,
         details={"tasks": {"python_syntax": task}})  # fmt: skip
    store.finish_run(run, "done", {"total": 12.0})
    store.close()
    return saes


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    folder = tmp_path_factory.mktemp("run")
    saes = build_store(folder, tmp_path_factory.mktemp("records"))
    assert main(["report", str(folder)]) == 0
    return (folder / "report.html").read_text(encoding="utf-8"), saes


class _Attrs(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.urls, self.handlers = [], [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        for name, value in attrs:
            if name.startswith("on"):
                self.handlers.append((tag, name, value))
            if name in ("src", "href", "action", "srcset", "poster", "data", "formaction") and value:
                self.urls.append(value)


def test_report_is_one_self_contained_file_with_every_section(report):
    page, _ = report
    assert "http://" not in page and "https://" not in page
    parser = _Attrs()
    parser.feed(page)
    assert parser.urls and all(u.startswith(("data:", "#")) for u in parser.urls), parser.urls
    assert "link" not in parser.tags and "iframe" not in parser.tags
    assert "url(" not in page and "@import" not in page
    for section in ("leaderboard", "frontier", "latents", "trees", "config"):
        assert f'<section id="{section}">' in page
    assert page.count("<script>") == 1


def test_leaderboard_shows_the_store_numbers_grouped_by_scorer(report):
    page, _ = report
    assert '<th class="group" colspan="7">reconstruction</th>' in page
    assert '<td class="num" data-sort="0.95234">0.9523</td>' in page
    assert '<td class="num" data-sort="0.68534">0.6853</td>' in page
    assert '<td class="num" data-sort="20000.0">20,000</td>' in page
    assert 'data-col="4" data-type="num"' in page and 'title="reconstruction.explained_variance"' in page
    assert "0.8125" in page and "report-test" in page
    assert "1 failed cell(s)" in page


def test_frontier_plots_are_valid_svg_data_uris_with_one_colour_per_architecture(report):
    page, _ = report
    images = dict(re.findall(r'<img alt="([^"]*) vs L0" src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page))
    for column in (
        "reconstruction.explained_variance",
        "reconstruction.mse",
        "downstream.ce_loss_score",
        "downstream.kl_score",
        "detection[llm].balanced_accuracy",
        "treeprobe.head_accuracy",
    ):
        assert column in images, sorted(images)
    assert "sparsity.dead_fraction" not in images and "reconstruction.tokens" not in images
    for data in images.values():
        svg = base64.b64decode(data, validate=True).decode()
        assert ET.fromstring(svg.encode()).tag.endswith("svg")
    ev = base64.b64decode(images["reconstruction.explained_variance"]).decode()
    # architectures in sorted order: jumprelu, relu, topk, unknown (the checkpoint's cfg.json is gone)
    for colour in PALETTE[:4]:
        assert colour in ev
    assert PALETTE[4] not in ev


def test_latent_cards_show_explanations_scores_and_highlighted_examples(report):
    page, _ = report
    for text in (
        "latent 3",
        "latent 11",
        "latent 42",
        "opening parentheses of function calls",
        "the keyword return",
        "explain[top-tokens]",
        "balanced_accuracy 0.8125 · auc 0.874",
        "failed: ",
    ):
        assert text in page
    assert 'style="background:rgba(230,85,13,1.00)" title="9.5"' in page  # the strongest token
    assert 'style="background:rgba(230,85,13,0.21)" title="2"' in page  # 2 / 9.5 of it
    assert "deleted.json.gz is gone" in page and "commas" in page  # a card without examples, said so
    assert page.count('<article class="card">') == 4


def test_treeprobe_tree_is_nested_and_collapsible(report):
    page, _ = report
    assert page.count("<details open>") == 3
    assert "Is there identifiers?" in page and "Is there python keywords?" in page
    assert "<li>latent 3: python keywords</li>" in page and "fine-tuned tree" in page
    # the second child of the root is an inner node: a nested <details> inside the root's child list
    assert re.search(
        r'<ul><li><details open><summary><span class="rule">Is there python keywords\?</span>.*'
        r'<li class="leaf">name</li></ul></details></li><li><details open><summary><span class="rule">'
        r"Is there \[rule\]",
        page,
        re.S,
    )


def test_every_planted_payload_is_escaped_in_every_place(report):
    page, _ = report
    for payload in PAYLOADS:
        if html.escape(payload) != payload:
            assert payload not in page, payload
    for place in PLACES:
        assert html.escape(hostile(place), quote=True) in page, place
    parser = _Attrs()
    parser.feed(page)
    assert not parser.handlers and parser.tags.count("script") == 1
    assert "textarea" not in parser.tags and "svg" not in parser.tags


def test_latents_option_caps_the_cards_and_output_file_is_honoured(report, tmp_path):
    folder = tmp_path / "run"
    build_store(folder, tmp_path)
    out = tmp_path / "elsewhere.html"
    assert main(["report", str(folder), "-o", str(out), "--latents", "1"]) == 0
    page = out.read_text(encoding="utf-8")
    assert page.count('<article class="card">') == 2 and "1 of 3 explained latents" in page
    assert not (folder / "report.html").exists()


def test_empty_store_renders_and_says_so(tmp_path):
    ResultsStore(tmp_path).close()
    assert main(["report", str(tmp_path)]) == 0
    page = (tmp_path / "report.html").read_text(encoding="utf-8")
    assert "No results in this store yet." in page and "No run recorded." in page
    assert "nothing to plot" in page and "No explained latents" in page and "No TreeProbe cell" in page


def test_missing_store_is_one_line_and_exit_2(tmp_path, capsys):
    assert main(["report", str(tmp_path / "nowhere")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(tmp_path / "nowhere") in err and "results.sqlite" in err
    assert not (tmp_path / "nowhere").exists()


# -- uncertainty: intervals, ties, error bars --------------------------------------------------------
N_CONTEXTS = 200
NOISY = ["near-a", "near-b", "worse", hostile("sae")]  # near-a and near-b within noise; worse is 0.05 below


def noisy_units(name):
    """Per-context explained variance / mse / l0 of one SAE. near-b is near-a plus an alternating ±0.01
    (paired: the shared context noise cancels, the means differ by 0.0002); worse is 0.05 below."""
    rng = np.random.default_rng(0)
    base = 0.9 + 0.05 * rng.standard_normal(N_CONTEXTS)
    wiggle = 0.01 * (-1.0) ** np.arange(N_CONTEXTS)
    ev = {"near-a": base, "near-b": base + wiggle + 0.0002, "worse": base - 0.05 + wiggle}.get(name, base - 0.1)
    l0 = {"near-a": 30.0, "near-b": 60.0, "worse": 10.0}.get(name, 5.0) + rng.uniform(-3, 3, N_CONTEXTS)
    ids = list(range(N_CONTEXTS))
    recon = mean_units("context", ids, {"explained_variance": list(ev), "mse": list(0.1 * (1 - ev))})
    return recon, mean_units("context", ids, {"l0": list(l0)})


def build_noisy_store(folder, with_units=True):
    """Three SAEs at one hook point with per-context units for sparsity and reconstruction, a downstream
    cell without units, and a fourth SAE at another hook point (alone there: nothing to be tied with)."""
    store = ResultsStore(folder)
    run = store.start_run({"name": "noisy", "output": str(folder)}, {"saebench": "0.1.0"}, seed=0)
    cells = [{"model": MODEL, "hookpoint": HOOK if n != NOISY[3] else "layers.9", "sae": n} for n in NOISY]
    wobble = {"plugin": "wobble", "family": "intrinsic",
              "headline": [{"name": "wobble", "plot": False, "no_interval": hostile("reason")}]}  # fmt: skip
    store.write_plan(run, {"cells": cells}, {"wobble": wobble})
    for c in cells:
        recon, sparsity = noisy_units(c["sae"])

        def cell(scorer, units, metrics=None):
            metrics = metrics or {m: units.value(m) for m in units.metrics}
            key = CellKey(MODEL, c["hookpoint"], c["sae"], scorer)
            store.write_cell(key, config_hash="h", config=_trained("topk"), run_id=run, seconds=1.0, metrics=metrics,
                             units=units if with_units else None)  # fmt: skip

        cell("sparsity", sparsity)
        cell("reconstruction", recon)
        cell("downstream", None, {"ce_loss_score": recon.value("explained_variance") - 0.01})
        cell("wobble", None, {"wobble": 0.5})
    store.finish_run(run, "done", {"total": 1.0})
    store.close()


class _Table(HTMLParser):
    """The leaderboard: its metric columns (the header titles) and per row its cells' (class, title, text)."""

    def __init__(self):
        super().__init__()
        self.columns, self.rows, self.cell, self.inside = [], [], None, False

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.inside |= attrs.get("id") == "leaderboard-table"
        if self.inside and tag == "th" and "title" in attrs:
            self.columns.append(attrs["title"])
        elif self.inside and tag == "tr":
            self.rows.append([])
        elif self.inside and tag == "td":
            self.cell = [attrs.get("class"), attrs.get("title"), ""]

    def handle_data(self, data):
        if self.cell is not None:
            self.cell[2] += data

    def handle_endtag(self, tag):
        if tag == "td" and self.cell is not None:
            self.rows[-1].append(tuple(self.cell))
            self.cell = None
        self.inside &= tag != "table"

    def by_sae(self):
        out = {}
        for row in (r for r in self.rows if r):
            out[row[2][2]] = dict(zip(["model", "hookpoint", "sae"] + self.columns, row))
        return out


@pytest.fixture(scope="module")
def noisy(tmp_path_factory):
    folder = tmp_path_factory.mktemp("noisy")
    build_noisy_store(folder)
    start = time.perf_counter()
    page = write_report(folder).read_text(encoding="utf-8")
    took = time.perf_counter() - start
    table = _Table()
    table.feed(page)
    return page, table.by_sae(), took


def _images(page):
    found = re.findall(r'<img alt="([^"]*) vs L0" src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page)
    return {c: base64.b64decode(d).decode() for c, d in found}


def test_a_value_with_units_reads_value_plus_minus_half_width_with_the_bounds_in_its_tooltip(noisy):
    page, rows, _ = noisy
    for name in ("near-a", "worse"):
        recon, _ = noisy_units(name)
        for metric in ("explained_variance", "mse"):
            iv = interval(recon, metric)  # independently of the report: the same seed, 1000 resamples
            assert iv.high - iv.low > 0
            _, title, text = rows[name][f"reconstruction.{metric}"]
            value, half = re.fullmatch(r"(\S+) ± (\S+)(?: ★)?", text).groups()
            assert value == fmt(recon.value(metric))
            decimals = len(value.split(".")[1])  # the half-width is written like the value: as many decimals
            assert len(half.split(".")[1]) == decimals, text
            assert abs(float(half) - (iv.high - iv.low) / 2) <= 0.5 * 10**-decimals, (text, iv)
            assert f"[{iv.low:.6g}, {iv.high:.6g}]" in title and f"{N_CONTEXTS} contexts" in title
    assert "± : 95% bootstrap interval over contexts (1000 resamples); ★ tied with the best within noise" in page


def test_the_saes_tied_with_the_best_are_starred_and_the_clearly_worse_one_is_not(noisy):
    _, rows, _ = noisy
    for column in ("reconstruction.explained_variance", "reconstruction.mse"):  # higher / lower is better
        for name, tied in (("near-a", True), ("near-b", True), ("worse", False), (hostile("sae"), False)):
            cls, _, text = rows[name][column]
            assert ("★" in text) is tied and (cls == "num tied") is tied, (column, name, cls, text)
    # l0 has no direction: no star, but an interval
    assert not any("★" in rows[n]["sparsity.l0"][2] for n in NOISY) and "±" in rows["near-a"]["sparsity.l0"][2]


def test_a_cell_without_units_shows_no_interval_and_its_metric_is_listed_with_why(noisy):
    page, rows, _ = noisy
    for name in NOISY:
        cls, title, text = rows[name]["downstream.ce_loss_score"]
        assert "±" not in text and title is None and "★" not in text
    listed = re.search(r"<h3>Metrics without an interval</h3><ul[^>]*>(.*?)</ul>", page, re.S).group(1)
    assert "<code>downstream.ce_loss_score</code>: its cells stored no per-unit statistics" in listed
    assert f"<code>wobble.wobble</code>: {html.escape(hostile('reason'))}" in listed  # the declared reason
    assert "reconstruction." not in listed and "sparsity." not in listed


def test_the_frontier_plots_draw_each_points_intervals_as_error_bars(noisy, tmp_path):
    images = _images(noisy[0])
    ev, ce = images["reconstruction.explained_variance"], images["downstream.ce_loss_score"]
    assert len(re.findall(r'id="yerr_\d+"', ev)) == 4 and len(re.findall(r'id="xerr_\d+"', ev)) == 4
    # the ce_loss_score cells kept no units: only the L0 bars
    assert len(re.findall(r'id="yerr_\d+"', ce)) == 0 and len(re.findall(r'id="xerr_\d+"', ce)) == 4
    for kind, vertical in (("yerr", True), ("xerr", False)):
        for path in re.findall(rf'<g id="{kind}_\d+">\s*<path d="M ([\d.]+) ([\d.]+) L ([\d.]+) ([\d.]+)', ev):
            x1, y1, x2, y2 = map(float, path)
            assert (x1 == x2 and y1 != y2) if vertical else (y1 == y2 and x1 != x2), (kind, path)
    folder = tmp_path / "bare"
    build_noisy_store(folder, with_units=False)  # the same numbers without units: no bars, no ±, no stars
    page = write_report(folder).read_text(encoding="utf-8")
    assert "err_" not in _images(page)["reconstruction.explained_variance"]
    assert "±" not in page and "★" not in page and "<code>reconstruction.explained_variance</code>" in page


def test_the_intervals_cost_little(noisy):
    assert noisy[2] < 5.0  # the whole page, plots included, of 4 SAEs × 200 contexts; intervals are ms each


def test_a_store_without_units_has_no_error_bars_nor_legend(report):
    page, _ = report
    assert "err_" not in "".join(_images(page).values()) and "bootstrap interval" not in page


@pytest.mark.parametrize(
    "shown, half, out",
    [("0.9008", 0.0066234, "0.0066"), ("30.13", 0.2256, "0.23"), ("20,000", 1234.4, "1,234"),
     ("0.5", 0.0123, "0.0123"), ("1.234e-04", 2.5e-05, "2.500e-05"), ("0.9", 0.0, "0.0")],
)  # fmt: skip
def test_the_half_width_is_written_with_the_values_decimals(shown, half, out):
    from saebench.results.report import _like

    assert _like(shown, half) == out
