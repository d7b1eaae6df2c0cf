"""Baseline SAEs (saebench.training.baselines): random directions, PCA of the evaluation activations and the
MLP's neurons, their matrix blocks and errors, and a run that scores all three like any SAE."""

import csv
import io
import json
import sqlite3

import numpy as np
import pytest
import torch

import saebench
from saebench.errors import ConfigError
from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter
from saebench.results.leaderboard import render
from saebench.run.components import build_components
from saebench.run.execute import execute
from saebench.run.matrix import parse_matrix
from saebench.run.plan import make_plan
from saebench.run.progress import Progress
from saebench.training.baselines import (
    neuron_baseline,
    pca_baseline,
    principal_directions,
    random_baseline,
)

D_MODEL = 32  # tiny_llama's hidden size


# -- the builders --------------------------------------------------------------------------------
def test_random_baseline_has_unit_decoder_rows_tied_encoder_and_is_seeded():
    sae = random_baseline(24, 100, 5, seed=3)
    assert sae.cfg.arch == "topk" and (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (24, 100, 5)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(100))
    assert torch.equal(sae.W_enc, sae.W_dec.T)
    assert not sae.b_enc.any() and not sae.b_dec.any()
    assert torch.equal(random_baseline(24, 100, 5, seed=3).W_dec, sae.W_dec)
    assert not torch.equal(random_baseline(24, 100, 5, seed=4).W_dec, sae.W_dec)
    values, _ = sae.encode_sparse(torch.randn(7, 24))
    assert values.shape == (7, 5)


def _known_covariance(n=20000, d=6, seed=0):
    rng = np.random.default_rng(seed)
    q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    scales = np.array([5.0, 3.0, 2.0, 1.0, 0.5, 0.2])
    mean = rng.normal(size=d) * 3
    x = (rng.normal(size=(n, d)) * scales) @ q.T + mean
    return x, q, scales**2, mean


def test_pca_recovers_the_top_eigenvectors():
    x, q, variances, mean = _known_covariance()
    chunks = [torch.from_numpy(c) for c in np.array_split(x, 7)]  # accumulated chunk by chunk
    got_mean, got_values, got_vectors = principal_directions(chunks, 3)
    values, vectors = np.linalg.eigh(np.cov(x, rowvar=False))  # float64 reference
    values, vectors = values[::-1][:3], vectors[:, ::-1][:, :3].T
    np.testing.assert_allclose(got_mean.numpy(), x.mean(0), rtol=1e-10)
    np.testing.assert_allclose(got_values.numpy(), values, rtol=1e-8)
    for got, want, true in zip(got_vectors.numpy(), vectors, q.T[:3]):
        sign = np.sign(got @ want)
        np.testing.assert_allclose(sign * got, want, atol=1e-8)
        assert abs(got @ true) > 0.99  # and the population's directions, up to sampling
    np.testing.assert_allclose(got_values.numpy(), variances[:3], rtol=0.05)
    assert np.abs(got_mean.numpy() - mean).max() < 0.1


def test_pca_baseline_layout_and_exact_reconstruction_with_every_direction():
    x, _, _, _ = _known_covariance(n=4000)
    xt = torch.from_numpy(x)
    sae = pca_baseline([xt[:1000], xt[1000:]], k=6)
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.k) == (6, 12, 6)  # each direction as +v and -v
    assert sae.cfg.apply_b_dec_to_input and torch.equal(sae.W_enc, sae.W_dec.T)
    torch.testing.assert_close(sae.W_dec[0::2], -sae.W_dec[1::2])
    torch.testing.assert_close(sae.b_dec.double(), xt.mean(0), rtol=1e-6, atol=1e-6)
    x32 = xt[:500].float()
    torch.testing.assert_close(sae(x32), x32, rtol=1e-4, atol=1e-4)
    sae2 = pca_baseline([xt], k=2, n=2)
    assert sae2.cfg.d_sae == 4
    err2 = (sae2(x32) - x32).pow(2).sum()
    assert err2 > 1e-3 and err2 < (x32 - x32.mean(0)).pow(2).sum()  # two directions explain most, not all


