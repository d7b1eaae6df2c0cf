"""BatchTopK and Matryoshka BatchTopK (built-in architectures), against float64 definitions written here.

Training (Bussmann et al. 2024): keep the k·B largest ReLU'd pre-activations of a batch of B tokens.
Inference: a JumpReLU with one global threshold θ, f = h·1[h > max(θ, 0)]. θ: the first batch's
smallest positive kept activation, then θ ← (1 − lr)·θ + lr·(that batch's minimum) (SAELens's EMA).
Matryoshka (Bussmann et al. 2025): the loss is Σ over prefixes m of the MSE decoding f[:, :m] only.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3

import numpy as np
import pytest
import torch

import saebench
from reference import decode as ref_decode
from reference import encode as ref_encode
from reference import pre_acts as ref_pre_acts
from reference import random_weights
from saebench.plugins.architectures.batchtopk import updated_threshold
from saebench.plugins.scorers.reconstruction import ReconstructionScorer
from saebench.training import TrainConfig, TrainState, train_sae

D_IN, D_SAE = 16, 64
ARCHS = ("batchtopk", "matryoshka_batchtopk")
MARGIN = 1e-4  # a strict comparison whose operands differ by less than this may flip between float32 and float64


pytestmark = pytest.mark.usefixtures("one_thread")


def _f64(t) -> np.ndarray:
    return torch.as_tensor(t).detach().double().numpy()


def ref_batch_topk(h: np.ndarray, k: int) -> np.ndarray:
    """ReLU(h) at the k·B largest entries of h [B, d_sae] over the whole batch (all positives if fewer)."""
    flat = np.maximum(h, 0.0).reshape(-1)
    out = np.zeros_like(flat)
    top = np.argsort(-flat, kind="stable")[: k * h.shape[0]]
    out[top] = flat[top]
    return out.reshape(h.shape)


def _weights(seed=0, theta=0.25):
    return {**random_weights(D_IN, D_SAE, arch="batchtopk", seed=seed), "threshold": torch.tensor(theta)}


def _x(n=24, seed=1):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


# -- the batch-level top-k ------------------------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
def test_encode_batch_topk_keeps_exactly_the_k_b_largest(arch):
    w, k = _weights(), 5
    sae = saebench.build_sae(arch, w, k=k, apply_b_dec_to_input=True, act_scale=0.5)
    x = _x().reshape(2, 12, D_IN)
    h = ref_pre_acts(x.numpy(), w, apply_b_dec_to_input=True, act_scale=0.5).reshape(24, D_SAE)
    assert (h > 0).sum() > 2 * k * 24  # enough positives for the cut to bite
    f = _f64(sae.encode_batch_topk(x)).reshape(24, D_SAE)
    kept = f != 0
    assert kept.sum() == k * 24 and kept.sum(1).std() > 0  # k·B over the batch, not k per token
    assert h[kept].min() >= h[~kept].max() - 1e-5  # the largest ones
    np.testing.assert_allclose(f, ref_batch_topk(h, k), rtol=1e-5, atol=1e-5)
    assert int((sae.encode_batch_topk(x, k=2) != 0).sum()) == 2 * 24

    few = {**w, "b_enc": w["b_enc"] - 2.5}  # fewer positives than k·B: every positive one, nothing else
    h_few = ref_pre_acts(x.numpy(), few, apply_b_dec_to_input=True, act_scale=0.5).reshape(24, D_SAE)
    assert 0 < (h_few > 0).sum() < k * 24 and (np.abs(h_few) > MARGIN).all()
    f_few = _f64(saebench.build_sae(arch, few, k=k, apply_b_dec_to_input=True, act_scale=0.5).encode_batch_topk(x))
    np.testing.assert_allclose(f_few.reshape(24, D_SAE), np.maximum(h_few, 0), rtol=1e-5, atol=1e-5)

    xg = x.clone().requires_grad_()
    sae.encode_batch_topk(xg).sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


# -- inference: JumpReLU with the stored θ --------------------------------------------------------
@pytest.mark.parametrize("arch", ARCHS)
@pytest.mark.parametrize("theta", [0.25, -1.0], ids=["theta", "negative-theta-is-relu"])
def test_inference_is_a_jumprelu_with_the_stored_threshold(arch, theta, tmp_path):
    w = _weights(theta=theta)
    sae = saebench.build_sae(arch, w, k=4, apply_b_dec_to_input=True)
    assert sae.threshold.shape == () and not sae.topk_per_token
    x = _x(77)
    h = ref_pre_acts(x.numpy(), w, apply_b_dec_to_input=True)
    ref = np.where(h > max(theta, 0.0), h, 0.0)
    safe = np.abs(h - max(theta, 0.0)) > MARGIN
    assert safe.mean() > 0.98 and 0.05 < (ref != 0).mean() < 0.6
    f = _f64(sae.encode(x))
    np.testing.assert_allclose(f[safe], ref[safe], rtol=1e-4, atol=1e-4)
    values, indices = sae.encode_sparse(x)
    assert values.shape[-1] == int((f != 0).sum(-1).max())  # threshold-style: K is the widest row
    dense = _f64(torch.zeros(77, D_SAE, dtype=torch.float64).scatter_add_(1, indices, values.double()))  # padding adds 0
    np.testing.assert_allclose(dense[safe], ref[safe], rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_f64(sae(x)), ref_decode(ref, w), rtol=1e-4, atol=1e-4)
    xg = x.clone().requires_grad_()  # the autograd path takes activation(), the same definition
    fg = sae.encode(xg)
    np.testing.assert_allclose(_f64(fg)[safe], ref[safe], rtol=1e-4, atol=1e-4)
    fg.sum().backward()
    assert torch.isfinite(xg.grad).all()

    saebench.save_sae(sae, tmp_path / "sae")
    assert json.loads((tmp_path / "sae" / "cfg.json").read_text())["arch"] == arch
    loaded = saebench.load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae) and loaded.cfg.k == 4
    assert torch.equal(loaded.encode(x), sae.encode(x))


def test_threshold_is_strict_and_config_is_checked():
    w = {"W_enc": torch.eye(2, 3), "W_dec": torch.ones(3, 2), "b_enc": torch.zeros(3), "b_dec": torch.zeros(2),
         "threshold": torch.tensor(0.5)}
    assert saebench.build_sae("batchtopk", w, k=1).encode(torch.tensor([[0.5, 0.75]])).tolist() == [[0.0, 0.75, 0.0]]
    w = _weights()
    sae = saebench.build_sae("batchtopk", {**w, "threshold": torch.tensor([0.25])}, k=4)  # dictionary_learning's [1]
    assert sae.threshold.shape == () and float(sae.threshold) == 0.25
    with pytest.raises(saebench.CheckpointError, match="threshold has shape"):
        saebench.build_sae("batchtopk", {**w, "threshold": torch.full((D_SAE,), 0.25)}, k=4)
    with pytest.raises(saebench.CheckpointError, match="needs k"):
        saebench.build_sae("matryoshka_batchtopk", w)
    with pytest.raises(saebench.CheckpointError, match="larger than d_sae"):
        saebench.build_sae("batchtopk", w, k=D_SAE + 1)
    with pytest.raises(saebench.CheckpointError, match="missing tensor"):
        saebench.build_sae("batchtopk", {n: t for n, t in w.items() if n != "threshold"}, k=4)


# -- the threshold estimate -------------------------------------------------------------------------
def test_threshold_update_rule_by_hand():
    f = torch.tensor([[0.0, 0.3, 2.0], [0.7, 0.0, 0.0]])
    assert updated_threshold(0.5, f, 0.1, first=True) == pytest.approx(0.3)
    assert updated_threshold(0.5, f, 0.1, first=False) == pytest.approx(0.9 * 0.5 + 0.1 * 0.3)  # 0.48
    assert updated_threshold(0.5, torch.zeros(2, 3), 0.1, first=False) == 0.5  # nothing kept: unchanged


def _state(arch, k=4, **extra):
    cfg = TrainConfig(arch=arch, d_sae=D_SAE, k=k, tokens=100, threshold_lr=0.2, aux_coefficient=0, **extra)
    return TrainState(cfg=cfg, dead=torch.zeros(D_SAE, dtype=torch.bool))


def test_training_forward_updates_theta_from_the_batch_minimum():
    w = _weights(theta=0.4)
    sae = saebench.build_sae("batchtopk", w, k=4, apply_b_dec_to_input=True)
    sae.requires_grad_(True)
    x, state = _x(), _state("batchtopk")
    kept = ref_batch_topk(ref_pre_acts(x.numpy(), w, apply_b_dec_to_input=True), 4)
    low = kept[kept > 0].min()
    state.step = 3
    sae.training_forward(x, state)
    assert float(sae.threshold.detach()) == pytest.approx(0.8 * 0.4 + 0.2 * low, rel=1e-5)
    state.step = 0  # the first step sets θ to the batch's minimum
    sae.training_forward(x, state)
    assert float(sae.threshold.detach()) == pytest.approx(low, rel=1e-5)
    with torch.no_grad():  # the trainer's closing measurement pass leaves θ alone
        sae.threshold.fill_(0.123)
        sae.training_forward(x, state)
    assert float(sae.threshold.detach()) == pytest.approx(0.123)


# -- Matryoshka's loss ------------------------------------------------------------------------------
def test_matryoshka_loss_is_the_sum_of_per_prefix_mses():
    w, prefixes = _weights(), [8, 24, D_SAE]
    sae = saebench.build_sae("matryoshka_batchtopk", w, k=4, apply_b_dec_to_input=True)
    x, state = _x(), _state("matryoshka_batchtopk", prefixes=prefixes)
    out = sae.training_forward(x, state)
    f = ref_batch_topk(ref_pre_acts(x.numpy(), w, apply_b_dec_to_input=True), 4)
    W_dec, b_dec, x64 = _f64(w["W_dec"]), _f64(w["b_dec"]), _f64(x)
    per_prefix = {m: (((f[:, :m] @ W_dec[:m] + b_dec) - x64) ** 2).sum(1).mean() for m in prefixes}
    assert set(out.losses) == {"mse", "mse_prefix_8", "mse_prefix_24", "auxk"}
    assert float(out.losses["mse"]) == pytest.approx(per_prefix[D_SAE], rel=1e-5)
    for m in prefixes[:-1]:
        assert float(out.losses[f"mse_prefix_{m}"]) == pytest.approx(per_prefix[m], rel=1e-5)
    assert float(sum(out.losses.values())) == pytest.approx(sum(per_prefix.values()), rel=1e-5)
    assert len({round(v, 6) for v in per_prefix.values()}) == 3  # not vacuous: the prefixes differ
    plain = saebench.build_sae("batchtopk", w, k=4, apply_b_dec_to_input=True).training_forward(x, _state("batchtopk"))
    assert float(plain.losses["mse"]) == pytest.approx(per_prefix[D_SAE], rel=1e-5)


def test_auxk_uses_the_dead_latents_top_aux_k():
    w = _weights()
    sae = saebench.build_sae("batchtopk", w, k=4, apply_b_dec_to_input=True)
    cfg = TrainConfig(arch="batchtopk", d_sae=D_SAE, k=4, tokens=100, aux_k=3, aux_coefficient=0.5)
    dead = torch.zeros(D_SAE, dtype=torch.bool)
    dead[::4] = True
    x = _x()
    out = sae.training_forward(x, TrainState(cfg=cfg, dead=dead))
    h = ref_pre_acts(x.numpy(), w, apply_b_dec_to_input=True)
    f = ref_batch_topk(h, 4)
    x64 = _f64(x)
    e = x64 - (f @ _f64(w["W_dec"]) + _f64(w["b_dec"]))
    hd = np.where(dead.numpy(), h, -np.inf)
    top = np.argsort(-hd, axis=1)[:, :3]
    a = np.zeros_like(h)
    np.put_along_axis(a, top, np.maximum(np.take_along_axis(h, top, 1), 0), 1)
    fvu = ((a @ _f64(w["W_dec"]) - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    want = 0.5 * fvu * ((x64 - x64.mean(0)) ** 2).sum() / len(x64)  # Gao et al.'s term in the units of mse
    assert float(out.losses["auxk"]) == pytest.approx(want, rel=1e-4)


def test_train_config_errors_are_one_line():
    for data, message in [
        (dict(arch="batchtopk", d_sae=64, tokens=10), "needs k"),
        (dict(arch="matryoshka_batchtopk", d_sae=64, k=4, tokens=10), "needs prefixes"),
        (dict(arch="matryoshka_batchtopk", d_sae=64, k=4, prefixes=[16, 32], tokens=10), "must be d_sae=64"),
        (dict(arch="matryoshka_batchtopk", d_sae=64, k=4, prefixes=[32, 16, 64], tokens=10), "strictly increase"),
        (dict(arch="matryoshka_batchtopk", d_sae=64, k=8, prefixes=[4, 64], tokens=10), "smaller than k=8"),
        (dict(arch="topk", d_sae=64, k=4, prefixes=[16, 64], tokens=10), "prefixes are for Matryoshka"),
        (dict(arch="batchtopk", d_sae=64, k=4, threshold_lr=0, tokens=10), "threshold_lr"),
        (dict(arch="batchtopk", d_sae=64, k=4, multi_topk=True, tokens=10), "multi_topk is for TopK"),
    ]:
        with pytest.raises(saebench.ConfigError) as err:
            TrainConfig.from_mapping(data, "m.yaml: saes[0].train")
        assert message in str(err.value) and "\n" not in str(err.value), (data, str(err.value))


# -- training and scoring -------------------------------------------------------------------------
def _planted(n, seed, dirs, active=4):
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, len(dirs), generator=g).topk(active, dim=1).indices
    coef = torch.zeros(n, len(dirs)).scatter_(1, idx, torch.rand(n, active, generator=g) + 0.5)
    return (coef @ dirs + 0.01 * torch.randn(n, dirs.shape[1], generator=g)) * 10


@pytest.mark.parametrize("arch,extra", [("batchtopk", {}), ("matryoshka_batchtopk", {"prefixes": [32, 128, 256]})])
def test_a_short_run_lowers_the_loss_and_infers_about_k(arch, extra, tmp_path):
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(128, 32, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    train, test = _planted(30_000, 1, dirs), _planted(4096, 2, dirs)
    cfg = TrainConfig(arch=arch, d_sae=256, k=4, batch_size=256, lr=3e-3, tokens=256 * 300, **extra)
    sae, stats = train_sae(cfg, lambda: iter(train.split(5000)), 32)
    assert stats.history[-1].loss < 0.6 * stats.history[0].loss
    with torch.no_grad():
        l0 = float((sae.encode(test) != 0).sum(-1).float().mean())
        ev = 1 - float((test - sae(test)).pow(2).sum() / (test - test.mean(0)).pow(2).sum())
    assert 0.6 * 4 <= l0 <= 1.5 * 4 and ev > 0.5, (l0, ev)
    assert float(sae.threshold) > 0 and sae.arch == arch
    back = saebench.load_sae(saebench.save_sae(sae, tmp_path / arch))
    assert torch.equal(back.encode(test), sae.encode(test))
    if arch == "matryoshka_batchtopk":
        assert back.prefixes == [32, 128, 256] and set(stats.losses) >= {"mse_prefix_32", "mse_prefix_128"}


def test_reconstruction_reports_fvu_per_prefix():
    w = _weights()
    sae = saebench.build_sae("matryoshka_batchtopk", w, k=4, metadata={"training": {"config": {"prefixes": [8, 24, 64]}}})
    x = _x(203)
    inputs = saebench.EvalInputs(
        hookpoint="layers.0", activations=lambda b: iter(x.split(b)), tokens=torch.zeros(0, 0, dtype=torch.long)
    )
    res = ReconstructionScorer(batch_tokens=50).score(sae, inputs)
    f, x64 = ref_encode("batchtopk", x.numpy(), w), _f64(x)
    tss = ((x64 - x64.mean(0)) ** 2).sum()
    want = {str(m): ((x64 - ref_decode(f[:, :m], {**w, "W_dec": w["W_dec"][:m]})) ** 2).sum() / tss for m in (8, 24, 64)}
    assert res.details["fvu_by_prefix"] == pytest.approx(want, rel=1e-4)
    assert res.details["fvu_by_prefix"]["64"] == pytest.approx(res.metrics["fvu"], rel=1e-9)
    plain = ReconstructionScorer(batch_tokens=50).score(saebench.build_sae("batchtopk", w, k=4), inputs)
    assert "fvu_by_prefix" not in plain.details and plain.metrics == res.metrics


def test_a_matrix_trains_and_scores_both(tiny_llama, tiny_corpus, tmp_path, monkeypatch):
    from saebench.results.leaderboard import render
    from saebench.run.execute import execute
    from saebench.run.matrix import parse_matrix
    from saebench.run.progress import Progress

    monkeypatch.chdir(tmp_path)
    common = {"d_sae": 128, "k": 8, "tokens": 256 * 40, "batch_size": 256}
    saes = [
        {"name": "btk", "model": "tiny", "hookpoint": "layers.1", "train": {"arch": "batchtopk", **common}},
        {"name": "mat", "model": "tiny", "hookpoint": "layers.1",
         "train": {"arch": "matryoshka_batchtopk", **common, "prefixes": [16, 64, 128]}},
    ]
    matrix = parse_matrix({
        "name": "btk", "output": "runs/btk",
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 1024, "context_length": 32},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": saes, "scorers": ["sparsity", "reconstruction"],
    }, "m.yaml")
    execute(matrix, source="m.yaml", progress=Progress(False))
    rows = {r["sae"]: r for r in csv.DictReader(io.StringIO(render(tmp_path / "runs" / "btk", "csv")))}
    assert set(rows) == {"btk", "mat"}
    for row in rows.values():
        l0 = float(row["sparsity.l0"])
        assert math.isfinite(l0) and 0 < l0 < 128  # the per-token average at inference, not pinned to k
        assert float(row["reconstruction.explained_variance"]) > 0
    db = sqlite3.connect(tmp_path / "runs" / "btk" / "results.sqlite")
    details = {s: json.loads(d) for s, d in db.execute("SELECT sae, details FROM cells WHERE scorer = 'reconstruction'")}
    db.close()
    assert set(details["mat"]["fvu_by_prefix"]) == {"16", "64", "128"} and "fvu_by_prefix" not in details["btk"]
    fvu = details["mat"]["fvu_by_prefix"]
    assert fvu["16"] > fvu["128"] and fvu["128"] == pytest.approx(1 - float(rows["mat"]["reconstruction.explained_variance"]), rel=1e-6)
    trained = saebench.load_sae(tmp_path / "runs" / "btk" / "saes" / "mat")
    assert trained.arch == "matryoshka_batchtopk" and trained.prefixes == [16, 64, 128]
