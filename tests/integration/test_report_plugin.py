"""A third party's scorer gets its metric plotted and its own section in the report, with no change to the core.

The plugin below is written as an outside author would (CONTRIBUTING.md): a scorer that declares
its headline metric, and a report section that draws what the scorer stored in its cells' details.
It is registered in-process, run through a real matrix on the tiny model, and the report is built
from the store alone.
"""

import base64
import html
import re
import types

import pytest
import torch
import yaml
from pydantic import Field

import saebench
from saebench.results.html import esc, fmt
from saebench.results.report import write_report
from saebench.run.execute import execute
from saebench.run.matrix import load_matrix
from saebench.run.progress import Progress
from saebench.run.store import ResultsStore
from saebench.testing import registered
from tiny import firing_sae

PAYLOAD = '<img src=x onerror="window.__pwned=1">'


class WiggleScorer(saebench.Scorer):
    """Wiggle: the mean absolute latent value per token (a third party's scorer)."""

    name = "wiggle"
    headline = (saebench.Metric("mean_abs"), saebench.Metric("tokens", plot=False))

    class Options(saebench.Options):
        batch_tokens: int = Field(512, ge=1, description="tokens per batch")

    @torch.no_grad()
    def score(self, sae, inputs):
        total, n = 0.0, 0
        for x in inputs.activations(self.options.batch_tokens):
            values, _ = sae.encode_sparse(x)
            total += float(values.abs().sum(dtype=torch.float64))
            n += x.shape[0]
        return saebench.ScoreResult(metrics={"mean_abs": total / n, "tokens": n},
                                    details={"note": f"{n} tokens {PAYLOAD}"})


class WiggleSection(saebench.ReportSection):
    """Wiggle notes: what the wiggle scorer noted about each SAE."""

    name = "wiggle-notes"
    title = "Wiggle notes"

    def render(self, cells):
        rows = [f"<li>{esc(c['sae'])}: {esc(c['details'].get('note'))} ({fmt(c['metrics'].get('mean_abs'))})</li>"
                for c in cells if c["plugin"] == "wiggle"]
        return f"<ul class='wiggle'>{''.join(rows)}</ul>" if rows else None


def plugin_module():
    module = types.ModuleType("saebench_wiggle")
    module.register_scorers = saebench.hookimpl(lambda register: register(WiggleScorer))
    module.register_scorers.__name__ = "register_scorers"
    module.register_report_sections = saebench.hookimpl(lambda register: register(WiggleSection))
    module.register_report_sections.__name__ = "register_report_sections"
    return module


@pytest.fixture
def run(tmp_path, tiny_llama, tiny_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for i, d_sae in enumerate((32, 64)):
        saebench.save_sae(firing_sae("relu", d_sae, seed=i), tmp_path / f"sae{i}")
    matrix = {"name": "wiggle", "output": "out",
              "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 512, "context_length": 32},
              "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
              "saes": [{"name": f"sae{i}", "model": "tiny", "hookpoint": "layers.1", "path": f"sae{i}"} for i in range(2)],
              "scorers": ["sparsity", {"name": "wiggle", "options": {"batch_tokens": 128}}]}
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(matrix))
    with registered(plugin_module(), "saebench-wiggle"):
        report = execute(load_matrix("matrix.yaml"), source="matrix.yaml", progress=Progress(False))
        assert report.exit_code == 0 and report.done == 4
        page = write_report(tmp_path / "out").read_text(encoding="utf-8")
    return tmp_path / "out", page


def test_the_third_party_metric_is_plotted_against_l0(run):
    _, page = run
    images = dict(re.findall(r'<img alt="([^"]*) vs L0" src="data:image/svg\+xml;base64,([A-Za-z0-9+/=]+)"', page))
    assert "wiggle.mean_abs" in images and "wiggle.tokens" not in images  # declared plot=False
    svg = base64.b64decode(images["wiggle.mean_abs"]).decode()
    assert "sae0" in svg and "sae1" in svg


def test_the_third_party_section_is_in_the_page_and_escaped(run):
    _, page = run
    assert '<section id="wiggle-notes"><h2>Wiggle notes</h2><ul class=\'wiggle\'>' in page
    assert '<a href="#wiggle-notes">Wiggle notes</a>' in page
    assert html.escape(PAYLOAD) in page and PAYLOAD not in page
    assert page.count("<li>sae") == 2


def test_the_store_keeps_what_the_scorer_declared_and_how_each_sae_resolved(run):
    folder, _ = run
    with ResultsStore.existing(folder) as store:
        info = store.scorer_info()["wiggle"]
        saes = store.sae_configs()
    assert info["plugin"] == "wiggle" and info["family"] == "intrinsic"
    assert [m["name"] for m in info["headline"]] == ["mean_abs", "tokens"]
    assert saes[("tiny", "layers.1", "sae1")]["arch"] == "relu" and saes[("tiny", "layers.1", "sae1")]["d_sae"] == 64


def test_without_the_plugin_installed_the_report_still_draws_from_the_store(run):
    folder, _ = run  # the plugin is unregistered now: its declarations come from the store
    page = write_report(folder, folder / "again.html").read_text(encoding="utf-8")
    assert 'alt="wiggle.mean_abs vs L0"' in page and "wiggle-notes" not in page
