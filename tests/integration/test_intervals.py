"""Intervals end to end: a run stores per-context statistics, the leaderboard shows intervals, compare-saes pairs SAEs."""

import csv
import io
import json
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

import saebench
from matrices import run as run_in_process
from reference import random_weights
from saebench.results.leaderboard import View, render
from saebench.run.activations import ActivationCache
from saebench.run.store import ResultsStore

SAEBENCH = Path(sys.executable).parent / "saebench"
D_MODEL = 32
OUT = "runs/ci"


def cli(*args, cwd):
    return subprocess.run([str(SAEBENCH), *args], capture_output=True, text=True, cwd=cwd, timeout=600)


@pytest.fixture(scope="module")
def scored(tmp_path_factory, tiny_llama, tiny_corpus):
    """Two checkpoint SAEs (one good-ish, one random) scored by the three intrinsic scorers."""
    folder = tmp_path_factory.mktemp("ci")
    for name, seed, scale in (("relu-a", 0, 1.0), ("relu-b", 1, 0.2)):
        w = random_weights(D_MODEL, 64, arch="relu", seed=seed)
        w["W_dec"] = w["W_dec"] * scale
        saebench.save_sae(saebench.build_sae("relu", w, hook_name="layers.1"), folder / "saes" / name)
    matrix = {
        "name": "ci",
        "output": OUT,
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 2048, "context_length": 32},
        "models": [{"name": "tiny-llama", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": [
            {"name": n, "model": "tiny-llama", "hookpoint": "layers.1", "path": f"saes/{n}"}
            for n in ("relu-a", "relu-b")
        ],
        "scorers": ["sparsity", "reconstruction", {"name": "downstream", "options": {"tokens": 512}}],
    }
    (folder / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        assert run_in_process(folder).exit_code == 0
    return folder


def test_cells_store_units_aligned_with_the_cached_contexts(scored):
    with ResultsStore.existing(scored / OUT) as store:
        units = store.units()
        metrics = {(m, h, s, sc, k): v for m, h, s, sc, k, v in store.metrics()}
    assert {k.scorer for k in units} == {"sparsity", "reconstruction", "downstream"}
    cache = next(p for p in (scored / OUT / "cache").iterdir() if (p / "manifest.json").is_file())
    per_context = ActivationCache(cache).manifest["context_tokens"]
    for key, u in units.items():
        assert u.unit == "context"
        for metric in u.metrics:  # the point recomputed from the units is the stored number
            stored = metrics[(key.model, key.hookpoint, key.sae, key.scorer, metric)]
            assert u.value(metric) == pytest.approx(stored, rel=1e-9, abs=1e-12), (key.scorer, metric)
        if key.scorer == "sparsity":  # every evaluated token, in the context it came from
            assert u.columns["tokens"] == [float(per_context[i]) for i in u.ids]


def test_leaderboard_ci_columns_bracket_every_interval_metric(scored):
    out = cli("leaderboard", OUT, "--ci", cwd=scored)
    assert out.returncode == 0, out.stderr
    rows = list(csv.DictReader(io.StringIO(out.stdout)))
    for column in ("sparsity.l0", "reconstruction.explained_variance",
                   "reconstruction.mse", "downstream.ce_loss_score", "downstream.kl_score"):  # fmt: skip
        for r in rows:
            low, value, high = (float(r[f"{column}{s}"]) for s in (".ci_low", "", ".ci_high"))
            assert low <= value <= high, (column, r["sae"])
            assert low < high
    assert "sparsity.dense_fraction.ci_low" not in rows[0]  # no estimator: no made-up interval
    assert "sparsity.dead_fraction.ci_low" not in rows[0]
    assert "no interval for sparsity.dead_fraction: a count of latents that never fire" in out.stderr
    assert "95% percentile bootstrap" in out.stderr and "1000 resamples" in out.stderr
    as_json = json.loads(cli("leaderboard", OUT, "--ci", "--format", "json", "--ci-level", "0.8", cwd=scored).stdout)
    narrow = {r["sae"]: r for r in as_json}
    for r in rows:  # an 80% interval lies inside the 95% one
        n = narrow[r["sae"]]
        assert float(r["downstream.ce_loss_score.ci_low"]) <= n["downstream.ce_loss_score.ci_low"]
        assert n["downstream.ce_loss_score.ci_high"] <= float(r["downstream.ce_loss_score.ci_high"])


def test_compact_view_and_column_globs(scored):
    view = View(compact=True)
    text = render(scored / OUT, "markdown", view=view)
    header = text.splitlines()[0]
    assert (
        header
        == "| model | hookpoint | sae | sparsity.l0 | reconstruction.explained_variance | downstream.ce_loss_score |"
    )
    assert text.count(" ± ") == 6 and "--all" in text
    picked = render(scored / OUT, "csv", view=View(columns="sparsity.*,downstream.ce_loss_score"))
    assert picked.splitlines()[0] == (
        "model,hookpoint,sae,sparsity.l0,sparsity.dead_fraction,sparsity.dense_fraction,"
        "sparsity.dense_fraction_1pct,sparsity.tokens,downstream.ce_loss_score"
    )
    bad = cli("leaderboard", OUT, "--columns", "nothing.*", cwd=scored)
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1 and "no column matches" in bad.stderr


def test_compare_saes_prints_paired_differences(scored):
    out = cli("compare-saes", OUT, "relu-a", "relu-b", "--format", "json", cwd=scored)
    assert out.returncode == 0, out.stderr
    rows = {r["metric"]: r for r in json.loads(out.stdout)}
    assert {"sparsity.l0", "reconstruction.explained_variance", "downstream.ce_loss_score"} <= set(rows)
    for r in rows.values():
        assert r["paired"] and r["unit"] == "context"
        assert r["diff"] == pytest.approx(r["a"] - r["b"])
        assert r["ci_low"] <= r["diff"] <= r["ci_high"] and 0 < r["p_value"] <= 1
    assert "sparsity.dead_fraction" not in rows
    assert "not compared: sparsity.dead_fraction: a count of latents that never fire" in out.stderr
    same = json.loads(cli("compare-saes", OUT, "relu-a", "relu-a", "--format", "json", cwd=scored).stdout)
    assert all(r["diff"] == 0 and r["p_value"] == 1 and r["verdict"].startswith("tied") for r in same)
    md = cli("compare-saes", OUT, "relu-a", "relu-b", "--metric", "downstream.ce_loss_score", cwd=scored).stdout
    assert md.splitlines()[0].startswith("| metric | a | b | diff | ci_low | ci_high | p_value | verdict |")
    assert len(md.strip().splitlines()) == 3


@pytest.mark.parametrize(
    "args,message",
    [
        (["relu-a", "nope"], "no SAE 'nope' in this run; SAEs: relu-a, relu-b"),
        (
            ["relu-a", "relu-b", "--metric", "sparsity.dense_fraction"],
            "no per-unit statistics of 'sparsity.dense_fraction'",
        ),
        (["relu-a", "relu-b", "--resamples", "0"], "must be a positive integer"),
    ],
)
def test_compare_saes_bad_input_is_one_line_exit_2(scored, args, message):
    out = cli("compare-saes", OUT, *args, cwd=scored)
    assert out.returncode == 2 and message in out.stderr, out.stderr
    lines = out.stderr.strip().splitlines()
    assert message in lines[-1] and (len(lines) == 1 or lines[0].startswith("usage:"))  # argparse: usage first