def test_neuron_baseline_is_the_identity():
    sae = neuron_baseline(10, 3)
    assert torch.equal(sae.W_enc, torch.eye(10)) and torch.equal(sae.W_dec, torch.eye(10))
    x = torch.randn(4, 10)
    want = torch.zeros_like(x).scatter(1, x.topk(3, dim=1).indices, x.topk(3, dim=1).values.relu())
    torch.testing.assert_close(sae(x), want)


# -- the neuron hook point on the tiny Llama -------------------------------------------------------
def test_mlp_hidden_is_act_fn_of_gate_times_up(tiny_llama):
    adapter = HFCausalLMAdapter(str(tiny_llama))
    tokens = torch.randint(3, adapter.model.config.vocab_size, (2, 10), generator=torch.Generator().manual_seed(0))
    mlp = adapter.model.model.layers[1].mlp
    inputs = []
    handle = mlp.register_forward_pre_hook(lambda mod, args: inputs.append(args[0].detach().clone()))
    with torch.no_grad():
        clean = adapter.model(tokens).logits
    handle.remove()
    with torch.no_grad():
        x = inputs[0]
        manual = mlp.act_fn(x @ mlp.gate_proj.weight.T) * (x @ mlp.up_proj.weight.T)
    got = adapter.capture(tokens, ["layers.1.mlp.hidden"])["layers.1.mlp.hidden"]
    assert got.shape == (2, 10, adapter.model.config.intermediate_size)
    assert adapter.d_model("layers.1.mlp.hidden") == adapter.model.config.intermediate_size
    torch.testing.assert_close(got, manual, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(adapter.logits(tokens, replace={"layers.1.mlp.hidden": lambda h: h}), clean)
    zeroed = adapter.logits(tokens, replace={"layers.1.mlp.hidden": torch.zeros_like})
    assert (zeroed - clean).abs().max() > 1e-4


# -- matrix blocks, errors and the plan ------------------------------------------------------------
def _matrix(tiny_llama, corpus, saes, scorers=("sparsity", "reconstruction"), output="runs/base"):
    return {
        "name": "baselines",
        "output": output,
        "data": {"source": "text-files", "paths": [f"{corpus}/*.txt"], "tokens": 1024, "context_length": 32},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1", "layers.1.mlp.hidden"]}],
        "saes": saes,
        "scorers": list(scorers),
    }


def _sae(name="b", hookpoint="layers.1", **baseline):
    return {"name": name, "model": "tiny", "hookpoint": hookpoint, "baseline": baseline}


@pytest.mark.parametrize(
    "sae,problem",
    [
        (_sae(kind="lasso", k=4), "unknown baseline kind 'lasso'"),
        (_sae(kind="random", d_sae=64), "needs 'k'"),
        (_sae(kind="pca"), "needs 'k'"),
        (_sae(kind="neurons", k=4), "layers.{i}.mlp.hidden"),
        (_sae(kind="random", k=4), "needs 'd_sae'"),
        (_sae(kind="random", d_sae=8, k=9), "larger than d_sae"),
        (_sae(kind="pca", k=4, seed=1), "not random"),
        (_sae(kind="random", d_sae=8, k=2, extra=1), "Extra inputs"),
        ({"name": "b", "model": "tiny", "hookpoint": "layers.1", "baseline": [1]}, "valid dictionary"),
    ],
)
def test_bad_baseline_blocks_name_the_block(tiny_llama, tiny_corpus, sae, problem):
    with pytest.raises(ConfigError) as err:
        parse_matrix(_matrix(tiny_llama, tiny_corpus, [sae]), "m.yaml")
    assert err.value.where.startswith("m.yaml: saes[0].baseline"), err.value.where
    assert problem in err.value.problem and "\n" not in str(err.value)


def test_a_baseline_is_one_source_only(tiny_llama, tiny_corpus):
    sae = {**_sae(kind="random", d_sae=8, k=2), "train": {"arch": "topk", "d_sae": 8, "k": 2, "tokens": 1024}}
    with pytest.raises(ConfigError, match="exactly one of 'path'.*'train'.*'baseline'"):
        parse_matrix(_matrix(tiny_llama, tiny_corpus, [sae]), "m.yaml")


def test_the_plan_hash_covers_the_baseline_block(tiny_llama, tiny_corpus):
    def plan(**baseline):
        m = parse_matrix(_matrix(tiny_llama, tiny_corpus, [_sae(**baseline)]), "m.yaml")
        return make_plan(m, "m.yaml", build_components(m, "m.yaml"))

    a, b, c = plan(kind="random", d_sae=64, k=4), plan(kind="random", d_sae=64, k=4, seed=1), plan(kind="pca", k=4)
    hashes = {p.saes["b"].train_hash for p in (a, b, c)}
    assert len(hashes) == 3 and a.saes["b"].train_hash == plan(kind="random", d_sae=64, k=4).saes["b"].train_hash
    assert a.saes["b"].identity["baseline"] == {"kind": "random", "d_sae": 64, "k": 4}
    assert a.cells[0].config_hash != b.cells[0].config_hash
    assert [s.kind for s in a.stages] == ["activations", "train", "cells"]


# -- a run -----------------------------------------------------------------------------------------
def test_a_run_builds_and_scores_the_three_baselines(tiny_llama, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saes = [
        _sae("random", kind="random", d_sae=128, k=8, seed=1),
        _sae("pca", kind="pca", d_sae=16, k=8),
        _sae("pca-full", kind="pca", k=D_MODEL),
        _sae("neurons", hookpoint="layers.1.mlp.hidden", kind="neurons", k=8),
    ]
    scorers = ("sparsity", "reconstruction", {"name": "downstream", "options": {"tokens": 256}})
    matrix = parse_matrix(_matrix(tiny_llama, tiny_corpus, saes, scorers), "m.yaml")
    execute(matrix, source="m.yaml", progress=Progress(False))
    rows = {r["sae"]: r for r in csv.DictReader(io.StringIO(render(tmp_path / "runs" / "base", "csv")))}
    assert set(rows) == {"random", "pca", "pca-full", "neurons"}
    for name, k in (("random", 8), ("pca", 8), ("pca-full", D_MODEL), ("neurons", 8)):
        assert float(rows[name]["sparsity.l0"]) == pytest.approx(k, abs=0.05), name
    assert rows["neurons"]["hookpoint"] == "layers.1.mlp.hidden"
    assert all(r["downstream.ce_loss_score"] != "" for r in rows.values())  # spliced in at the hook point
    assert float(rows["pca-full"]["downstream.ce_loss_score"]) == pytest.approx(1, abs=0.01)
    ev = {n: float(r["reconstruction.explained_variance"]) for n, r in rows.items()}
    assert ev["pca-full"] > 0.999 and ev["pca-full"] > ev["pca"] > ev["random"]
    built = saebench.load_sae(tmp_path / "runs" / "base" / "saes" / "neurons")
    assert built.cfg.d_in == built.cfg.d_sae == 64 and built.cfg.metadata["baseline"]["kind"] == "neurons"
    db = sqlite3.connect(tmp_path / "runs" / "base" / "results.sqlite")
    configs = {s: json.loads(c) for s, c in db.execute("SELECT sae, config FROM saes")}
    db.close()
    assert configs["random"]["baseline"] == {"kind": "random", "d_sae": 128, "k": 8, "seed": 1}
    assert configs["pca"]["baseline"]["fit_on"] == "evaluation activations"
    # the report draws each kind as its own series, not as TopK SAEs
    from saebench.results.report import architectures
    from saebench.run.store import ResultsStore

    with ResultsStore.existing(tmp_path / "runs" / "base") as store:
        archs = {k[2]: a for k, a in architectures(store.sae_configs(), store.cell_configs()).items()}
    assert archs == {"random": "baseline:random", "pca": "baseline:pca", "pca-full": "baseline:pca", "neurons": "baseline:neurons"}
    # a second run finds them built and scored
    report = execute(matrix, source="m.yaml", progress=Progress(False))
    assert report.skipped == 12


def test_a_pca_wider_than_its_hook_point_stops_the_run(tiny_llama, tiny_corpus, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    matrix = parse_matrix(_matrix(tiny_llama, tiny_corpus, [_sae(kind="pca", d_sae=D_MODEL + 1, k=4)]), "m.yaml")
    with pytest.raises(ConfigError) as err:
        execute(matrix, source="m.yaml", progress=Progress(False))
    assert err.value.where == "m.yaml: saes[0].baseline" and "at most d_in=32" in err.value.problem
