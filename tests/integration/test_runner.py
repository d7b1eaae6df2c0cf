"""`saebench run` end to end on a tiny Llama with real plugins: stages, resume, failures, leaderboard."""

import csv
import io
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
import types
from pathlib import Path

import pytest
import yaml

import saebench
import saebench.testing
from matrices import edit as write_matrix
from matrices import run as run_in_process
from reference import random_weights
from saebench.results.leaderboard import render

SAEBENCH = Path(sys.executable).parent / "saebench"
D_MODEL = 32  # tiny_llama's hidden size


def cli(*args, cwd=None, timeout=600):
    return subprocess.run([str(SAEBENCH), *args], capture_output=True, text=True, cwd=cwd, timeout=timeout)


@pytest.fixture
def workdir(tmp_path, tiny_llama, tiny_corpus, monkeypatch):
    """A folder with a checkpoint SAE and a matrix that also trains one; cwd is the folder."""
    monkeypatch.chdir(tmp_path)
    saebench.save_sae(saebench.build_sae("relu", random_weights(D_MODEL, 96, arch="relu"), hook_name="layers.1"), tmp_path / "saes" / "relu-ckpt")
    matrix = {
        "name": "tiny",
        "output": "runs/tiny",
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 1024, "context_length": 32},
        "models": [{"name": "tiny-llama", "path": str(tiny_llama), "hookpoints": ["layers.0", "layers.1"]}],
        "saes": [
            {"name": "relu-ckpt", "model": "tiny-llama", "hookpoint": "layers.1", "path": "saes/relu-ckpt"},
            {"name": "topk-trained", "model": "tiny-llama", "hookpoint": "layers.1",
             "train": {"arch": "topk", "d_sae": 64, "k": 4, "tokens": 8192, "batch_size": 256}},
        ],
        "scorers": ["sparsity", "reconstruction", {"name": "downstream", "options": {"tokens": 256}}],
    }
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    return tmp_path


def leaderboard(folder):
    return list(csv.DictReader(io.StringIO(render(folder / "runs" / "tiny", "csv"))))


def finished_times(folder):
    db = sqlite3.connect(folder / "runs" / "tiny" / "results.sqlite")
    try:
        return {tuple(r[:4]): r[4] for r in db.execute("SELECT model, hookpoint, sae, scorer, finished FROM cells WHERE status='done'")}
    finally:
        db.close()


def test_run_scores_every_cell_and_prints_the_leaderboard(workdir):
    out = cli("run", "matrix.yaml", cwd=workdir)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "| model | hookpoint | sae |" in out.stdout  # the leaderboard is printed at the end
    rows = {r["sae"]: r for r in leaderboard(workdir)}
    assert set(rows) == {"relu-ckpt", "topk-trained"}
    for r in rows.values():
        assert r["model"] == "tiny-llama" and r["hookpoint"] == "layers.1"
        for col in ("sparsity.l0", "reconstruction.explained_variance", "downstream.ce_loss_score", "downstream.kl_score"):
            assert r[col] != "", (r["sae"], col)
    assert 0 < float(rows["topk-trained"]["sparsity.l0"]) <= 4
    assert float(rows["topk-trained"]["reconstruction.explained_variance"]) > 0.3  # it learned something
    # the trained SAE is saved in the native format beside the results
    trained = saebench.load_sae(workdir / "runs" / "tiny" / "saes" / "topk-trained")
    assert trained.cfg.arch == "topk" and trained.cfg.d_in == D_MODEL and trained.cfg.hook_name == "layers.1"
    # the run's config and versions are stored with the results
    db = sqlite3.connect(workdir / "runs" / "tiny" / "results.sqlite")
    matrix_json, versions_json, status = db.execute("SELECT matrix, versions, status FROM runs").fetchone()
    db.close()
    assert json.loads(matrix_json)["name"] == "tiny" and "torch" in json.loads(versions_json) and status == "ok"


def test_rerun_skips_finished_cells_and_a_change_recomputes_only_its_cells(workdir):
    first = run_in_process(workdir)
    assert (first.done, first.skipped, first.failed) == (6, 0, [])
    before = finished_times(workdir)
    again = run_in_process(workdir)
    assert (again.done, again.skipped) == (0, 6)
    assert finished_times(workdir) == before
    m = write_matrix(workdir)
    m["scorers"][2]["options"]["tokens"] = 128
    write_matrix(workdir, scorers=m["scorers"])
    changed = run_in_process(workdir)
    assert (changed.done, changed.skipped) == (2, 4)
    after = finished_times(workdir)
    recomputed = {k for k in after if after[k] != before[k]}
    assert recomputed == {("tiny-llama", "layers.1", "relu-ckpt", "downstream"), ("tiny-llama", "layers.1", "topk-trained", "downstream")}


class ExplodingScorer(saebench.Scorer):
    """Raises on one SAE (test only)."""

    name = "explode"

    def score(self, sae, inputs):
        if sae.cfg.arch == "relu":
            raise RuntimeError("boom on purpose")
        return saebench.ScoreResult(metrics={"ok": 1.0, "missing": None})


def test_a_failing_cell_is_recorded_and_the_others_still_run(workdir):
    module = types.ModuleType("explode_plugin")
    module.register_scorers = saebench.hookimpl(lambda register: register(ExplodingScorer))
    module.register_scorers.__name__ = "register_scorers"
    saebench.testing.register_plugin(module, "explode-plugin")
    try:
        write_matrix(workdir, scorers=["sparsity", "explode"])
        report = run_in_process(workdir)
    finally:
        saebench.testing.unregister_plugin("explode-plugin")
    assert report.exit_code == 1 and len(report.failed) == 1
    key, error = report.failed[0]
    assert (key.sae, key.scorer) == ("relu-ckpt", "explode") and "boom on purpose" in error
    rows = {r["sae"]: r for r in leaderboard(workdir)}
    assert rows["relu-ckpt"]["explode.ok"] == "" and rows["relu-ckpt"]["sparsity.l0"] != ""
    assert rows["topk-trained"]["explode.ok"] == "1.0" and rows["topk-trained"]["explode.missing"] == ""


def test_saes_of_one_hook_point_train_on_their_own_token_counts(workdir):
    saes = yaml.safe_load((workdir / "matrix.yaml").read_text())["saes"]
    small = {**saes[1], "name": "topk-small", "train": {**saes[1]["train"], "tokens": 4096}}
    write_matrix(workdir, saes=[*saes, small], scorers=["sparsity"])
    report = run_in_process(workdir)
    assert report.exit_code == 0 and report.done == 3
    for name, tokens in (("topk-trained", 8192), ("topk-small", 4096)):
        sae = saebench.load_sae(workdir / "runs" / "tiny" / "saes" / name)
        assert sae.cfg.metadata["training"]["tokens"] == tokens  # each its own training set, none short


