"""Logistic probes, fitted full-batch, and the classification metrics probe scorers report.

One objective everywhere: mean cross-entropy + ``l2``/2 · ‖W‖² (the bias unpenalised), softmax over
classes (two classes included), on standardised features (train mean and std; the probe is
mapped back to raw units, so ``weight @ x + bias`` works on unstandardised inputs). That is
scikit-learn's multinomial ``LogisticRegression(C=1 / (l2 · n_train))`` objective (for two classes,
its binary one with C = 2 / (l2 · n_train)), which the tests check.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
from torch import Tensor


@dataclass
class LinearProbe:
    """A fitted probe in raw feature units: logits = x @ weight.T + bias."""

    weight: Tensor  # [n_classes, d]
    bias: Tensor  # [n_classes]

    def logits(self, x: Tensor) -> Tensor:
        return x.to(self.weight.dtype) @ self.weight.T + self.bias

    def predict(self, x: Tensor) -> Tensor:
        return self.logits(x).argmax(-1)

    def loss(self, x: Tensor, y: Tensor) -> float:
        """Mean cross-entropy (nats) on (x, y)."""
        return float(torch.nn.functional.cross_entropy(self.logits(x), y))


#: below this fraction of non-zeros (and above SPARSE_MIN_ELEMENTS), probes use sparse products
SPARSE_DENSITY = 0.05
SPARSE_MIN_ELEMENTS = 1 << 22


class _SparseRows(torch.autograd.Function):
    """logits = z @ w.T with z a fixed sparse matrix: both products stay sparse (torch's own sparse
    backward densifies, which is no faster than the dense product)."""

    @staticmethod
    def forward(ctx, w, z, z_t):
        ctx.z_t = z_t
        return z @ w.T

    @staticmethod
    def backward(ctx, grad):
        return (ctx.z_t @ grad).T, None, None


def fit_logistic(
    x: Tensor, y: Tensor, n_classes: int, *, l2: float = 1e-3, max_iter: int = 200, dtype: torch.dtype = torch.float32
) -> LinearProbe:
    """Multinomial logistic regression by L-BFGS (strong Wolfe line search) on standardised features.

    Columns with zero variance in ``x`` get weight 0. ``l2`` is per the objective in the module
    docstring; float64 for small problems where exactness matters, float32 is ample otherwise.
    SAE latents are mostly zeros: then the features are only scaled, not centred (the unpenalised
    bias absorbs the centring, so the optimum is the same) and kept sparse, ~50× faster per step.
    """
    x = x.to(dtype)
    mean = x.mean(0)
    std = x.std(0, unbiased=False)
    live = std > 1e-8
    scale = torch.where(live, std, torch.ones_like(std))
    sparse = x.numel() >= SPARSE_MIN_ELEMENTS and float((x != 0).float().mean()) < SPARSE_DENSITY
    if sparse:
        with warnings.catch_warnings():  # "sparse CSR support is in beta": the two products used here are not
            warnings.simplefilter("ignore", UserWarning)
            z = (x / scale).to_sparse_csr()
            z_t = (x / scale).T.contiguous().to_sparse_csr()
        shift = torch.zeros_like(mean)
        linear = lambda w: _SparseRows.apply(w, z, z_t)  # noqa: E731
    else:
        z = (x - mean) / scale
        shift = mean
        linear = lambda w: z @ w.T  # noqa: E731
    w = torch.zeros(n_classes, x.shape[1], dtype=dtype, requires_grad=True)
    b = torch.zeros(n_classes, dtype=dtype, requires_grad=True)
    if n_classes > 1:
        counts = torch.bincount(y, minlength=n_classes).to(dtype)
        with torch.no_grad():  # start from the class prior: fewer iterations on imbalanced tasks
            b.copy_(torch.log(counts.clamp_min(1) / counts.sum()))
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1,
        max_iter=max_iter,
        history_size=20,
        line_search_fn="strong_wolfe",
        tolerance_grad=1e-7,
        tolerance_change=1e-10,
    )

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(w) + b, y) + 0.5 * l2 * (w * w).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        weight = torch.where(live, w / scale, torch.zeros_like(w))
        bias = b - weight @ shift
    return LinearProbe(weight.detach(), bias.detach())


def one_dim_probe_losses(
    x_train: Tensor, y_train: Tensor, x_test: Tensor, y_test: Tensor, *, l2: float = 1e-4, steps: int = 25
) -> Tensor:
    """Test cross-entropy of a 1-D logistic probe per feature (Gao et al.'s probe loss), [d].

    Binary labels (0/1). Every feature's probe sigmoid(a·x_j + b) is fitted at once by Newton's
    method on its own 2×2 Hessian (features standardised first, so one step size suits all);
    a dead feature gets the constant (prior) predictor's loss.
    """
    x_train, x_test = x_train.double(), x_test.double()
    yt = y_train.double()
    mean, std = x_train.mean(0), x_train.std(0, unbiased=False)
    scale = torch.where(std > 1e-12, std, torch.ones_like(std))
    z = (x_train - mean) / scale
    d = x_train.shape[1]
    p0 = yt.mean().clamp(1e-6, 1 - 1e-6)
    a = torch.zeros(d, dtype=torch.float64)
    b = torch.full((d,), float(torch.log(p0 / (1 - p0))), dtype=torch.float64)
    active = torch.arange(d)  # features still moving: converged ones leave the (costly) update
    for _ in range(steps):
        za, aa, ba = z[:, active], a[active], b[active]
        p = torch.sigmoid(za * aa + ba)
        r = p - yt[:, None]
        g_a = (r * za).mean(0) + l2 * aa
        g_b = r.mean(0)
        w = p * (1 - p)
        wz = w * za
        h_aa = (wz * za).mean(0) + l2
        h_ab = wz.mean(0)
        h_bb = w.mean(0) + 1e-12
        det = h_aa * h_bb - h_ab * h_ab
        da = ((h_bb * g_a - h_ab * g_b) / det).clamp(-10, 10)
        db = ((h_aa * g_b - h_ab * g_a) / det).clamp(-10, 10)
        a[active], b[active] = aa - da, ba - db
        active = active[torch.maximum(da.abs(), db.abs()) >= 1e-7]
        if active.numel() == 0:
            break
    zt = (x_test - mean) / scale
    logits = zt * a + b
    yt_test = y_test.double()[:, None]
    loss = torch.nn.functional.binary_cross_entropy_with_logits(logits, yt_test.expand_as(logits), reduction="none")
    return loss.mean(0)


def classification_metrics(pred: Tensor, y: Tensor, n_classes: int) -> dict[str, float]:
    """Accuracy, macro F1 and balanced accuracy (macro recall) over the classes present in ``y``
    or predicted; F1 of a class with no true and no predicted members is left out, not counted 0."""
    pred, y = pred.long(), y.long()
    acc = float((pred == y).double().mean()) if y.numel() else float("nan")
    f1s, recalls = [], []
    for c in range(n_classes):
        tp = int(((pred == c) & (y == c)).sum())
        fp = int(((pred == c) & (y != c)).sum())
        fn = int(((pred != c) & (y == c)).sum())
        if tp + fp + fn == 0:
            continue
        f1s.append(2 * tp / (2 * tp + fp + fn))
        if tp + fn:
            recalls.append(tp / (tp + fn))
    return {
        "accuracy": acc,
        "f1": sum(f1s) / len(f1s) if f1s else float("nan"),
        "balanced_accuracy": sum(recalls) / len(recalls) if recalls else float("nan"),
    }


def binary_f1(pred: Tensor, truth: Tensor) -> float | None:
    """F1 of the positive class (bool tensors); None when nothing is positive in either."""
    tp = int((pred & truth).sum())
    den = int(pred.sum()) + int(truth.sum())
    return 2 * tp / den if den else None


def class_mean_difference(x: Tensor, y: Tensor, n_classes: int) -> Tensor:
    """[n_classes, d]: mean of each feature on a class minus its mean on the other classes
    (SAEBench's latent selection for k-sparse probes, one-vs-rest)."""
    x = x.double()
    total = x.sum(0)
    n = y.numel()
    out = torch.zeros(n_classes, x.shape[1], dtype=torch.float64)
    for c in range(n_classes):
        mask = y == c
        k = int(mask.sum())
        if k == 0 or k == n:
            continue
        inside = x[mask].sum(0)
        out[c] = inside / k - (total - inside) / (n - k)
    return out


def token_identity_baseline(train_ids: Tensor, train_y: Tensor, test_ids: Tensor, n_classes: int) -> Tensor:
    """Predictions of the best classifier that sees only the token: each token id's majority
    training label; ids unseen in training get the overall majority label."""
    majority = int(torch.bincount(train_y, minlength=n_classes).argmax())
    counts: dict[int, Tensor] = {}
    for tok, lab in zip(train_ids.tolist(), train_y.tolist()):
        counts.setdefault(tok, torch.zeros(n_classes, dtype=torch.long))[lab] += 1
    best = {tok: int(c.argmax()) for tok, c in counts.items()}
    return torch.tensor([best.get(t, majority) for t in test_ids.tolist()], dtype=torch.long)


def dense_probe(data, l2: float) -> dict[str, float]:
    """Test metrics of a probe on a ProbeData's raw activations (mean-pooled per text for sequence
    tasks): the ceiling a probe on SAE latents is compared with."""
    x = data.features()
    probe = fit_logistic(x[data.train], data.labels[data.train], data.n_classes, l2=l2)
    return classification_metrics(probe.predict(x[~data.train]), data.labels[~data.train], data.n_classes)


def token_identity(data) -> dict[str, float]:
    """Test metrics of the token-identity baseline on a token-level ProbeData."""
    tr = data.train
    pred = token_identity_baseline(data.token_ids[tr], data.labels[tr], data.token_ids[~tr], data.n_classes)
    return classification_metrics(pred, data.labels[~tr], data.n_classes)
