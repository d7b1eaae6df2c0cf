"""Helpers shared by the scorers: the stream of encoded activation batches, ratios, AUC, binary metrics.

Scorers stream over ``inputs.activations(batch_tokens)`` and accumulate in float64, so their
memory is bounded by one batch whatever the number of evaluation tokens.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence

import torch
from pydantic import Field
from torch import Tensor

from saebench import kernel
from saebench.errors import ShapeError
from saebench.interfaces import EvalInputs
from saebench.options import Options
from saebench.sae import SAE
from saebench.uncertainty import Ratio, Units


class StreamOptions(Options):
    """The options of every scorer that streams over the cached activations."""

    batch_tokens: int = Field(4096, ge=1, description="tokens encoded per batch")
    max_tokens: int | None = Field(None, ge=1, description="evaluate at most this many tokens (default: all)")


def activation_batches(
    sae: SAE, inputs: EvalInputs, batch_tokens: int, max_tokens: int | None = None, *, targets: bool = False
) -> Iterator[Tensor]:
    """The evaluation activations [n, d_in] in batches of (about) ``batch_tokens``, at most ``max_tokens`` in all.

    Empty batches are skipped; a batch of the wrong width raises ShapeError naming the hook point. ``targets``:
    what the SAE's output is compared with instead, batch for batch: a transcoder's ``inputs.targets``
    [n, d_out], an SAE's activations themselves.
    """
    seen = 0
    hookpoint, width, stream = inputs.hookpoint, sae.cfg.d_in, inputs.activations
    if targets and (inputs.targets is not None or sae.is_transcoder):
        if inputs.targets is None:
            raise ShapeError("a transcoder is compared with the activations it writes: inputs.targets is None")
        hookpoint, width, stream = str(inputs.hookpoint_out), sae.d_out, inputs.targets
    it = stream(batch_tokens)
    try:
        for x in it:
            if max_tokens is not None:
                if seen >= max_tokens:
                    break
                x = x[: max_tokens - seen]
            if x.ndim != 2 or x.shape[1] != width:
                raise ShapeError(
                    f"activations at {hookpoint} have shape {list(x.shape)}, the SAE expects [tokens, {width}]"
                )
            if x.shape[0] == 0:
                continue
            seen += x.shape[0]
            yield x
    finally:
        close = getattr(it, "close", None)
        if close is not None:
            close()


def encoded_batches(
    sae: SAE, inputs: EvalInputs, batch_tokens: int, max_tokens: int | None = None
) -> Iterator[tuple[Tensor, Iterator[tuple[slice, Tensor, Tensor]]]]:
    """(x, parts) per batch: x [n, d_in] as given, and its :func:`sparse_parts` (use them before the next batch).

    Call under ``torch.no_grad()`` (the scorers' ``score`` is decorated with it) so the kernel runs.
    """
    for x in activation_batches(sae, inputs, batch_tokens, max_tokens):
        yield x, sparse_parts(sae, x)


def sparse_parts(sae: SAE, x: Tensor) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """``sae.encode_sparse(x)`` (x [n, d_in]) as (rows, values, indices) of consecutive row ranges, each
    padded to its own widest row (:func:`saebench.kernel.encode_sparse_parts`): one token that fires
    thousands of latents no longer pads a whole batch. With autograd on, one part: encode_sparse's."""
    if torch.is_grad_enabled():
        yield slice(0, x.shape[0]), *sae.encode_sparse(x)
    else:
        yield from kernel.encode_sparse_parts(sae, x.to(sae.W_enc.device))


class ContextSums:
    """Per-context sums of per-token statistics, for the bootstrap over whole contexts.

    Feed it the batches in the order ``inputs.activations`` yields them: ``add(n, name=values[n])``
    assigns the next ``n`` rows to their contexts (``inputs.token_contexts``). Without token
    contexts (a scorer called outside the runner) it keeps nothing and ``units`` is None.
    """

    def __init__(self, inputs: EvalInputs):
        self.contexts = inputs.token_contexts
        self.n_contexts = int(inputs.tokens.shape[0]) if inputs.tokens.ndim == 2 else 0
        if self.contexts is not None and self.contexts.numel():
            self.n_contexts = max(self.n_contexts, int(self.contexts.max()) + 1)
        self.offset = 0
        self.sums: dict[str, Tensor] = {}

    @property
    def active(self) -> bool:
        return self.contexts is not None

    def add(self, n: int, **columns: Tensor) -> Tensor | None:
        """Add ``n`` rows' values per column; returns those rows' context ids (None when inactive)."""
        if self.contexts is None:
            return None
        ctx = self.contexts[self.offset : self.offset + n]
        if ctx.numel() != n:
            raise ShapeError(f"{self.offset + n} activation rows but token contexts for {self.contexts.numel()}")
        self.offset += n
        for name, values in columns.items():
            total = self.sums.setdefault(name, torch.zeros(self.n_contexts, dtype=torch.float64))
            total.index_add_(0, ctx.to(torch.int64), values.detach().to(device="cpu", dtype=torch.float64).reshape(-1))
        return ctx

    def units(self, metrics: dict[str, Ratio], weight: str, **extra: Tensor) -> Units | None:
        """The contexts with a non-zero ``weight`` column (their evaluated tokens) as Units; ``extra``
        columns are per-context values computed after the pass."""
        if self.contexts is None or weight not in self.sums:
            return None
        keep = torch.nonzero(self.sums[weight] != 0).flatten()
        cols = {k: v[keep].tolist() for k, v in {**self.sums, **extra}.items()}
        return Units(unit="context", ids=keep.tolist(), strata=None, columns=cols, metrics=metrics)


def ratio(num: float, den: float) -> float | None:
    """num / den, or None when the denominator is 0 (or either is not finite): never a made-up number."""
    if den == 0 or not _finite(num) or not _finite(den):
        return None
    value = num / den
    return value if _finite(value) else None


def _finite(v: float) -> bool:
    return v == v and v not in (float("inf"), float("-inf"))


def roc_auc(labels: Sequence[int | bool], scores: Sequence[float]) -> float | None:
    """Area under the ROC curve (the Mann–Whitney U statistic, ties counted as half).

    None when one class is absent: an AUC over one class is undefined, not 0.5.
    """
    import numpy as np
    from scipy.stats import rankdata

    y = np.asarray(labels, dtype=bool)
    s = np.asarray(scores, dtype=np.float64)
    if y.shape != s.shape:
        raise ShapeError(f"{y.size} labels but {s.size} scores", "roc_auc")
    n_pos, n_neg = int(y.sum()), int((~y).sum())
    if n_pos == 0 or n_neg == 0 or not np.isfinite(s).all():
        return None
    ranks = rankdata(s)  # average ranks: ties contribute one half
    return float((ranks[y].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def binary_metrics(labels: Sequence[int | bool], predictions: Sequence[int | bool]) -> dict[str, float | None]:
    """Balanced accuracy, accuracy, precision, recall and F1 of 0/1 predictions against 0/1 labels.

    Balanced accuracy is the mean of the recalls of the two classes present; a ratio whose
    denominator is 0 (no positive prediction, no positive label) is None.
    """
    tp = sum(1 for y, p in zip(labels, predictions, strict=True) if y and p)
    fp = sum(1 for y, p in zip(labels, predictions) if not y and p)
    fn = sum(1 for y, p in zip(labels, predictions) if y and not p)
    tn = sum(1 for y, p in zip(labels, predictions) if not y and not p)
    recall, specificity = ratio(tp, tp + fn), ratio(tn, tn + fp)
    present = [r for r in (recall, specificity) if r is not None]
    precision = ratio(tp, tp + fp)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    return {
        "balanced_accuracy": sum(present) / len(present) if present else None,
        "accuracy": ratio(tp + tn, tp + tn + fp + fn),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }
