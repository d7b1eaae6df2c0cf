"""Probe fitting on cached SAE latents: the logistic head TreeProbe and sparse probing fit, ours
(full-batch L-BFGS) beside a naive torch loop (full-batch Adam), scikit-learn's lbfgs (the usual
peer choice, installed with sentence-transformers), all on the same objective (mean cross-entropy +
1e-3/2·‖W‖² on std-scaled features), and one GEMM of the same shape (the floor of a single pass). Latents are TopK-sparse (k = 32 of 4096), as the quickstart's are.

The held-out accuracies reached go into the notes: a faster fit that reaches a worse optimum is no win.
"""

from __future__ import annotations

import conftest
import pytest
import torch
from conftest import NOTES, record, run

from saebench.probes.linear import fit_logistic

N, D, C = (512, 256, 4) if conftest.SMALL else (16384, 4096, 12)
GROUP = f"probe head: logistic regression on {N} tokens × {D} latents, {C} classes"
ACCURACY: dict[str, float] = {}


def make(n, seed):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, C, (n,), generator=g)
    k = 8 if conftest.SMALL else 32
    scores = torch.rand(n, D, generator=g) + 0.01 * (
        torch.arange(D)[None, :] % C == y[:, None]
    )  # class-leaning latents
    top = scores.topk(k, dim=1)
    return torch.zeros(n, D).scatter_(1, top.indices, top.values), y


@pytest.fixture(scope="module")
def data():
    return make(N, 0)


HELD_OUT = make(N // 4, 1)


def accuracy(logits, y):
    return float((logits.argmax(-1) == y).float().mean())


def scaled(x):
    """Features divided by their std: the objective fit_logistic minimises, given to the others too."""
    std = x.std(0, unbiased=False)
    return x / torch.where(std > 1e-8, std, torch.ones_like(std))


def naive_adam(x, y, steps=300):
    w = torch.zeros(C, D, requires_grad=True)
    b = torch.zeros(C, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=0.05)
    for _ in range(steps):
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(x @ w.T + b, y) + 0.5e-3 * (w * w).sum()
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


def test_probe_ours(benchmark, data):
    x, y = data
    probe = run(benchmark, lambda: fit_logistic(x, y, C, l2=1e-3))
    ACCURACY["saebench fit_logistic (L-BFGS)"] = accuracy(probe.logits(HELD_OUT[0]), HELD_OUT[1])
    record(benchmark, GROUP, "saebench fit_logistic (L-BFGS)", 0, N)


def test_probe_naive(benchmark, data):
    x, y = data
    w, b = run(benchmark, lambda: naive_adam(scaled(x), y))
    std = x.std(0, unbiased=False)
    w = w / torch.where(std > 1e-8, std, torch.ones_like(std))
    ACCURACY["torch Adam, 300 full-batch steps"] = accuracy(HELD_OUT[0] @ w.T + b, HELD_OUT[1])
    record(benchmark, GROUP, "torch Adam, 300 full-batch steps", 0, N, "naive")


def test_probe_sklearn(benchmark, data):
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = data
    std = x.std(0, unbiased=False)
    std = torch.where(std > 1e-8, std, torch.ones_like(std))
    xs, ys = (x / std).numpy(), y.numpy()
    model = run(benchmark, lambda: sklearn.LogisticRegression(C=1 / (1e-3 * N), max_iter=200).fit(xs, ys))
    pred = model.predict((HELD_OUT[0] / std).numpy())
    ACCURACY["scikit-learn LogisticRegression (lbfgs)"] = float((pred == HELD_OUT[1].numpy()).mean())
    record(benchmark, GROUP, "scikit-learn LogisticRegression (lbfgs)", 0, N, "peer")


def test_probe_gemm(benchmark, data):
    x, _ = data
    w = torch.randn(C, D)
    run(benchmark, lambda: x @ w.T)
    record(benchmark, GROUP, "one GEMM pass (x @ W.T)", 2 * N * D * C, N, "ceiling")
    NOTES[f"probe head accuracy ({N}×{D}, {C} classes, held-out tokens)"] = "\n".join(
        f"- {name}: {acc:.4f}" for name, acc in ACCURACY.items()
    )
