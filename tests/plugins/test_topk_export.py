"""Exporting a TopK SAE as a JumpReLU with one global threshold (topk.py: topk_threshold, TopKSAE.to_jumprelu).

The definition (Bussmann et al. 2024, BatchTopK's inference threshold): θ is the mean over calibration
batches of the smallest activation BatchTopK_k keeps in the batch, i.e. of each batch's (k·B)-th largest
positive pre-activation; a final shorter batch is left out unless it is the only one. Checked here against
numpy in float64, then on a trained TopK SAE: on held-out tokens the JumpReLU keeps about k latents per
token, mostly the TopK ones, with the same values.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saebench
from reference import pre_acts as ref_pre_acts
from reference import random_weights
from saebench.plugins.architectures.topk import topk_threshold
from saebench.training import TrainConfig, train_sae

D_IN, D_SAE, K = 24, 96, 6

pytestmark = pytest.mark.usefixtures("one_thread")


def ref_theta(h: np.ndarray, k: int, batch: int) -> float:
    """numpy: per batch of ``batch`` rows of h [N, d_sae], the (k·B)-th largest positive entry (all positives if fewer); their mean."""
    n = h.shape[0]
    starts = range(0, n - batch + 1, batch) if n >= batch else [0]
    minima = []
    for s in starts:
        rows = h[s : s + batch]
        positive = np.sort(rows[rows > 0])[::-1]
        if positive.size:
            minima.append(positive[: k * rows.shape[0]][-1])
    return float(np.mean(minima))


def _x(n, seed=1):
    return torch.randn(n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


@pytest.mark.parametrize("apply_b_dec,act_scale", [(False, 1.0), (True, 0.5)])
@pytest.mark.parametrize("n,batch", [(2500, 1000), (700, 1000), (3000, 1000)], ids=["remainder-dropped", "one-short-batch", "exact"])
def test_threshold_matches_numpy(apply_b_dec, act_scale, n, batch):
    w = random_weights(D_IN, D_SAE, arch="topk")
    sae = saebench.build_sae("topk", w, k=K, apply_b_dec_to_input=apply_b_dec, act_scale=act_scale)
    x = _x(n)
    h = ref_pre_acts(x.numpy(), w, apply_b_dec, act_scale)
    want = ref_theta(h, K, batch)
    assert topk_threshold(sae, x, batch_tokens=batch) == pytest.approx(want, rel=1e-5)
    assert topk_threshold(sae, x.reshape(n // 100, 100, D_IN), batch_tokens=batch) == pytest.approx(want, rel=1e-5)
    if n == 2500:  # not vacuous: counting the 500-token remainder as a third batch would give another θ
        with_rest = np.mean([ref_theta(h[s : s + 1000], K, 1000) for s in (0, 1000, 2000)])
        assert want != pytest.approx(with_rest, rel=1e-4)


def test_fewer_positives_than_k_per_token_take_the_smallest_positive():
    w = random_weights(D_IN, D_SAE, arch="topk")
    w["b_enc"] = w["b_enc"] - 3.0
    sae = saebench.build_sae("topk", w, k=K)
    x = _x(200)
    h = ref_pre_acts(x.numpy(), w)
    assert 0 < (h > 0).sum() < K * 200
    low = np.sort(h[h > 0])
    assert low[1] - low[0] > 1e-5  # the tolerance below cannot take the next one for the smallest
    assert topk_threshold(sae, x, batch_tokens=200) == pytest.approx(h[h > 0].min(), abs=1e-5)  # float32 rounding of h


def test_export_keeps_the_weights_and_on_its_calibration_batch_k_per_token(tmp_path):
    w = random_weights(D_IN, D_SAE, arch="topk")
    sae = saebench.build_sae("topk", w, k=K, apply_b_dec_to_input=True, hook_name="layers.1", model_name="m")
    x = _x(1500)
    jr = sae.to_jumprelu(x, batch_tokens=1500)
    theta = ref_theta(ref_pre_acts(x.numpy(), w, True), K, 1500)
    assert jr.arch == "jumprelu" and jr.cfg.k is None and jr.cfg.apply_b_dec_to_input
    assert (jr.cfg.hook_name, jr.cfg.model_name) == ("layers.1", "m")
    for name, value in sae.weights().items():
        assert torch.equal(jr.weights()[name], value), name
    np.testing.assert_allclose(jr.threshold.double().numpy(), np.full(D_SAE, theta), rtol=1e-6)
    export = jr.cfg.metadata["topk_export"]
    assert export["k"] == K and export["threshold"] == pytest.approx(theta, rel=1e-6)
    assert (export["calibration_tokens"], export["batch_tokens"]) == (1500, 1500)
    # one batch: exactly the k·N largest pre-activations pass h ≥ θ; the strict h > θ drops θ itself
    active = int((jr.encode(x) != 0).sum())
    assert abs(active - (K * 1500 - 1)) <= 2, active  # ±2 for float32 rounding at the threshold
    back = saebench.load_sae(saebench.save_sae(jr, tmp_path / "jr"))
    assert back.arch == "jumprelu" and torch.equal(back.threshold, jr.threshold)
    assert back.cfg.metadata["topk_export"] == export


def test_export_errors_are_one_line():
    w = random_weights(D_IN, D_SAE, arch="topk")
    sae = saebench.build_sae("topk", w, k=K)
    with pytest.raises(saebench.ConfigError, match="batch_tokens must be positive"):
        topk_threshold(sae, _x(10), batch_tokens=0)
    with pytest.raises(saebench.DataError, match="at least one calibration token"):
        sae.to_jumprelu(torch.zeros(0, D_IN))
    with pytest.raises(saebench.ShapeError, match=r"\[\.\.\., 24\]"):
        sae.to_jumprelu(torch.zeros(5, D_IN + 1))
    dead = saebench.build_sae("topk", {**w, "b_enc": torch.full((D_SAE,), -1e3)}, k=K)
    with pytest.raises(saebench.DataError, match="no pre-activation .* is positive"):
        dead.to_jumprelu(_x(10))
    with pytest.raises(saebench.ConfigError, match="no k"):
        topk_threshold(saebench.build_sae("relu", w), _x(10))


def _planted(n, seed, dirs, active=4):
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, len(dirs), generator=g).topk(active, dim=1).indices
    coef = torch.zeros(n, len(dirs)).scatter_(1, idx, torch.rand(n, active, generator=g) + 0.5)
    return (coef @ dirs + 0.01 * torch.randn(n, dirs.shape[1], generator=g)) * 10


def test_a_trained_topk_sae_exports_to_a_jumprelu_that_agrees_on_held_out_tokens():
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(128, 32, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    train, calibration, held_out = _planted(30_000, 1, dirs), _planted(8192, 3, dirs), _planted(4096, 2, dirs)
    cfg = TrainConfig(arch="topk", d_sae=256, k=4, batch_size=256, lr=3e-3, tokens=256 * 300)
    sae, _ = train_sae(cfg, lambda: iter(train.split(5000)), 32)
    jr = sae.to_jumprelu(calibration, batch_tokens=1024)

    w = {n: t.double().numpy() for n, t in sae.weights().items()}  # θ again, from numpy on the trained weights
    h_cal = ref_pre_acts(calibration.numpy(), w, True, sae.cfg.act_scale)
    assert float(jr.threshold[0]) == pytest.approx(ref_theta(h_cal, 4, 1024), rel=1e-5)

    with torch.no_grad():
        f_topk, f_jr = sae.encode(held_out), jr.encode(held_out)
    on_topk, on_jr = f_topk != 0, f_jr != 0
    l0 = float(on_jr.sum(-1).float().mean())
    assert abs(l0 - 4) < 0.4, l0  # measured 4.12: k on average, on tokens it was not calibrated on
    both = on_topk & on_jr
    recall, precision = float(both.sum() / on_topk.sum()), float(both.sum() / on_jr.sum())
    assert recall > 0.6 and precision > 0.6, (recall, precision)  # measured 0.69 and 0.67
    torch.testing.assert_close(f_jr[both], f_topk[both])  # both are h where both are active
    h_held = ref_pre_acts(held_out.numpy(), w, True, sae.cfg.act_scale)
    theta = float(jr.threshold[0])
    safe = np.abs(h_held - theta) > 1e-4
    np.testing.assert_array_equal(on_jr.numpy()[safe], (h_held > theta)[safe])
