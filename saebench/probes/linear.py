"""Logistic probes, fitted full-batch, the classification metrics probe scorers report, and the
per-unit statistics (:func:`task_units`) their intervals are resampled from.

One objective everywhere: mean cross-entropy + ``l2``/2 · ‖W‖² (the bias unpenalised), softmax over
classes (two classes included), on standardised features (train mean and std; the probe is
mapped back to raw units, so ``weight @ x + bias`` works on unstandardised inputs). That is
scikit-learn's multinomial ``LogisticRegression(C=1 / (l2 · n_train))`` objective (for two classes,
its binary one with C = 2 / (l2 · n_train)), which the tests check.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from saebench.uncertainty import Ratio, Units


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
    x_train: Tensor,
    y_train: Tensor,
    x_test: Tensor,
    y_test: Tensor,
    *,
    l2: float = 1e-4,
    steps: int = 25,
    per_row: bool = False,
) -> Tensor:
    """Test cross-entropy of a 1-D logistic probe per feature (Gao et al.'s probe loss), [d]
    (``per_row``: each test row's, [n_test, d], whose mean over rows is the default's).

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
    return loss if per_row else loss.mean(0)


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


def dense_predictions(data, l2: float) -> Tensor:
    """Test predictions of a probe on a ProbeData's raw activations (mean-pooled per text for
    sequence tasks): the ceiling a probe on SAE latents is compared with."""
    x = data.features()
    probe = fit_logistic(x[data.train], data.labels[data.train], data.n_classes, l2=l2)
    return probe.predict(x[~data.train])


def dense_probe(data, l2: float) -> dict[str, float]:
    """Test metrics of :func:`dense_predictions`."""
    return classification_metrics(dense_predictions(data, l2), data.labels[~data.train], data.n_classes)


def token_identity_predictions(data) -> Tensor:
    """Test predictions of the token-identity baseline on a token-level ProbeData."""
    tr = data.train
    return token_identity_baseline(data.token_ids[tr], data.labels[tr], data.token_ids[~tr], data.n_classes)


def token_identity(data) -> dict[str, float]:
    """Test metrics of the token-identity baseline on a token-level ProbeData."""
    return classification_metrics(token_identity_predictions(data), data.labels[~data.train], data.n_classes)


# -- per-unit statistics ---------------------------------------------------------------------------

#: one part of a probe metric on a task: (numerator, denominator) per test row; its value Σ num / Σ den
Part = tuple[Tensor, Tensor]


def held_out_texts(data) -> Tensor:
    """[test rows]: the text each test row of a ProbeData comes from (a sequence task's row is its text)."""
    if data.level == "token":
        return data.sequence[~data.train]
    return torch.nonzero(~data.train).flatten()


def correct_part(pred: Tensor, y: Tensor) -> list[Part]:
    """Accuracy as parts: one, per-row correctness over every row."""
    hit = (pred.long() == y.long()).double()
    return [(hit, torch.ones_like(hit))]


def task_units(
    tasks: Sequence[tuple[str, Tensor, Mapping[str, Sequence[Part]]]], metrics: Iterable[str]
) -> Units | None:
    """Units = the test texts of every task (stratum = task), for metrics that are a mean over tasks of
    a mean over parts (one for an accuracy; classes, tree nodes) of a ratio over the task's test rows.

    ``tasks``: per task its name, :func:`held_out_texts` and, per metric, its parts (a part whose
    denominator sums to 0 is left out, as the scorers leave out an undefined value). A metric is kept
    when it is in ``metrics`` and every task has a part of it. Per text i of task t (m_t texts, T
    tasks) and part p (F_ip, D_ip the text's sums, r_p = ΣF_p / ΣD_p): the metric's column is
    Σ_p ((F_ip − r_p·D_ip) / ΣD_p + r_p / m_t) / (P_t·T), its denominator ``weight`` = 1 / (m_t·T).
    Their totals are the metric; on a resample of texts within tasks, each ratio is recomputed to
    first order (delta method), so a mean over tasks of ratios stays one ratio of totals. Where a
    text is one row of denominator 1 (a sequence task), the column is the text's value / (m_t·T),
    which resamples the mean exactly. Texts, not tokens: tokens of one text are correlated.
    """
    wanted = list(dict.fromkeys(metrics))
    kept = {}
    for name in wanted:
        per_task = [[(n, d) for n, d in parts.get(name, ()) if float(d.double().sum()) > 0] for _, _, parts in tasks]
        if tasks and all(per_task):
            kept[name] = per_task
    if not kept:
        return None
    n_tasks = len(tasks)
    ids: list[int | str] = []
    strata: list[int] = []
    columns: dict[str, list[float]] = {name: [] for name in kept}
    columns["weight"] = []
    for t, (task, texts, _) in enumerate(tasks):
        present, index = torch.unique(texts, return_inverse=True)
        m = present.numel()
        ids += [f"{task}:{int(i)}" for i in present]
        strata += [t] * m
        columns["weight"] += [1.0 / (m * n_tasks)] * m
        for name, per_task in kept.items():
            col = torch.zeros(m, dtype=torch.float64)
            for num, den in per_task[t]:
                f = torch.zeros(m, dtype=torch.float64).index_add_(0, index, num.double())
                d = torch.zeros(m, dtype=torch.float64).index_add_(0, index, den.double())
                total = float(d.sum())
                r = float(f.sum()) / total
                col += (f - r * d) / total + r / m
            columns[name] += (col / (len(per_task[t]) * n_tasks)).tolist()
    estimators = {name: Ratio(num={name: 1.0}, den={"weight": 1.0}) for name in kept}
    return Units(unit="text", ids=ids, strata=strata, columns=columns, metrics=estimators)
