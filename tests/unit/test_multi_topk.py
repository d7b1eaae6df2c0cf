"""Multi-TopK training and test-time k (Gao et al. 2024, "Scaling and evaluating sparse autoencoders", section 5.3).

Multi-TopK trains a TopK SAE on L(k) + L(4k)/8 so that it keeps working when more than k latents are
kept at test time; the reconstruction scorer's ``ks`` option measures that (``fvu_at_k{K}``). Every
expected value here is computed independently in float64 (numpy, tests/reference.py), never with
saebench code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import saebench
import saebench.kernel
from reference import decode as ref_decode
from reference import encode as ref_encode
from reference import random_weights
from saebench.plugins.scorers.reconstruction import ReconstructionScorer
from saebench.run.matrix import parse_matrix
from saebench.training import MultiTopK, TrainConfig, TrainState, train_sae

pytestmark = pytest.mark.usefixtures("one_thread")


# -- the loss --------------------------------------------------------------------------------------
def _tiny_topk(seed=0, d_in=6, d_sae=10, k=2):
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
         "b_enc": torch.randn(d_sae, generator=g) * 0.3, "b_dec": torch.randn(d_in, generator=g) * 0.3}
    sae = saebench.build_sae("topk", w, k=k, apply_b_dec_to_input=True)
    for p in sae.parameters():
        p.requires_grad_(True)
    return sae, torch.randn(5, d_in, generator=g) * 2


def _np_topk(h, k):
    f = np.zeros_like(h)
    top = np.argsort(-h, axis=1)[:, :k]
    np.put_along_axis(f, top, np.maximum(np.take_along_axis(h, top, 1), 0), 1)
    return f


@pytest.mark.parametrize("block", [None, 6], ids=["one-block", "latent-blocks"])
def test_multi_topk_loss_against_float64(block, monkeypatch):
    """mse = L(k), multi_topk = weight·L(multiplier·k), AuxK unchanged (residual of the top-k x̂), fired/l0 at k."""
    if block:  # 4k = 8 latents taken from blocks of 6 and 4: the selection must merge them
        monkeypatch.setattr(saebench.kernel, "MAX_BLOCK_LATENTS", block)
    sae, x = _tiny_topk()
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[1, 4, 5, 7, 9]] = True
    cfg = TrainConfig(arch="topk", d_sae=10, k=2, aux_k=3, aux_coefficient=0.25, tokens=100, multi_topk=True)
    assert cfg.multi_topk == MultiTopK(multiplier=4, weight=0.125) and cfg.multi_topk_k == 8
    out = sae.training_forward(x, TrainState(cfg=cfg, dead=dead))

    w = {n: getattr(sae, n).detach().double().numpy() for n in sae.weight_shapes}
    X = x.double().numpy()
    h = (X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    f2, f8 = _np_topk(h, 2), _np_topk(h, 8)
    x_hat2, x_hat8 = f2 @ w["W_dec"] + w["b_dec"], f8 @ w["W_dec"] + w["b_dec"]
    L2, L8 = ((X - x_hat2) ** 2).sum(1).mean(), ((X - x_hat8) ** 2).sum(1).mean()
    assert set(out.losses) == {"mse", "multi_topk", "auxk"}
    assert float(out.losses["mse"].detach()) == pytest.approx(L2, rel=1e-5)
    assert float(out.losses["multi_topk"].detach()) == pytest.approx(L8 / 8, rel=1e-5)
    # the paper's L is the normalised MSE: the same ratio of the two terms
    var = ((X - X.mean(0)) ** 2).sum(1).mean()
    assert float((out.losses["multi_topk"] / out.losses["mse"]).detach()) == pytest.approx((L8 / var / 8) / (L2 / var), rel=1e-5)
    # AuxK: the residual is the top-k one's, as without Multi-TopK
    plain = sae.training_forward(x, TrainState(cfg=cfg.model_copy(update={"multi_topk": None}), dead=dead))
    aux_multi, aux_plain = float(out.losses["auxk"].detach()), float(plain.losses["auxk"].detach())
    assert aux_multi == pytest.approx(aux_plain, rel=1e-6) and aux_plain > 0
    torch.testing.assert_close(out.x_hat, plain.x_hat)
    assert float(out.l0) == pytest.approx((f2 > 0).sum(1).mean())
    assert out.fired.tolist() == (f2 > 0).any(0).tolist()

    # gradients of the whole loss equal dense float64 autograd of L(k) + L(4k)/8 + α·AuxK
    names = list(sae.weight_shapes)
    sparse = torch.autograd.grad(sum(out.losses.values()), [getattr(sae, n) for n in names])
    wt = {n: getattr(sae, n).detach().double().requires_grad_(True) for n in names}
    Xt = x.double()
    ht = (Xt - wt["b_dec"]) @ wt["W_enc"] + wt["b_enc"]

    def recon(k):
        v, i = ht.topk(k, dim=1)
        return torch.zeros_like(ht).scatter(1, i, v.relu()) @ wt["W_dec"] + wt["b_dec"]

    xh2 = recon(2)
    loss = (Xt - xh2).pow(2).sum(1).mean() + (Xt - recon(8)).pow(2).sum(1).mean() / 8
    h_aux = (Xt - wt["b_dec"].detach()) @ wt["W_enc"] + wt["b_enc"]
    av, ai = h_aux.masked_fill(~dead, -math.inf).topk(3, dim=1)
    e = (Xt - xh2).detach()
    e_hat = torch.zeros_like(ht).scatter(1, ai, av.relu()) @ wt["W_dec"]
    aux = (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum() * (Xt - Xt.mean(0)).pow(2).sum() / len(Xt)
    dense = torch.autograd.grad(loss + 0.25 * aux, [wt[n] for n in names])
    for n, gs, gd in zip(names, sparse, dense):
        torch.testing.assert_close(gs.double(), gd, rtol=1e-4, atol=1e-5, msg=n)


def test_multi_topk_weight_and_multiplier_are_used():
    sae, x = _tiny_topk(seed=2)
    cfg = TrainConfig(arch="topk", d_sae=10, k=2, tokens=100, multi_topk={"multiplier": 3, "weight": 0.5})
    out = sae.training_forward(x, TrainState(cfg=cfg))
    w = {n: getattr(sae, n).detach().double().numpy() for n in sae.weight_shapes}
    X = x.double().numpy()
    x_hat6 = _np_topk((X - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 6) @ w["W_dec"] + w["b_dec"]
    assert float(out.losses["multi_topk"].detach()) == pytest.approx(0.5 * ((X - x_hat6) ** 2).sum(1).mean(), rel=1e-5)
    # off (the default, or false): no term
    for off in ({}, {"multi_topk": False}, {"multi_topk": None}):
        cfg = TrainConfig(arch="topk", d_sae=10, k=2, tokens=100, **off)
        assert cfg.multi_topk is None and cfg.multi_topk_k == 0
        assert "multi_topk" not in sae.training_forward(x, TrainState(cfg=cfg)).losses


# -- training ----------------------------------------------------------------------------------------
D, N_DIRS, ACTIVE = 32, 128, 8


def _planted(n, seed, dirs):
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, N_DIRS, generator=g).topk(ACTIVE, dim=1).indices
    coef = torch.zeros(n, N_DIRS).scatter_(1, idx, torch.rand(n, ACTIVE, generator=g) + 0.5)
    return coef @ dirs + 0.01 * torch.randn(n, D, generator=g)


def _fvu_at(sae, x, k):
    """FVU of ``sae`` on x when it keeps each token's top k latents: float64, from the weights (tests/reference.py)."""
    w = {n: t.detach() for n, t in sae.weights().items()}
    f = ref_encode("topk", x.numpy(), w, k=k, apply_b_dec_to_input=True, act_scale=sae.cfg.act_scale)
    x64 = x.double().numpy()
    x_hat = ref_decode(f, w, act_scale=sae.cfg.act_scale)
    return float(((x64 - x_hat) ** 2).sum() / ((x64 - x64.mean(0)) ** 2).sum())


