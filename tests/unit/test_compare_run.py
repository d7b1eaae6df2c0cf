"""Compare cells in a run (saebench.run.compare): a matrix's ``compare:`` pairs SAEs, the cells are stored
and resumed like any other, kept out of the leaderboard, printed by ``saebench compare`` and drawn in
the report. The metrics themselves are checked against references in test_similarity.py."""

import csv
import io
import json

import pytest
import torch

from saebench.cli import main
from saebench.errors import ConfigError
from saebench.loading import build_sae, save_sae
from saebench.results.leaderboard import details_json, render
from saebench.results.pairs import render_pairs
from saebench.run.execute import execute
from saebench.run.matrix import parse_matrix
from saebench.run.progress import Progress

D_MODEL, D_SAE = 32, 64


def _topk(W_dec, b_enc, k=4):
    weights = {"W_enc": W_dec.T.contiguous(), "W_dec": W_dec.contiguous(), "b_enc": b_enc, "b_dec": torch.zeros(D_MODEL)}
    return build_sae("topk", weights, k=k)


@pytest.fixture
def saes(tmp_path):
    """SAE ``a``, ``perm`` (a with its latents permuted) and an unrelated ``other``, saved as checkpoints."""
    gen = torch.Generator().manual_seed(0)
    W = torch.randn(D_SAE, D_MODEL, generator=gen)
    W = W / W.norm(dim=1, keepdim=True)
    b = torch.randn(D_SAE, generator=gen) * 0.1
    perm = torch.randperm(D_SAE, generator=gen)
    other = torch.randn(D_SAE, D_MODEL, generator=gen)
    folders = {}
    for name, sae in (("a", _topk(W, b)), ("perm", _topk(W[perm], b[perm])), ("other", _topk(other / other.norm(dim=1, keepdim=True), b))):
        folders[name] = str(save_sae(sae, tmp_path / "ckpt" / name))
    return folders, perm


def _matrix(tiny_llama, corpus, folders, compare, **extra):
    saes = [{"name": n, "model": "tiny", "hookpoint": "layers.1", "path": p} for n, p in folders.items()]
    return {
        "name": "pairs",
        "output": "runs/pairs",
        "data": {"source": "text-files", "paths": [f"{corpus}/*.txt"], "tokens": 1024, "context_length": 32},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1", "layers.1.mlp.hidden"]}],
        "saes": saes + extra.pop("more", []),
        "scorers": ["sparsity"],
        "compare": compare,
        **extra,
    }


def _pairs(output):
    return {(r["sae_a"], r["sae_b"]): r for r in csv.DictReader(io.StringIO(render_pairs(output, "csv")))}