def test_killed_run_resumes_without_recomputing_finished_cells(workdir):
    # one forward pass per context makes each downstream cell take a few hundred ms: the kill lands in it
    write_matrix(workdir, scorers=["sparsity", "reconstruction", {"name": "downstream", "options": {"tokens": 1024, "batch_contexts": 1}}])
    proc = subprocess.Popen([str(SAEBENCH), "run", "matrix.yaml", "--quiet"], cwd=workdir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    db_path = workdir / "runs" / "tiny" / "results.sqlite"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if db_path.exists():
            try:
                db = sqlite3.connect(db_path)
                n = db.execute("SELECT count(*) FROM cells").fetchone()[0]
                db.close()
            except sqlite3.Error:
                n = 0
            if n >= 2:
                break
        time.sleep(0.01)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    before = finished_times(workdir)
    assert 0 < len(before) < 6, "the kill should land between the first and the last cell"
    out = cli("run", "matrix.yaml", "--quiet", cwd=workdir)
    assert out.returncode == 0, out.stderr[-2000:]
    after = finished_times(workdir)
    assert len(after) == 6
    assert all(after[k] == v for k, v in before.items())  # finished cells were not recomputed
    db = sqlite3.connect(db_path)
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    db.close()


@pytest.mark.parametrize(
    "change,expected",
    [
        (lambda m: m.update(scorers=["sparsty"]), "scorers[0].name: unknown scorer 'sparsty' (did you mean 'sparsity'?)"),
        (lambda m: m["saes"][0].update(model="nope"), "saes[0].model: unknown model 'nope'"),
        (lambda m: m["saes"][0].update(hookpoint="layers.9"), "saes[0].hookpoint: hook point 'layers.9' is not among"),
        (lambda m: m["saes"][0].update(path="saes/missing"), "saes[0].path: no such checkpoint 'saes/missing'"),
        (lambda m: m["data"].update(tokens="many"), "data.tokens: Input should be a valid integer"),
        (lambda m: m["saes"][1]["train"].update(arch="topq"), "saes[1].train.arch: unknown architecture 'topq'"),
        (lambda m: m["saes"][1]["train"].pop("k"), "saes[1].train"),
        (lambda m: m["scorers"][2]["options"].update(bogus=1), "scorers[2].options"),
        (lambda m: m.pop("models"), "models: Field required"),
    ],
    ids=["scorer", "model-ref", "hookpoint", "checkpoint", "type", "arch", "train-config", "scorer-option", "missing-key"],
)
def test_bad_matrices_exit_2_with_one_line_and_write_nothing(workdir, change, expected):
    m = yaml.safe_load((workdir / "matrix.yaml").read_text())
    change(m)
    (workdir / "matrix.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    out = cli("run", "matrix.yaml", cwd=workdir)
    lines = out.stderr.strip().splitlines()
    assert out.returncode == 2 and len(lines) == 1, out.stderr[-2000:]
    assert lines[0].startswith("saebench: error: matrix.yaml") and expected in lines[0], lines[0]
    assert not (workdir / "runs").exists()


def test_yaml_syntax_error_names_the_line(workdir):
    (workdir / "matrix.yaml").write_text("name: x\nmodels: [\n  {name: a\n")
    out = cli("run", "matrix.yaml", cwd=workdir)
    assert out.returncode == 2 and "invalid YAML at line" in out.stderr and out.stderr.count("\n") == 1


def test_sae_width_mismatch_is_bad_input(workdir):
    saebench.save_sae(saebench.build_sae("relu", random_weights(D_MODEL + 1, 64, arch="relu")), workdir / "saes" / "relu-ckpt")
    out = cli("run", "matrix.yaml", cwd=workdir)
    assert out.returncode == 2 and "has d_in 33 but tiny-llama layers.1 has width 32" in out.stderr


def test_leaderboard_formats_and_sorting(workdir):
    run_in_process(workdir)
    out = workdir / "runs" / "tiny"
    data = json.loads(cli("leaderboard", str(out), "--format", "json").stdout)
    assert [r["sae"] for r in data] == ["relu-ckpt", "topk-trained"]
    ev = "reconstruction.explained_variance"
    by_ev = json.loads(cli("leaderboard", str(out), "--format", "json", "--sort", ev, "--descending").stdout)
    assert [r[ev] for r in by_ev] == sorted((r[ev] for r in data), reverse=True)
    md = cli("leaderboard", str(out), "--format", "markdown").stdout
    assert md.splitlines()[0].startswith("| model | hookpoint | sae | sparsity.l0")
    cli("leaderboard", str(out), "--output", "board.csv")
    assert (workdir / "board.csv").read_text().splitlines()[0].startswith("model,hookpoint,sae,sparsity.l0")
    bad = cli("leaderboard", str(out), "--sort", "nope")
    assert bad.returncode == 2 and "unknown column 'nope'" in bad.stderr


def test_train_command_trains_and_saves_one_sae(tmp_path, tiny_llama, tiny_corpus):
    out = cli("train", "--model", str(tiny_llama), "--hookpoint", "layers.0", "--arch", "topk", "--d-sae", "48",
              "--k", "3", "--tokens", "2048", "--batch-size", "256", "--data-source", "text-files",
              "--data", f"paths=[{tiny_corpus}/*.txt]", "--context-length", "32", "--output", str(tmp_path / "t"),
              "--name", "mine", "--quiet")
    assert out.returncode == 0, out.stderr[-2000:]
    folder = Path(out.stdout.strip().splitlines()[-1])
    assert folder == tmp_path / "t" / "saes" / "mine"
    sae = saebench.load_sae(folder)
    assert (sae.cfg.arch, sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k, sae.cfg.hook_name) == ("topk", D_MODEL, 48, 3, "layers.0")
    assert sae.cfg.metadata["training"]["tokens"] >= 2048
    bad = cli("train", "--model", str(tiny_llama), "--hookpoint", "layers.0", "--arch", "topk", "--d-sae", "48",
              "--tokens", "2048", "--output", str(tmp_path / "t2"))
    assert bad.returncode == 2 and "saebench train: saes[0].train" in bad.stderr and "needs k" in bad.stderr


def test_downstream_cells_of_several_saes_are_scored_together_and_equal_each_scored_alone(workdir, monkeypatch):
    from saebench.plugins.scorers.downstream import DownstreamScorer

    groups = []
    real = DownstreamScorer.score_many
    monkeypatch.setattr(DownstreamScorer, "score_many", lambda self, saes, inputs: groups.append(len(saes)) or real(self, saes, inputs))
    together = run_in_process(workdir)
    assert together.done == 6 and groups == [2]  # both SAEs' downstream cells in one call
    shared = {r["sae"]: r for r in leaderboard(workdir)}
    m = write_matrix(workdir)
    for sae in m["saes"]:  # each SAE alone, in a matrix of its own
        write_matrix(workdir, saes=[sae], output=f"runs/alone-{sae['name']}")
        run_in_process(workdir)
        alone = list(csv.DictReader(io.StringIO(render(workdir / "runs" / f"alone-{sae['name']}", "csv"))))[0]
        for col in ("downstream.ce_loss_score", "downstream.kl_score", "downstream.ce_clean", "downstream.kl_zero"):
            assert float(alone[col]) == pytest.approx(float(shared[sae["name"]][col]), rel=1e-5, abs=1e-7), col
    assert groups == [2, 1, 1]  # alone, each SAE goes through score(), which is score_many of one


def test_a_failing_sae_in_a_downstream_group_fails_only_its_cell(workdir, monkeypatch):
    from saebench.plugins.scorers.downstream import DownstreamScorer

    real = DownstreamScorer.score_many

    def score_many(self, saes, inputs):
        if any(sae.cfg.arch == "relu" for sae in saes):
            raise RuntimeError("boom in the relu SAE")
        return real(self, saes, inputs)

    monkeypatch.setattr(DownstreamScorer, "score_many", score_many)  # score() is score_many of one SAE
    report = run_in_process(workdir)
    assert [(key.sae, key.scorer) for key, _ in report.failed] == [("relu-ckpt", "downstream")]
    assert "boom in the relu SAE" in report.failed[0][1]
    rows = {r["sae"]: r for r in leaderboard(workdir)}
    assert rows["topk-trained"]["downstream.ce_loss_score"] != "" and rows["relu-ckpt"]["downstream.ce_loss_score"] == ""


def test_a_downstream_group_beyond_the_memory_budget_is_scored_in_parts(workdir, monkeypatch):
    from saebench.plugins.scorers.downstream import DownstreamScorer
    from saebench.run import shared

    sizes = []
    real = DownstreamScorer.score_many
    monkeypatch.setattr(DownstreamScorer, "score_many", lambda self, saes, inputs: sizes.append(len(saes)) or real(self, saes, inputs))
    monkeypatch.setattr(shared, "GROUP_BYTES", 1)  # no two SAEs fit together
    report = run_in_process(workdir)
    assert report.done == 6 and not report.failed and sizes == [1, 1]