def test_multi_topk_training_keeps_the_sae_good_at_4k():
    """k = 2 on data with 8 active directions per token: plain TopK gets worse past its k, Multi-TopK does not."""
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(N_DIRS, D, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    train, test = _planted(20_000, 1, dirs), _planted(2000, 2, dirs)
    runs = {}
    for name, option in (("plain", None), ("multi", True)):
        cfg = TrainConfig(arch="topk", d_sae=128, k=2, batch_size=256, lr=1e-2, tokens=256 * 150, multi_topk=option)
        calls = []
        sae, stats = train_sae(cfg, lambda: iter(train.split(5000)), D, progress=lambda s, t, m: calls.append(m))
        runs[name] = (sae, stats, calls)
    plain, multi = runs["plain"][0], runs["multi"][0]
    fvu = {name: {k: _fvu_at(sae, test, k) for k in (2, 8)} for name, (sae, _, _) in runs.items()}
    assert fvu["multi"][8] < 0.75 * fvu["plain"][8], fvu  # ~0.35 against ~0.66
    assert fvu["multi"][8] < fvu["multi"][2] and fvu["plain"][8] > fvu["plain"][2] * 1.05  # plain TopK overfits to k
    assert fvu["multi"][2] < fvu["plain"][2] + 0.05, fvu  # at its own k it loses little
    # both terms of the objective went down; the stats and the saved config carry the option
    calls, stats = runs["multi"][2], runs["multi"][1]
    assert calls[-1]["mse"] < 0.9 * calls[0]["mse"] and calls[-1]["multi_topk"] < 0.9 * calls[0]["multi_topk"]
    assert "multi_topk" in stats.losses and "multi_topk" not in runs["plain"][1].losses
    assert multi.cfg.metadata["training"]["config"]["multi_topk"] == {"multiplier": 4, "weight": 0.125}
    assert plain.cfg.metadata["training"]["config"]["multi_topk"] is None
    # and the scorer's fvu_at_k8 is that FVU
    inputs = saebench.EvalInputs(hookpoint="h", activations=lambda b: iter(test.split(b)), tokens=torch.zeros(0, 0, dtype=torch.long))
    m = ReconstructionScorer(ks=[8]).score(multi, inputs).metrics
    assert m["fvu_at_k8"] == pytest.approx(fvu["multi"][8], rel=1e-4)
    # deterministic
    again, _ = train_sae(stats_cfg(runs["multi"][1]), lambda: iter(train.split(5000)), D)
    assert torch.equal(again.W_dec, multi.W_dec) and torch.equal(again.W_enc, multi.W_enc)


def stats_cfg(stats) -> TrainConfig:
    return TrainConfig(arch=stats.arch, d_sae=128, k=2, batch_size=256, lr=1e-2, tokens=stats.tokens, multi_topk=True)


# -- configuration -------------------------------------------------------------------------------------
def test_multi_topk_config_forms():
    base = dict(arch="topk", d_sae=64, k=8, tokens=10)
    assert TrainConfig(**base, multi_topk=True).multi_topk == MultiTopK()
    assert TrainConfig(**base, multi_topk={}).multi_topk == MultiTopK(multiplier=4, weight=0.125)
    assert TrainConfig(**base, multi_topk={"weight": 0.25}).multi_topk == MultiTopK(multiplier=4, weight=0.25)
    assert TrainConfig(**base, multi_topk={"multiplier": 8}).multi_topk_k == 64  # = d_sae: allowed
    assert TrainConfig(**base).model_dump()["multi_topk"] is None


@pytest.mark.parametrize(
    "extra, where, message",
    [
        (dict(arch="relu"), "train", "multi_topk is for TopK SAEs (a per-token k); relu has none"),
        (dict(multi_topk={"multiplier": 16}), "train", "multi_topk: multiplier·k = 16·8 = 128 is larger than d_sae=64"),
        (dict(multi_topk={"multiplier": 1}), "train.multi_topk.multiplier", "greater than or equal to 2"),
        (dict(multi_topk={"weight": 0}), "train.multi_topk.weight", "greater than 0"),
        (dict(multi_topk={"weight": -1}), "train.multi_topk.weight", "greater than 0"),
        (dict(multi_topk={"k": 32}), "train.multi_topk.k", "Extra inputs are not permitted"),
        (dict(multi_topk="yes"), "train.multi_topk", "multi_topk is true, false or a mapping {multiplier, weight}, got 'yes'"),
        (dict(multi_topk=1), "train.multi_topk", "multi_topk is true, false or a mapping"),
    ],
)
def test_multi_topk_config_errors(extra, where, message):
    data = {"arch": "topk", "d_sae": 64, "k": 8, "tokens": 10, "multi_topk": True, **extra}
    if data["arch"] == "relu":
        data.pop("k")
    with pytest.raises(ValidationError):
        TrainConfig(**data)
    with pytest.raises(saebench.ConfigError) as one_line:
        TrainConfig.from_mapping(data, "matrix.yaml: saes[0].train")
    text = str(one_line.value)
    assert "\n" not in text and text.startswith(f"matrix.yaml: saes[0].{where}") and message in text, text


def _matrix(train):
    return {
        "name": "multi-topk",
        "output": "/tmp/unused",
        "data": {"source": "python-stdlib", "tokens": 4096, "context_length": 64},
        "models": [{"name": "m", "adapter": "hf-causal-lm", "path": "embedded:gemma-3-270m", "hookpoints": ["layers.3"]}],
        "saes": [{"name": "t", "model": "m", "hookpoint": "layers.3", "train": train}],
        "scorers": [{"name": "reconstruction", "options": {"ks": [8, 32]}}],
    }


def test_a_matrix_train_block_takes_multi_topk():
    train = {"arch": "topk", "d_sae": 64, "k": 8, "tokens": 1000, "multi_topk": True}
    m = parse_matrix(_matrix(train), "matrix.yaml")
    assert TrainConfig.from_mapping(m.saes[0].train).multi_topk == MultiTopK()
    with pytest.raises(saebench.ConfigError) as err:
        parse_matrix(_matrix({**train, "multi_topk": {"multiplier": 0}}), "matrix.yaml")
    assert str(err.value).startswith("matrix.yaml: saes[0].train.multi_topk.multiplier")


# -- test-time k: the kernel and the reconstruction scorer -----------------------------------------
ARCHS = [("relu", {}), ("topk", {"k": 6}), ("jumprelu", {"apply_b_dec_to_input": True})]


def _case(arch, extra, n=203, d_in=16, d_sae=64, seed=1):
    w = random_weights(d_in, d_sae, arch=arch, seed=seed)
    sae = saebench.build_sae(arch, w, **extra)
    g = np.random.default_rng(seed)
    x = (g.standard_normal((n, d_in)) * 1.5 + g.standard_normal(d_in) * 3).astype(np.float32)
    return sae, w, x


def _inputs(x, contexts=None):
    x = torch.as_tensor(x)
    tokens = torch.zeros(0, 0, dtype=torch.long) if contexts is None else torch.zeros(int(contexts.max()) + 1, 4, dtype=torch.long)
    inputs = saebench.EvalInputs(hookpoint="layers.0", activations=lambda b: iter(x.split(b)), tokens=tokens)
    if contexts is not None:
        inputs.token_contexts = torch.from_numpy(contexts)
    return inputs


def _ref_fvu(x, w, k, **cfg):
    x64 = x.astype(np.float64)
    x_hat = ref_decode(ref_encode("topk", x, w, k=k, **cfg), w)
    sse = ((x64 - x_hat) ** 2).sum(1)
    return sse.sum() / ((x64 - x64.mean(0)) ** 2).sum(), sse


@pytest.mark.parametrize("block", [None, 20], ids=["one-block", "latent-blocks"])
def test_encode_topk_is_the_reference_top_k(block, monkeypatch):
    if block:
        monkeypatch.setattr(saebench.kernel, "MAX_BLOCK_LATENTS", block)
    sae, w, x = _case("topk", {"k": 6, "apply_b_dec_to_input": True})
    for k in (1, 6, 24, 64):
        values, indices = saebench.kernel.encode_topk(sae, torch.from_numpy(x), k, sorted=True)
        assert values.shape == indices.shape == (len(x), k)
        assert (values[:, :-1] >= values[:, 1:]).all()  # each row in decreasing order
        dense = np.zeros((len(x), 64))
        np.put_along_axis(dense, indices.numpy(), values.double().numpy(), 1)
        want = ref_encode("topk", x, w, k=k, apply_b_dec_to_input=True)
        np.testing.assert_allclose(dense, want, rtol=1e-5, atol=1e-5)
    with pytest.raises(saebench.ShapeError, match="d_sae=64"):
        saebench.kernel.encode_topk(sae, torch.from_numpy(x), 65)
    with pytest.raises(saebench.ShapeError, match="TopK-style"):
        saebench.kernel.encode_topk(_case("relu", {})[0], torch.from_numpy(x), 4)


def test_fvu_at_other_k_matches_float64():
    sae, w, x = _case("topk", {"k": 6})
    res = ReconstructionScorer(ks=[1, 6, 24, 64], batch_tokens=50).score(sae, _inputs(x))
    for k in (1, 6, 24, 64):
        assert res.metrics[f"fvu_at_k{k}"] == pytest.approx(_ref_fvu(x, w, k)[0], rel=2e-5), k
    assert res.metrics["fvu_at_k6"] == pytest.approx(res.metrics["fvu"], rel=1e-6)  # the trained k is the plain FVU
    assert res.details["k"] == 6 and res.details["ks_skipped"] == {}
    # the other metrics are those without the option
    plain = ReconstructionScorer(batch_tokens=50).score(sae, _inputs(x))
    assert {k: v for k, v in res.metrics.items() if not k.startswith("fvu_at_k")} == plain.metrics
    assert "ks_skipped" not in plain.details and not any(k.startswith("fvu_at_k") for k in plain.metrics)


def test_fvu_at_k_skips_what_cannot_be_encoded():
    sae, w, x = _case("topk", {"k": 6})
    res = ReconstructionScorer(ks=[8, 65]).score(sae, _inputs(x))
    assert res.metrics["fvu_at_k8"] == pytest.approx(_ref_fvu(x, w, 8)[0], rel=2e-5)
    assert res.metrics["fvu_at_k65"] is None and res.details["ks_skipped"] == {"65": "k=65 is larger than d_sae=64"}
    for arch, extra in ARCHS:
        if arch == "topk":
            continue
        sae, _, x = _case(arch, extra)
        res = ReconstructionScorer(ks=[4, 16]).score(sae, _inputs(x))
        assert res.metrics["fvu_at_k4"] is None and res.metrics["fvu_at_k16"] is None and res.metrics["fvu"] is not None
        why = f"a {arch} SAE has no per-token top-k to change at test time (ks is for TopK SAEs)"
        assert res.details["ks_skipped"] == {"4": why, "16": why} and res.details["k"] is None
    # no tokens: None, like every other metric
    empty = ReconstructionScorer(ks=[4]).score(sae, _inputs(np.zeros((0, 16), dtype=np.float32)))
    assert empty.metrics["fvu_at_k4"] is None and empty.metrics["tokens"] == 0


def test_fvu_at_k_units_are_per_context_sums():
    sae, w, x = _case("topk", {"k": 6})
    ctx = np.sort(np.random.default_rng(2).integers(0, 20, size=len(x)))
    res = ReconstructionScorer(ks=[3, 24], batch_tokens=50).score(sae, _inputs(x, ctx))
    u = res.units
    x64 = x.astype(np.float64)
    tss = ((x64 - x64.mean(0)) ** 2).sum(1)
    for k in (3, 24):
        _, sse = _ref_fvu(x, w, k)
        assert u.value(f"fvu_at_k{k}") == pytest.approx(res.metrics[f"fvu_at_k{k}"], rel=1e-9)
        assert u.columns[f"sse_k{k}"] == pytest.approx([sse[ctx == c].sum() for c in u.ids], rel=1e-5)
        w_half = np.zeros((1, u.n))
        w_half[0, : u.n // 2] = 1
        rows = np.isin(ctx, u.ids[: u.n // 2])
        assert u.values(f"fvu_at_k{k}", w_half)[0] == pytest.approx(sse[rows].sum() / tss[rows].sum(), rel=1e-5)
    # a non-TopK SAE: no estimator for the skipped columns
    relu, _, xr = _case("relu", {})
    assert not any(m.startswith("fvu_at_k") for m in ReconstructionScorer(ks=[4]).score(relu, _inputs(xr, ctx)).units.metrics)


@pytest.mark.parametrize(
    "ks, message",
    [([], "at least 1 item"), ([0], "each at least 1"), ([8, -2], "each at least 1"), ([4, 4], "more than once"), (["8"], "valid integer"), (8, "valid list")],
)
def test_bad_ks_are_config_errors(ks, message):
    with pytest.raises(saebench.ConfigError) as err:
        ReconstructionScorer(ks=ks)
    text = str(err.value)
    assert text.startswith("scorer reconstruction: option 'ks") and message in text and "\n" not in text
