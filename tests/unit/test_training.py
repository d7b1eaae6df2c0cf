"""SAE training (saebench.training and the architectures' training_forward), on synthetic data.

The end-to-end tests plant a dictionary: each token is a sparse positive combination of 8 of
256 random unit directions in 64 dimensions (plus a little noise), at norm ~50 so that the
input normalisation matters. A working trainer recovers the directions as decoder rows and
reconstructs held-out tokens; one that does not update the weights gets EV ~0 and recovers
none. The other tests check the pieces against independent computations.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from pydantic import ValidationError

import saebench
import saebench.kernel
import saebench.testing
from saebench import plugin_manager
from saebench.plugins.architectures.jumprelu import JumpReLUFunction, StepFunction
from saebench.training import GatherPreacts, TrainConfig, TrainState, train_sae

D_IN, N_DIRS, ACTIVE, NORM = 64, 256, 8, 50.0


pytestmark = pytest.mark.usefixtures("one_thread")


def _planted(n: int, seed: int, dirs: torch.Tensor) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, N_DIRS, generator=g).topk(ACTIVE, dim=1).indices
    coef = torch.zeros(n, N_DIRS).scatter_(1, idx, torch.rand(n, ACTIVE, generator=g) + 0.5)
    x = coef @ dirs + 0.01 * torch.randn(n, D_IN, generator=g)
    return x * (NORM / math.sqrt(ACTIVE))


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(1234)
    dirs = torch.randn(N_DIRS, D_IN, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    train = _planted(100_000, 1, dirs)
    return dirs, train, _planted(4096, 2, dirs)


def _batches(train: torch.Tensor, chunk: int = 7000):
    return lambda: iter(train.split(chunk))  # chunks that are not a multiple of the batch size


def _quality(sae: saebench.SAE, dirs: torch.Tensor, test: torch.Tensor) -> tuple[float, float, float]:
    """(explained variance on raw held-out tokens, share of planted directions recovered at cos > 0.9, L0)."""
    with torch.no_grad():
        x_hat = sae(test)
        l0 = float((sae.encode(test) != 0).sum(-1).float().mean())
    ev = 1 - float((test - x_hat).pow(2).sum() / (test - test.mean(0)).pow(2).sum())
    rows = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    recovered = float(((dirs @ rows.T).max(1).values > 0.9).float().mean())
    return ev, recovered, l0


# -- end to end ----------------------------------------------------------------------------------
CASES = {
    "topk": dict(k=8, lr=3e-3, tokens=384_000),
    "relu": dict(l1=1.0, lr=1e-2, tokens=512_000),
    "jumprelu": dict(initial_threshold=0.5, bandwidth=0.2, lr=1e-2, tokens=512_000),
}
BARS = {"topk": (0.75, 0.8, (8, 8)), "relu": (0.75, 0.8, (5, 100)), "jumprelu": (0.7, 0.8, (4, 16))}


@pytest.mark.slow
@pytest.mark.parametrize("arch", list(CASES))
def test_recovers_planted_dictionary(arch, data):
    dirs, train, test = data
    cfg = TrainConfig(arch=arch, d_sae=512, batch_size=256, **CASES[arch])
    calls = []
    sae, stats = train_sae(cfg, _batches(train), D_IN, hook_name="layers.3", model_name="toy",
                           progress=lambda step, total, m: calls.append((step, total, m)))
    ev, recovered, l0 = _quality(sae, dirs, test)
    min_ev, min_recovered, (lo, hi) = BARS[arch]
    assert ev > min_ev, (ev, stats.losses)
    assert recovered >= min_recovered, recovered
    assert lo <= l0 <= hi
    # the SAE is ready for evaluation: inference mode, provenance, working kernel path
    assert not any(p.requires_grad for p in sae.parameters())
    assert sae.cfg.hook_name == "layers.3" and sae.cfg.model_name == "toy"
    assert sae.cfg.metadata["training"]["config"]["arch"] == arch
    assert stats.steps == cfg.steps and stats.tokens == cfg.steps * 256 and stats.tokens_per_s > 0
    assert abs(stats.l0 - l0) < 0.25 * l0 + 1
    assert stats.explained_variance > min_ev - 0.1
    assert set(stats.losses) >= {"mse", "loss"}
    assert stats.history[0].step == 0 and stats.history[-1].step == cfg.steps - 1 and len(stats.history) <= 52
    assert calls[-1][:2] == (cfg.steps, cfg.steps) and {"loss", "mse", "l0", "dead"} <= set(calls[-1][2])
    if arch == "jumprelu":  # the saved threshold is the learned θ
        assert float(sae.threshold.min()) > 0 and not torch.allclose(sae.threshold, torch.full_like(sae.threshold, 0.5))


def test_act_scale_makes_the_sae_work_on_raw_activations(data):
    dirs, train, test = data
    cfg = TrainConfig(arch="topk", d_sae=256, k=8, batch_size=256, lr=3e-3, tokens=64_000)
    sae, stats = train_sae(cfg, _batches(train), D_IN)
    expected = math.sqrt(D_IN) / float(train[:16384].norm(dim=1).mean())
    assert sae.cfg.act_scale == pytest.approx(expected, rel=0.02) and stats.act_scale == sae.cfg.act_scale
    ev_raw = _quality(sae, dirs, test)[0]
    assert ev_raw > 0.5
    # what training measured in normalised units holds for raw activations
    assert abs(ev_raw - stats.explained_variance) < 0.1
    # and with normalize=False the model trains in raw units and says so
    raw_sae, raw_stats = train_sae(cfg.model_copy(update={"normalize": False, "tokens": 2560}), _batches(train), D_IN)
    assert raw_sae.cfg.act_scale == 1.0 == raw_stats.act_scale


def test_training_is_reproducible(data):
    _, train, _ = data
    for arch, extra in (("topk", {"k": 4}), ("jumprelu", {}), ("relu", {})):
        cfg = TrainConfig(arch=arch, d_sae=64, batch_size=128, lr=1e-2, tokens=128 * 60, dead_tokens=1280, aux_k=16, **extra)
        a, sa = train_sae(cfg, _batches(train), D_IN)
        b, sb = train_sae(cfg, _batches(train), D_IN)
        c, _ = train_sae(cfg.model_copy(update={"seed": 1}), _batches(train), D_IN)
        for name in a.weight_shapes:
            assert torch.equal(getattr(a, name), getattr(b, name)), (arch, name)
        assert not torch.equal(a.W_dec, c.W_dec)
        assert sa.losses == sb.losses and sa.history == sb.history


def test_round_trips_through_save_and_load(data, tmp_path):
    _, train, test = data
    for arch, extra in (("topk", {"k": 4}), ("jumprelu", {})):
        cfg = TrainConfig(arch=arch, d_sae=64, batch_size=128, lr=1e-2, tokens=128 * 20, **extra)
        sae, _ = train_sae(cfg, _batches(train), D_IN, hook_name="h")
        back = saebench.load_sae(saebench.save_sae(sae, tmp_path / arch))
        assert back.arch == arch and back.cfg.act_scale == sae.cfg.act_scale and back.cfg.hook_name == "h"
        assert back.cfg.metadata["training"] == sae.cfg.metadata["training"]
        for name in sae.weight_shapes:
            assert torch.equal(getattr(back, name), getattr(sae, name))
        with torch.no_grad():
            torch.testing.assert_close(back(test[:64]), sae(test[:64]))


def test_decoder_rows_stay_unit_norm_and_dead_latents_are_counted(data):
    _, train, _ = data
    # 64 tokens per batch, d_sae 1024 and k=1: most latents never fire within dead_tokens
    cfg = TrainConfig(arch="topk", d_sae=1024, k=1, batch_size=64, lr=1e-2, tokens=64 * 40, dead_tokens=640)
    sae, stats = train_sae(cfg, _batches(train), D_IN)
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(1024))
    assert 0.5 < stats.dead_fraction < 1
    assert stats.history[0].dead_fraction == 0  # nothing is dead before dead_tokens tokens
    assert stats.losses["auxk"] > 0  # AuxK is on once latents are dead


def test_epochs_repeat_small_data():
    x = torch.randn(300, 16) * 3
    seen = []

    def batches():
        seen.append(1)
        return iter([x[:200], x[200:]])

    cfg = TrainConfig(arch="relu", d_sae=32, batch_size=100, tokens=2000, shuffle_batches=0)
    _, stats = train_sae(cfg, batches, 16)
    assert stats.steps == 20 and len(seen) >= 6


# -- pieces against independent computations ------------------------------------------------------
def test_jumprelu_straight_through_estimators_by_hand():
    # ε = 0.05, so rect((h − θ)/ε) = 1 where |h − θ| < 0.025: entries (0,1), (0,2), (1,0)
    h = torch.tensor([[0.5, 1.02, 0.30], [0.61, 0.5, 1.0]], dtype=torch.float64, requires_grad=True)
    theta = torch.tensor([0.6, 1.0, 0.31], dtype=torch.float64, requires_grad=True)
    g = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]], dtype=torch.float64)

    f = JumpReLUFunction.apply(h, theta, 0.05)
    assert f.tolist() == [[0.0, 1.02, 0.0], [0.61, 0.0, 1.0]]
    gh, gt = torch.autograd.grad(f, (h, theta), g)
    assert gh.tolist() == [[0.0, 2.0, 0.0], [4.0, 0.0, 6.0]]  # 1[h > θ]·g
    # −(θ/ε)·Σ rect·g: −(0.6/0.05)·4, −(1.0/0.05)·2, −(0.31/0.05)·3
    torch.testing.assert_close(gt, torch.tensor([-48.0, -40.0, -18.6], dtype=torch.float64))

    step = StepFunction.apply(h, theta, 0.05)
    assert step.tolist() == [[0.0, 1.0, 0.0], [1.0, 0.0, 1.0]]
    gh, gt = torch.autograd.grad(step, (h, theta), g, allow_unused=True)
    assert gh is None or not gh.any()  # no gradient to the pre-activations
    torch.testing.assert_close(gt, torch.tensor([-80.0, -40.0, -60.0], dtype=torch.float64))  # −(1/ε)·Σ rect·g


def test_jumprelu_training_forward_uses_the_estimators():
    cls = plugin_manager.get("architecture", "jumprelu")
    g = torch.Generator().manual_seed(0)
    d_in, d_sae, n, eps = 5, 7, 40, 0.5
    sae = cls(saebench.SAEConfig(arch="jumprelu", d_in=d_in, d_sae=d_sae, apply_b_dec_to_input=True))
    with torch.no_grad():
        for p in sae.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    x = torch.randn(n, d_in, generator=g)
    cfg = TrainConfig(arch="jumprelu", d_sae=d_sae, tokens=100, l0=0.3, bandwidth=eps, initial_threshold=0.2)
    state = TrainState(cfg=cfg)
    out = sae.training_forward(x, state)
    log_theta = state.extra["log_threshold"]
    torch.testing.assert_close(sae.threshold, torch.full((d_sae,), 0.2))
    (gl,) = torch.autograd.grad(out.losses["l0"], log_theta)
    h = ((x - sae.b_dec) @ sae.W_enc + sae.b_enc).detach().double()
    theta = torch.full((d_sae,), 0.2, dtype=torch.float64)
    rect = ((h - theta).abs() < eps / 2).double()
    expected = 0.3 * theta * (-(1 / eps) * rect.sum(0) / n)  # d/dlogθ = θ·d/dθ of l0·mean Σ H
    torch.testing.assert_close(gl.double(), expected, rtol=1e-5, atol=1e-7)
    assert float(out.losses["l0"].detach()) == pytest.approx(0.3 * float((h > theta).sum(1).double().mean()), rel=1e-6)


def _tiny_topk(seed=0, d_in=6, d_sae=10, k=2):
    g = torch.Generator().manual_seed(seed)
    w = {"W_enc": torch.randn(d_in, d_sae, generator=g), "W_dec": torch.randn(d_sae, d_in, generator=g),
         "b_enc": torch.randn(d_sae, generator=g) * 0.3, "b_dec": torch.randn(d_in, generator=g) * 0.3}
    sae = saebench.build_sae("topk", w, k=k, apply_b_dec_to_input=True)
    for p in sae.parameters():
        p.requires_grad_(True)
    return sae, torch.randn(5, d_in, generator=g) * 2


def test_auxk_loss_against_float64():
    sae, x = _tiny_topk()
    dead = torch.zeros(10, dtype=torch.bool)
    dead[[1, 4, 5, 7, 9]] = True
    cfg = TrainConfig(arch="topk", d_sae=10, k=2, aux_k=3, aux_coefficient=0.25, tokens=100)
    out = sae.training_forward(x, TrainState(cfg=cfg, dead=dead))

    w = {n: getattr(sae, n).detach().double().numpy() for n in sae.weight_shapes}
    X = x.double().numpy()
    h = (X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    f = np.zeros_like(h)
    top = np.argsort(-h, axis=1)[:, :2]
    np.put_along_axis(f, top, np.maximum(np.take_along_axis(h, top, 1), 0), 1)
    x_hat = f @ w["W_dec"] + w["b_dec"]
    e = X - x_hat
    dead_ids = np.array([1, 4, 5, 7, 9])
    aux = np.zeros_like(h)
    for b in range(len(X)):  # each token's 3 largest pre-activations among the dead latents
        best = dead_ids[np.argsort(-h[b, dead_ids])[:3]]
        aux[b, best] = np.maximum(h[b, best], 0)
    e_hat = aux @ w["W_dec"]
    fvu = ((e_hat - e) ** 2).sum() / ((e - e.mean(0)) ** 2).sum()
    var_x = ((X - X.mean(0)) ** 2).sum() / len(X)
    assert float(out.losses["mse"].detach()) == pytest.approx(((X - x_hat) ** 2).sum(1).mean(), rel=1e-5)
    assert float(out.losses["auxk"].detach()) == pytest.approx(0.25 * fvu * var_x, rel=1e-5)
    assert float(out.l0) == pytest.approx((f > 0).sum(1).mean())
    assert out.fired.tolist() == (f > 0).any(0).tolist()

    # AuxK trains only the dead latents' encoder columns and decoder rows
    gW_enc, gW_dec, gb_dec = torch.autograd.grad(out.losses["auxk"], (sae.W_enc, sae.W_dec, sae.b_dec), allow_unused=True)
    assert not gW_enc[:, ~dead].any() and not gW_dec[~dead].any() and gW_enc[:, dead].any() and gW_dec[dead].any()
    assert gb_dec is None or not gb_dec.any()

    # nothing dead: the term is exactly zero
    out = sae.training_forward(x, TrainState(cfg=cfg, dead=torch.zeros(10, dtype=torch.bool)))
    assert float(out.losses["auxk"]) == 0.0


@pytest.mark.parametrize("block", [None, 6], ids=["one-block", "latent-blocks"])
def test_topk_sparse_gradients_match_dense_autograd(block, monkeypatch):
    """The sparse training path (kernel selection, GatherPreacts, embedding_bag) has the gradients of the dense definition."""
    if block:  # the kernel splits wide dictionaries into latent blocks; the selection must merge them
        monkeypatch.setattr(saebench.kernel, "MAX_BLOCK_LATENTS", block)
    sae, x = _tiny_topk(seed=3, d_in=8, d_sae=16, k=3)
    dead = torch.zeros(16, dtype=torch.bool)
    dead[[0, 2, 3, 11]] = True
    cfg = TrainConfig(arch="topk", d_sae=16, k=3, aux_k=2, tokens=100)
    out = sae.training_forward(x, TrainState(cfg=cfg, dead=dead))
    names = list(sae.weight_shapes)
    sparse = torch.autograd.grad(sum(out.losses.values()), [getattr(sae, n) for n in names])

    w = {n: getattr(sae, n).detach().double().requires_grad_(True) for n in names}
    X = x.double()
    h = (X - w["b_dec"]) @ w["W_enc"] + w["b_enc"]
    v, i = h.topk(3, dim=1)
    x_hat = torch.zeros_like(h).scatter(1, i, v.relu()) @ w["W_dec"] + w["b_dec"]
    mse = (X - x_hat).pow(2).sum(1).mean()
    h_aux = (X - w["b_dec"].detach()) @ w["W_enc"] + w["b_enc"]  # AuxK does not train b_dec
    hd = h_aux.masked_fill(~dead, -math.inf)
    av, ai = hd.topk(2, dim=1)
    e = (X - x_hat).detach()
    e_hat = torch.zeros_like(h).scatter(1, ai, av.relu()) @ w["W_dec"]
    aux = (e_hat - e).pow(2).sum() / (e - e.mean(0)).pow(2).sum() * (X - X.mean(0)).pow(2).sum() / len(X)
    dense = torch.autograd.grad(mse + cfg.aux_coefficient * aux, [w[n] for n in names])
    for n, gs, gd in zip(names, sparse, dense):
        torch.testing.assert_close(gs.double(), gd, rtol=1e-4, atol=1e-5, msg=n)


def test_gather_preacts_gradients():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(9, 5, generator=g, requires_grad=True)
    W = torch.randn(5, 12, generator=g, requires_grad=True)
    b = torch.randn(12, generator=g, requires_grad=True)
    idx = torch.randint(0, 12, (9, 4), generator=g)
    idx[0] = torch.tensor([3, 3, 3, 7])  # repeated latents accumulate
    r = torch.randn(9, 4, generator=g)
    with torch.no_grad():
        vals = (x @ W + b).gather(1, idx)
    sparse = torch.autograd.grad((GatherPreacts.apply(x, W, b, idx, vals) * r).sum(), (x, W, b))
    dense = torch.autograd.grad(((x @ W + b).gather(1, idx) * r).sum(), (x, W, b))
    for s, d in zip(sparse, dense):
        torch.testing.assert_close(s, d)


# -- configuration -------------------------------------------------------------------------------
def test_config_defaults_and_schedule():
    cfg = TrainConfig(arch="topk", d_sae=4096, k=32, tokens=1_000_000)
    assert cfg.aux_k is None and cfg.aux_k_for(640) == 320 and cfg.dead_tokens == 100_000 and cfg.steps == 245
    assert TrainConfig(arch="topk", d_sae=256, k=8, tokens=10**9).aux_k_for(2304) == 128
    assert TrainConfig(arch="relu", d_sae=8, tokens=10**10).dead_tokens == 10_000_000
    lrs = [cfg.lr_at(s) for s in range(cfg.steps)]
    assert lrs[0] == pytest.approx(cfg.lr / 13) and lrs[12] == pytest.approx(cfg.lr) == max(lrs) and lrs[11] < lrs[12]
    assert lrs[-49] == pytest.approx(cfg.lr) and lrs[-48] < cfg.lr and lrs[-1] == pytest.approx(cfg.lr / 49) and lrs[-1] > 0


@pytest.mark.parametrize(
    "data, message",
    [
        (dict(arch="topk", d_sae=64, tokens=10), "needs k"),
        (dict(arch="topkk", d_sae=64, tokens=10), "unknown architecture 'topkk' (did you mean 'topk'?)"),
        (dict(arch="topk", d_sae=64, k=65, tokens=10), "k=65 is larger than d_sae=64"),
        (dict(arch="relu", d_sae=64, tokens=10, warmup=0.6, decay=0.6), "warmup (0.6) + decay (0.6)"),
        (dict(arch="relu", d_sae=0, tokens=10), "d_sae"),
        (dict(arch="relu", d_sae=8, tokens=10, l2=3), "l2"),
    ],
)
def test_config_errors(data, message):
    with pytest.raises(ValidationError, match=None) as exc:
        TrainConfig(**data)
    assert message in str(exc.value)
    with pytest.raises(saebench.ConfigError) as one_line:
        TrainConfig.from_mapping(data, "matrix.yaml: saes[0].train")
    text = str(one_line.value)
    assert "\n" not in text and text.startswith("matrix.yaml: saes[0].train") and message in text


def test_architecture_without_training_is_refused():
    class Untrainable(saebench.SAE):
        """An architecture with no training_forward."""

        arch = "untrainable-test"

        def activation(self, h):
            return h.relu()

    class Plugin:
        @saebench.hookimpl
        def register_architectures(self, register):
            register(Untrainable)

    saebench.testing.register_plugin(Plugin(), "untrainable-test")
    try:
        with pytest.raises(ValidationError, match="'untrainable-test' cannot be trained by saebench"):
            TrainConfig(arch="untrainable-test", d_sae=8, tokens=10)
        sae = Untrainable(saebench.SAEConfig(arch="untrainable-test", d_in=4, d_sae=8))
        with pytest.raises(saebench.ConfigError, match="cannot be trained"):
            sae.training_forward(torch.zeros(2, 4), None)
    finally:
        saebench.testing.unregister_plugin("untrainable-test")


def test_bad_data_is_reported():
    cfg = TrainConfig(arch="relu", d_sae=8, tokens=100, batch_size=10)
    with pytest.raises(saebench.ShapeError, match=r"training batch 0 is \[5, 3\], expected \[n, 4\]"):
        train_sae(cfg, lambda: iter([torch.zeros(5, 3)]), 4)
    with pytest.raises(saebench.SaebenchError, match="empty"):
        train_sae(cfg, lambda: iter([]), 4)
    with pytest.raises(saebench.SaebenchError, match="NaN"):
        train_sae(cfg, lambda: iter([torch.full((50, 4), math.nan)]), 4)
