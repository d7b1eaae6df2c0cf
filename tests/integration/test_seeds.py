"""``seeds:`` in a matrix: the seeded cells repeat once per seed, the leaderboard reports the mean and
the spread across seeds, intervals and comparisons cover the seeds, and reliability ranks agree or not."""

import csv
import io
import json
import sqlite3
import statistics
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from test_interp_runner import TAPE
from test_interp_runner import plugin as interp_plugin
from test_probe_runner import plugin as probe_plugin

import saebench
import saebench.testing
from matrices import run
from saebench.results.leaderboard import View, render
from tiny import firing_sae

D_MODEL = 32
SAEBENCH = Path(sys.executable).parent / "saebench"
SEEDS = [0, 1, 2]


@pytest.fixture(scope="module")
def seeded(tmp_path_factory, tiny_llama, tiny_corpus):
    folder = tmp_path_factory.mktemp("seeds")
    saebench.testing.register_plugin(interp_plugin, "interp-test-plugin")
    saebench.testing.register_plugin(probe_plugin, "probe-test-plugin")
    TAPE.update(fail=set(), calls=[], interrupt_after=None)
    for i in range(2):
        saebench.save_sae(firing_sae("relu", 64, seed=i, d_in=D_MODEL), folder / f"sae{i}")
    matrix = {
        "name": "seeds",
        "output": "runs/seeds",
        "seeds": SEEDS,
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 2048, "context_length": 64},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": [{"name": f"sae{i}", "model": "tiny", "hookpoint": "layers.1", "path": f"sae{i}"} for i in range(2)]
        + [
            {
                "name": "trained",
                "model": "tiny",
                "hookpoint": "layers.1",
                "train": {"arch": "topk", "d_sae": 64, "k": 4, "tokens": 4096, "batch_size": 256},
            }
        ],  # fmt: skip
        "llms": {"judge": {"client": "tape", "model": "t", "backoff_s": 0.0}},
        "explainers": [{"name": "echo", "llm": "judge"}],
        "scorers": [
            "sparsity",
            "value",
            {"name": "sparse_probing", "options": {"tasks": ["char-class-test"], "ks": [1]}},
        ],
        "interp": {"latents": 6, "window": 16, "n_train": 4, "n_test": 4, "n_negatives": 4, "min_activating": 2},
    }
    (folder / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    with pytest.MonkeyPatch.context() as mp:
        mp.chdir(folder)
        first = run(folder)
        again = run(folder)
    yield folder, first, again
    saebench.testing.unregister_plugin("interp-test-plugin")
    saebench.testing.unregister_plugin("probe-test-plugin")


def board(folder, **view):
    return {
        r["sae"]: r for r in csv.DictReader(io.StringIO(render(folder / "runs" / "seeds", "csv", view=View(**view))))
    }


def test_seeded_cells_run_once_per_seed_and_resume(seeded):
    folder, first, again = seeded
    assert first.exit_code == 0 and not first.failed
    # per SAE: sparsity once; explain, value and sparse_probing once per seed
    assert first.done == 3 * (1 + 3 * len(SEEDS))
    assert again.done == 0 and again.skipped == first.done
    trained = sorted(p.name for p in (folder / "runs" / "seeds" / "saes").iterdir() if not p.name.startswith("."))
    assert trained == ["trained"]  # trained once, its repeats reuse it


def test_the_latent_sample_and_the_probe_split_follow_the_seed(seeded):
    folder, _, _ = seeded
    db = sqlite3.connect(folder / "runs" / "seeds" / "results.sqlite")
    try:
        latents = {
            seed: {
                r[0]
                for r in db.execute("SELECT latent FROM latents WHERE sae='sae0' AND scorer=?", (f"value@s{seed}",))
            }
            for seed in SEEDS
        }
        configs = {
            sc: json.loads(c)["seed"] for sc, c in db.execute("SELECT scorer, config FROM cells WHERE sae='sae0'")
        }
    finally:
        db.close()
    assert all(len(v) == 6 for v in latents.values()) and len({frozenset(v) for v in latents.values()}) > 1
    assert configs["sparsity"] == 0 and [configs[f"sparse_probing@s{s}"] for s in SEEDS] == SEEDS


def test_the_leaderboard_reports_the_mean_and_spread_across_seeds(seeded):
    folder, _, _ = seeded
    rows = board(folder)
    r = rows["sae0"]
    per_seed = [float(r[f"value@s{s}.value"]) for s in SEEDS]
    assert float(r["value.value"]) == pytest.approx(statistics.fmean(per_seed))
    assert float(r["value.value.seed_sd"]) == pytest.approx(statistics.stdev(per_seed))
    assert float(r["value.value.seeds"]) == 3
    assert "sparsity.l0.seed_sd" not in r and "sparsity@s1.l0" not in r  # deterministic: not repeated
    probe = [float(r[f"sparse_probing@s{s}.k1_accuracy"]) for s in SEEDS]
    assert float(r["sparse_probing.k1_accuracy"]) == pytest.approx(statistics.fmean(probe))
    header = list(r)
    assert header.index("value.value") < header.index("value@s0.value")  # the per-seed columns come last


def test_intervals_and_comparisons_cover_the_seeds(seeded):
    folder, _, _ = seeded
    r = board(folder, ci=True)["sae0"]
    assert float(r["value.value.ci_low"]) <= float(r["value.value"]) <= float(r["value.value.ci_high"])
    out = subprocess.run([str(SAEBENCH), "compare-saes", "runs/seeds", "sae0", "sae1", "--format", "json",
                          "--metric", "value.value", "--metric", "sparsity.l0"],
                         capture_output=True, text=True, cwd=folder)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {c["metric"]: c for c in json.loads(out.stdout)}
    assert not rows["value.value"]["paired"] and rows["sparsity.l0"]["paired"]  # latents differ; contexts are shared
    assert rows["value.value"]["diff"] == pytest.approx(
        float(board(folder)["sae0"]["value.value"]) - float(board(folder)["sae1"]["value.value"])
    )


def test_reliability_ranks_the_saes_between_seeds(seeded):
    folder, _, _ = seeded
    out = subprocess.run([str(SAEBENCH), "leaderboard", "runs/seeds", "--reliability", "--format", "json"],
                         capture_output=True, text=True, cwd=folder)  # fmt: skip
    assert out.returncode == 0, out.stderr
    rows = {r["metric"]: r for r in json.loads(out.stdout)}
    assert {"value.value", "sparse_probing.k1_accuracy"} <= set(rows)
    for r in rows.values():
        assert r["seeds"] == 3 and r["saes"] == 3
        assert r["mean_rank_correlation"] is None or -1 <= r["min_rank_correlation"] <= r["mean_rank_correlation"] <= 1


def test_the_report_flags_metrics_whose_ranking_changes_with_the_seed(seeded):
    from saebench.results.intervals import STABLE_RANK_CORRELATION, reliability
    from saebench.results.leaderboard import leaderboard_rows
    from saebench.results.report import write_report

    folder, _, _ = seeded
    output = folder / "runs" / "seeds"
    expected = reliability(*leaderboard_rows(output))
    page = write_report(output, folder / "report.html", resamples=50).read_text()
    assert 'id="seeds"' in page and "Across seeds" in page
    section = page[page.index('class="reliability"') :]
    section = section[: section.index("</table>")]
    for r in expected:
        assert f"<code>{r['metric']}</code>" in section
    unstable = [r for r in expected if r["stable"] is False]
    assert section.count('class="unstable"') == len(unstable)
    assert all(r["mean_rank_correlation"] < STABLE_RANK_CORRELATION for r in unstable)


def test_an_unstable_ranking_is_flagged_and_a_stable_one_is_not():
    from saebench.results.intervals import reliability
    from saebench.results.report import _reliability

    columns = ["m@s0.x", "m@s1.x", "m@s0.y", "m@s1.y"]
    rows = [{"m@s0.x": i, "m@s1.x": i, "m@s0.y": i, "m@s1.y": -i} for i in range(4)]
    got = {r["metric"]: r for r in reliability(columns, rows)}
    assert got["m.x"]["stable"] is True and got["m.x"]["mean_rank_correlation"] == pytest.approx(1.0)
    assert got["m.y"]["stable"] is False and got["m.y"]["mean_rank_correlation"] == pytest.approx(-1.0)
    html = _reliability(list(got.values()))
    assert html.count('class="unstable"') == 1 and html.index("m.y") < html.index('class="unstable"')
