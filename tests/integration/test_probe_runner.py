"""Probe scorers through the runner on the tiny model: the task's forward pass is cached once and
shared by every SAE and scorer, finished cells are not recomputed, TreeProbe names its rules with
the matrix's explainer, and bad probe configuration stops the run before any work (exit 2)."""

import csv
import io
import json
import sqlite3
import types

import pytest
import yaml

import saebench
import saebench.testing
from matrices import edit, run
from saebench import hookimpl
from saebench.cli import main
from saebench.interfaces import Explainer
from saebench.interp.types import Explanation
from saebench.results.leaderboard import render
from test_sparse_probing import CharClassTask
from tiny import firing_sae

EXPLAINED = []


class NamingExplainer(Explainer):
    """Naming: a fixed sentence per latent (the test can recognise it)."""

    name = "naming-test"
    needs_llm = False

    async def explain(self, record):
        EXPLAINED.append(record.latent)
        return Explanation(latent=record.latent, explainer=self.name, text=f"the mark of latent {record.latent}")


plugin = types.SimpleNamespace(
    register_probe_tasks=hookimpl(lambda register: register(CharClassTask)),
    register_explainers=hookimpl(lambda register: register(NamingExplainer)),
)
TASKS = ["char-class-test"]


@pytest.fixture
def workdir(tmp_path, tiny_llama, tiny_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saebench.testing.register_plugin(plugin, "probe-test-plugin")
    EXPLAINED.clear()
    for i, arch in enumerate(["relu", "topk"]):
        extra = {"k": 8} if arch == "topk" else {}
        saebench.save_sae(firing_sae(arch, 64, seed=i, **extra), tmp_path / arch)
    matrix = {
        "name": "probes",
        "output": "runs/probes",
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 2048, "context_length": 64},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": [{"name": a, "model": "tiny", "hookpoint": "layers.1", "path": a} for a in ("relu", "topk")],
        "scorers": [{"name": "sparse_probing", "options": {"tasks": TASKS, "ks": [1, 4]}},
                    {"name": "treeprobe", "options": {"tasks": TASKS, "finetune_epochs": 5, "seeds": 2}}],
        "interp": {"min_activating": 2, "window": 8, "n_train": 3, "n_test": 3, "n_negatives": 2},
    }
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    yield tmp_path
    saebench.testing.unregister_plugin("probe-test-plugin")


def board(folder):
    return {r["sae"]: r for r in csv.DictReader(io.StringIO(render(folder / "runs" / "probes", "csv")))}


def details(folder, sae, scorer):
    db = sqlite3.connect(folder / "runs" / "probes" / "results.sqlite")
    try:
        [(blob,)] = db.execute("SELECT details FROM cells WHERE sae=? AND scorer=?", (sae, scorer)).fetchall()
    finally:
        db.close()
    return json.loads(blob)


def test_probe_cells_share_one_forward_pass_and_resume(workdir):
    report = run(workdir)
    assert report.exit_code == 0 and report.done == 4, report.failed
    folder = workdir / "runs" / "probes" / "cache" / "probes"
    probes = [p for p in folder.iterdir() if p.name != ".locks"]
    assert len(probes) == 1  # one task × one hook point, for two SAEs and two scorers
    assert list((folder / ".locks").iterdir()) == []  # its lock was released
    rows = board(workdir)
    for sae in ("relu", "topk"):
        row = rows[sae]
        assert 0 <= float(row["sparse_probing.k4_accuracy"]) <= 1
        assert float(row["treeprobe.dense_accuracy"]) > 0.9  # char classes are easy from the residual stream
        # labels follow the (byte) token alone: latents cannot beat the token-identity baseline
        assert float(row["treeprobe.head_accuracy"]) <= float(row["treeprobe.token_identity_accuracy"]) + 0.02
        assert float(row["treeprobe.tree_gap"]) == pytest.approx(
            float(row["treeprobe.head_accuracy"]) - float(row["treeprobe.tree_hard_accuracy"]))
    tree = details(workdir, "relu", "treeprobe")["tasks"]["char-class-test"]["tree"]
    assert sorted(tree_leaves(tree)) == ["digit", "letter", "other", "space"]
    again = run(workdir)
    assert again.done == 0 and again.skipped == 4


def tree_leaves(node):
    if "children" not in node or not node["children"]:
        return [node["name"]] if "name" in node else node.get("leaves", [])
    out = []
    for child in node["children"]:
        out += tree_leaves(child)
    return out


def rules(folder, sae):
    nodes = []

    def walk(node):
        if node.get("children"):
            nodes.append(node)
            for child in node["children"]:
                walk(child)

    walk(details(folder, sae, "treeprobe")["tasks"]["char-class-test"]["tree"])
    return nodes


def test_rules_are_named_by_the_matrix_explainer(workdir):
    edit(workdir, explainers=["naming-test"])
    assert run(workdir).exit_code == 0
    named = [n for n in rules(workdir, "relu") if n.get("latents")]
    assert named
    for node in named:
        top = node["latents"][0]
        if top in EXPLAINED:
            assert node["rule"] == f"Is there the mark of latent {top}?"
    assert EXPLAINED  # rules were named through the explainer, not the fallback


def test_without_an_explainer_rules_use_top_tokens(workdir):
    assert run(workdir).exit_code == 0
    named = [n for n in rules(workdir, "topk") if n.get("latents")]
    assert named and all(n["rule"].startswith("Is there tokens") for n in named)


def test_bad_probe_configuration_exits_2_before_work(workdir, capsys):
    edit(workdir, scorers=[{"name": "treeprobe", "options": {"tasks": ["no-such-task"]}}])
    assert main(["run", "matrix.yaml", "--quiet"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "no-such-task" in err[0] and "scorers[0]" in err[0]
    assert not (workdir / "runs" / "probes" / "cache").exists()


def test_trees_export_as_json_from_the_command_line(workdir, capsys):
    assert run(workdir).exit_code == 0
    assert main(["leaderboard", "runs/probes", "--details", "--scorer", "treeprobe"]) == 0
    cells = json.loads(capsys.readouterr().out)
    assert sorted(c["sae"] for c in cells) == ["relu", "topk"] and {c["scorer"] for c in cells} == {"treeprobe"}
    tree = cells[0]["details"]["tasks"]["char-class-test"]["tree"]
    assert sorted(tree_leaves(tree)) == ["digit", "letter", "other", "space"] and tree["rule"].startswith("Is there")
    assert main(["leaderboard", "runs/probes", "--scorer", "absent"]) == 2