def test_a_permuted_copy_matches_and_an_unrelated_sae_does_not(tiny_llama, tiny_corpus, saes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folders, _ = saes
    matrix = parse_matrix(_matrix(tiny_llama, tiny_corpus, folders, ["decoder", "activations"]), "m.yaml")
    report = execute(matrix, source="m.yaml", progress=Progress(False))
    assert report.pending == 3 + 6  # a sparsity cell per SAE, a compare cell per ordered pair
    pairs = _pairs("runs/pairs")
    assert set(pairs) == {(a, b) for a in folders for b in folders if a != b}
    same, other = pairs[("a", "perm")], pairs[("a", "other")]
    for metric in ("hungarian_cosine", "decoder_max_cosine", "activation_correlation", "hungarian_frac_above_0.9"):
        assert float(same[metric]) == pytest.approx(1.0, abs=1e-4), metric
        assert float(pairs[("perm", "a")][metric]) == pytest.approx(1.0, abs=1e-4), metric
    assert float(other["hungarian_cosine"]) < 0.5 and float(other["hungarian_frac_above_0.9"]) == 0
    assert float(other["activation_correlation"]) < float(same["activation_correlation"]) - 0.3
    assert same["hookpoint_a"] == same["hookpoint_b"] == "layers.1"
    # the leaderboard keeps one row per SAE and no pair column
    rows = list(csv.DictReader(io.StringIO(render("runs/pairs", "csv"))))
    assert [r["sae"] for r in rows] == ["a", "perm", "other"]
    assert not any("compare" in c or "cosine" in c for c in rows[0])
    # resumed like any cell; changing the comparison recomputes only the pairs
    assert execute(matrix, source="m.yaml", progress=Progress(False)).skipped == 9
    changed = parse_matrix(_matrix(tiny_llama, tiny_corpus, folders, ["decoder"]), "m.yaml")
    again = execute(changed, source="m.yaml", progress=Progress(False))
    assert (again.pending, again.skipped) == (6, 3)
    assert "activation_correlation" not in _pairs("runs/pairs")[("a", "perm")] or not _pairs("runs/pairs")[("a", "perm")]["activation_correlation"]


def test_intervals_over_latents_and_the_command(tiny_llama, tiny_corpus, saes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folders, _ = saes
    execute(parse_matrix(_matrix(tiny_llama, tiny_corpus, folders, True), "m.yaml"), source="m.yaml", progress=Progress(False))
    assert main(["compare", "runs/pairs", "--format", "json", "--ci", "--resamples", "200"]) == 0
    rows = {(r["sae_a"], r["sae_b"]): r for r in json.loads(capsys.readouterr().out.split("\n\n")[0])}
    other = rows[("a", "other")]
    assert other["hungarian_cosine.ci_low"] <= other["hungarian_cosine"] <= other["hungarian_cosine.ci_high"]
    assert other["hungarian_cosine.ci_low"] < other["hungarian_cosine.ci_high"]  # latents vary: a real spread
    # a latent and its permuted copy are explained alike (their examples are drawn with the latent's index
    # in the seed, so not always word for word); unrelated latents less so
    same, unrelated = rows[("a", "perm")]["explanation_similarity"], rows[("a", "other")]["explanation_similarity"]
    assert same > 0.95 and unrelated < same, (same, unrelated)
    # the pairs are the permutation's, and each cosine is the embedding model's own, recomputed here
    from sentence_transformers import SentenceTransformer

    from saebench.models import embedded

    (details,) = [c["details"] for c in json.loads(details_json("runs/pairs")) if c["sae"] == "a" and c["scorer"] == "compare[perm]"]
    pairs = details["explanations"]["pairs"]
    assert len(pairs) >= 5 and details["explanations"]["explained_a"] >= len(pairs)
    _, perm = saes
    assert all(int(perm[p["b"]]) == p["a"] for p in pairs)
    model = SentenceTransformer(str(embedded.resolve("all-minilm-l6-v2")), device="cpu")
    ea = model.encode([p["text_a"] for p in pairs], normalize_embeddings=True)
    eb = model.encode([p["text_b"] for p in pairs], normalize_embeddings=True)
    want = (ea * eb).sum(1)
    assert [p["cosine"] for p in pairs] == pytest.approx(want.tolist(), abs=1e-4)
    assert same == pytest.approx(float(want.mean()), abs=1e-4)
    assert main(["report", "runs/pairs"]) == 0
    html = (tmp_path / "runs" / "pairs" / "report.html").read_text()
    assert "SAE-to-SAE similarity" in html and html.count('alt="hungarian_cosine"') == 1


def test_across_hook_points_compares_activations_only(tiny_llama, tiny_corpus, saes, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    folders, _ = saes
    neurons = {"name": "neurons", "model": "tiny", "hookpoint": "layers.1.mlp.hidden", "baseline": {"kind": "neurons", "k": 4}}
    compare = {"metrics": ["decoder", "activations"], "across_hookpoints": True}
    m = _matrix(tiny_llama, tiny_corpus, {"a": folders["a"]}, compare, more=[neurons])
    execute(parse_matrix(m, "m.yaml"), source="m.yaml", progress=Progress(False))
    pairs = _pairs("runs/pairs")
    row = pairs[("a", "neurons")]
    assert (row["hookpoint_a"], row["hookpoint_b"]) == ("layers.1", "layers.1.mlp.hidden")
    assert row["hungarian_cosine"] == "" and row["decoder_max_cosine"] == ""  # different widths: no directions to compare
    assert 0 < float(row["activation_max_correlation"]) <= 1
    # without across_hookpoints, SAEs at different hook points are not paired
    m = _matrix(tiny_llama, tiny_corpus, {"a": folders["a"]}, ["decoder"], more=[neurons], output="runs/alone")
    report = execute(parse_matrix(m, "m.yaml"), source="m.yaml", progress=Progress(False))
    assert report.pending == 2


@pytest.mark.parametrize(
    "compare,where",
    [(["decoder", "weights"], "compare.metrics[1]"), ({"latents": 0}, "compare.latents"), ({"across": True}, "compare.across"), ([], "compare.metrics")],
)
def test_bad_compare_blocks_name_the_key(tiny_llama, tiny_corpus, saes, compare, where):
    folders, _ = saes
    with pytest.raises(ConfigError) as err:
        parse_matrix(_matrix(tiny_llama, tiny_corpus, folders, compare), "m.yaml")
    assert err.value.where == f"m.yaml: {where}", err.value.where
    assert "\n" not in str(err.value)


def test_compare_without_compare_cells_is_exit_2(tiny_llama, tiny_corpus, saes, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    folders, _ = saes
    execute(parse_matrix(_matrix(tiny_llama, tiny_corpus, folders, False), "m.yaml"), source="m.yaml", progress=Progress(False))
    capsys.readouterr()  # the run's own output (a model loading bar)
    assert main(["compare", "runs/pairs"]) == 2
    err = capsys.readouterr().err.strip()
    assert err == "saebench: error: runs/pairs: no finished compare cells here; add 'compare: true' to the matrix and run it"
