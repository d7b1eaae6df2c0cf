"""``saebench report``: a self-contained HTML page built from a synthetic results store.

The store is written through ResultsStore with the metric names of the built-in scorers; hostile
strings are planted in every place data reaches the page (tokens, explanations, names, metric
names, error texts, tree rules and class names, the matrix and versions), each tagged with its
place, and must come out escaped. tests/integration/test_report_browser.py opens the same page in Chromium.
"""

import base64
import html
import re
import xml.etree.ElementTree as ET
from html.parser import HTMLParser

import pytest

from saebench.cli import main
from saebench.interp.records import RecordConfig, RecordSet
from saebench.interp.types import Example, Explanation, LatentRecord, LatentScore
from saebench.results.html import PALETTE
from saebench.run.store import CellKey, ResultsStore

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
