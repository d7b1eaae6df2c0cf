"""Logistic probes and classification metrics against independent computations: scikit-learn's
LogisticRegression (same objective), scipy's optimiser for the 1-D probes, hand-computed cases."""

import math

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from saebench.probes.linear import (
    class_mean_difference,
    classification_metrics,
    fit_logistic,
    one_dim_probe_losses,
    token_identity_baseline,
)


def blobs(n=300, d=6, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    centres = torch.randn(classes, d, generator=g) * 1.5
    x = centres[y] + torch.randn(n, d, generator=g) * torch.linspace(0.5, 3, d)  # unequal scales
    return x.double(), y


@pytest.mark.parametrize("classes", [2, 4])
def test_fit_logistic_matches_sklearn_same_objective(classes):
    sklearn = pytest.importorskip("sklearn.linear_model")
    x, y = blobs(classes=classes)
    l2 = 1e-2
    probe = fit_logistic(x, y, classes, l2=l2, dtype=torch.float64, max_iter=500)
    # sklearn penalises the standardised problem only if we standardise for it: do so, same as ours
    mean, std = x.mean(0), x.std(0, unbiased=False)
    z = ((x - mean) / std).numpy()
    # two softmax rows penalised each are one binary weight vector penalised half as much
    C = (2 if classes == 2 else 1) / (l2 * len(y))
    ref = sklearn.LogisticRegression(C=C, tol=1e-10, max_iter=5000).fit(z, y.numpy())
    ours = torch.softmax(probe.logits(x), -1).numpy()
    theirs = ref.predict_proba(z)
    assert np.abs(ours - theirs).max() < 2e-4


def test_fit_logistic_ignores_constant_columns_and_separates():
    x, y = blobs(classes=2)
    x = torch.cat([x, torch.full((x.shape[0], 1), 3.0, dtype=x.dtype)], 1)
    probe = fit_logistic(x, y, 2, l2=1e-3)
    assert float(probe.weight[:, -1].abs().max()) == 0
    assert float((probe.predict(x) == y).double().mean()) > 0.9


def test_one_dim_probe_losses_match_scipy_per_feature():
    g = torch.Generator().manual_seed(1)
    n, d = 400, 5
    y = (torch.rand(n, generator=g) < 0.3).long()
    x = torch.relu(torch.randn(n, d, generator=g) + y[:, None] * torch.tensor([2.0, 0.5, 0.0, -1.0, 1.0]))
    tr, te = slice(0, 300), slice(300, None)
    l2 = 1e-4
    got = one_dim_probe_losses(x[tr], y[tr], x[te], y[te], l2=l2, steps=50)
    for j in range(d):
        xj = x[tr, j].double().numpy()
        mu, sd = xj.mean(), xj.std()
        zj = (xj - mu) / sd
        yt = y[tr].double().numpy()

        def f(p):
            logits = p[0] * zj + p[1]
            return np.mean(np.logaddexp(0, logits) - yt * logits) + 0.5 * l2 * p[0] ** 2

        a, b = minimize(f, [0.0, 0.0], method="BFGS", options={"gtol": 1e-10}).x
        zt = (x[te, j].double().numpy() - mu) / sd
        logits = a * zt + b
        ref = np.mean(np.logaddexp(0, logits) - y[te].double().numpy() * logits)
        assert float(got[j]) == pytest.approx(ref, abs=1e-6)


def test_classification_metrics_hand_computed():
    y = torch.tensor([0, 0, 1, 1, 2, 2])
    pred = torch.tensor([0, 1, 1, 1, 2, 0])
    m = classification_metrics(pred, y, 4)  # class 3 absent everywhere: left out
    assert m["accuracy"] == pytest.approx(4 / 6)
    f1 = [2 * 1 / (2 + 1 + 1), 2 * 2 / (4 + 1 + 0), 2 * 1 / (2 + 0 + 1)]
    assert m["f1"] == pytest.approx(sum(f1) / 3)
    assert m["balanced_accuracy"] == pytest.approx((0.5 + 1 + 0.5) / 3)


def test_class_mean_difference_hand_computed():
    x = torch.tensor([[1.0, 0], [3.0, 0], [0.0, 4], [0.0, 2]])
    y = torch.tensor([0, 0, 1, 1])
    d = class_mean_difference(x, y, 3)
    assert d[0].tolist() == [2.0, -3.0] and d[1].tolist() == [-2.0, 3.0] and d[2].tolist() == [0.0, 0.0]


def test_token_identity_baseline_majority_per_token():
    train_ids = torch.tensor([5, 5, 5, 7, 7, 9])
    train_y = torch.tensor([1, 1, 0, 2, 2, 2])
    pred = token_identity_baseline(train_ids, train_y, torch.tensor([5, 7, 9, 11]), 3)
    assert pred.tolist() == [1, 2, 2, 2]  # 11 unseen: overall majority (2)
    assert not math.isnan(classification_metrics(pred, torch.tensor([1, 2, 0, 2]), 3)["accuracy"])


def test_sparse_path_reaches_the_dense_optimum(monkeypatch):
    """SAE latents take the sparse, uncentred path: the same objective, so the same probe."""
    import saebench.probes.linear as lp

    g = torch.Generator().manual_seed(3)
    n, d, classes = 600, 200, 3
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.zeros(n, d, dtype=torch.float64)
    idx = torch.randint(0, d, (n, 6), generator=g)
    x.scatter_(1, idx, torch.rand(n, 6, generator=g, dtype=torch.float64) + 0.5)
    x[torch.arange(n), y] += 2.0  # class-marking latents
    dense = fit_logistic(x, y, classes, l2=1e-2, dtype=torch.float64, max_iter=500)
    monkeypatch.setattr(lp, "SPARSE_MIN_ELEMENTS", 0)
    sparse = fit_logistic(x, y, classes, l2=1e-2, dtype=torch.float64, max_iter=500)
    assert float((x != 0).double().mean()) < lp.SPARSE_DENSITY
    p_dense, p_sparse = torch.softmax(dense.logits(x), -1), torch.softmax(sparse.logits(x), -1)
    assert float((p_dense - p_sparse).abs().max()) < 1e-4
