"""Probe fitting on cached SAE latents: the logistic head TreeProbe and sparse probing fit, ours
(full-batch L-BFGS) beside a naive torch loop (full-batch Adam), scikit-learn's lbfgs (the usual
peer choice, installed with sentence-transformers) and one GEMM of the same shape (the floor of a
single pass). Latents are TopK-sparse (k = 32 of 4096), as the quickstart's are.

The accuracies reached go into the notes: a faster fit that reaches a worse optimum is no win.
"""

from __future__ import annotations


import pytest
import torch

import conftest
from conftest import NOTES, record, run
from saebench.linear_probe import fit_logistic

N, D, C = (512, 256, 4) if conftest.SMALL else (16384, 4096, 12)
GROUP = f"probe head: logistic regression on {N} tokens × {D} latents, {C} classes"
ACCURACY: dict[str, float] = {}


@pytest.fixture(scope="module")
def data():
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, C, (N,), generator=g)
    k = 8 if conftest.SMALL else 32
    scores = torch.rand(N, D, generator=g) + 0.6 * (torch.arange(D)[None, :] % C == y[:, None])  # class-leaning latents
    top = scores.topk(k, dim=1)
    x = torch.zeros(N, D).scatter_(1, top.indices, top.values)
    return x, y


def accuracy(logits, y):
    return float((logits.argmax(-1) == y).float().mean())


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
    ACCURACY["saebench fit_logistic (L-BFGS)"] = accuracy(probe.logits(x), y)
    record(benchmark, GROUP, "saebench fit_logistic (L-BFGS)", 0, N)


def test_probe_naive(benchmark, data):
    x, y = data
    w, b = run(benchmark, lambda: naive_adam(x, y))
    ACCURACY["torch Adam, 300 full-batch steps"] = accuracy(x @ w.T + b, y)
    record(benchmark, GROUP, "torch Adam, 300 full-batch steps", 0, N, "naive")


def test_probe_sklearn(benchmark, data):
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = data
    xs, ys = x.numpy(), y.numpy()
    model = run(benchmark, lambda: sklearn.LogisticRegression(C=1 / (1e-3 * N), max_iter=200).fit(xs, ys))
    ACCURACY["scikit-learn LogisticRegression (lbfgs)"] = float((model.predict(xs) == ys).mean())
    record(benchmark, GROUP, "scikit-learn LogisticRegression (lbfgs)", 0, N, "peer")


def test_probe_gemm(benchmark, data):
    x, _ = data
    w = torch.randn(C, D)
    run(benchmark, lambda: x @ w.T)
    record(benchmark, GROUP, "one GEMM pass (x @ W.T)", 2 * N * D * C, N, "ceiling")
    NOTES[f"probe head accuracy ({N}×{D}, {C} classes, train)"] = "\n".join(
        f"- {name}: {acc:.4f}" for name, acc in ACCURACY.items())
