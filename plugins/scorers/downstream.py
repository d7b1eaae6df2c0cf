"""Downstream scorer: the model's next-token loss with the SAE's reconstruction spliced in.

For the first ceil(tokens / T) evaluation contexts [n, T], three forward passes of the model:
clean; with the activations at the hook point replaced by the SAE's reconstruction at every
non-special position (BOS/EOS/PAD keep their original activation: Gemma's BOS activations are
huge outliers no SAE is trained on); and with the hook point zero-ablated at every position
(special ones included, as SAEBench does). Losses are counted where position t predicts token
t+1 and neither t nor t+1 is special. With p the softmax of the logits (computed in float32, a
chunk of rows at a time, and summed in float64: float64 log-softmax over a 262k vocabulary cost
more than the model's three forward passes):

- ``ce_clean``, ``ce_sae``, ``ce_zero``: mean over counted positions of −log p(token t+1)
- ``kl_sae``, ``kl_zero``: mean over counted positions of Σ_v p_clean (log p_clean − log p_new)
- ``ce_loss_score`` = (ce_zero − ce_sae) / (ce_zero − ce_clean)  (1: the SAE loses nothing)
- ``delta_lm_loss`` = ce_sae − ce_clean
- ``kl_score`` = (kl_zero − kl_sae) / kl_zero
- ``tokens``: the number of counted positions.

A score whose denominator is 0 (or a loss that is not finite) is None.

Uncertainty (see saebench.uncertainty): the five sums and the count are kept per context, and
each metric is recomputed from the resampled totals: ce_loss_score = (Σce_zero − Σce_sae) /
(Σce_zero − Σce_clean), a ratio of resampled sums (never of separately resampled means).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from pydantic import Field
from torch import Tensor

import saebench
from saebench.errors import ShapeError
from saebench.metrics import ratio
from saebench.uncertainty import Ratio, Units

SUMS = ("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero")
#: how each metric is recomputed from per-context sums (``count``: the counted positions)
ESTIMATORS = {
    "ce_loss_score": Ratio(num={"ce_zero": 1.0, "ce_sae": -1.0}, den={"ce_zero": 1.0, "ce_clean": -1.0}),
    "kl_score": Ratio(num={"kl_zero": 1.0, "kl_sae": -1.0}, den={"kl_zero": 1.0}),
    "delta_lm_loss": Ratio(num={"ce_sae": 1.0, "ce_clean": -1.0}, den={"count": 1.0}),
    **{name: Ratio(num={name: 1.0}, den={"count": 1.0}) for name in SUMS},
}

ROWS_PER_CHUNK = 256  # rows of [*, vocab] log-probabilities held at once


class DownstreamScorer(saebench.Scorer):
    """CE loss score, delta LM loss and KL score with the SAE spliced into the model."""

    name = "downstream"
    needs_model = True
    headline = (
        saebench.Metric("ce_loss_score"),
        saebench.Metric("kl_score"),
        saebench.Metric("delta_lm_loss", higher_is_better=False),
    )

    class Options(saebench.Options):
        tokens: int = Field(
            4096, ge=1, description="evaluation tokens: the first ceil(tokens / context_length) contexts"
        )
        batch_contexts: int = Field(8, ge=1, description="contexts per forward pass")

    @torch.no_grad()
    def score(self, sae: saebench.SAE, inputs: saebench.EvalInputs) -> saebench.ScoreResult:
        adapter = inputs.model(self.name)
        tokens = inputs.tokens
        if tokens.ndim != 2:
            raise ShapeError(f"downstream expects tokens [contexts, context_length], got {list(tokens.shape)}")
        n_ctx, T = tokens.shape
        use = min(n_ctx, math.ceil(self.options.tokens / T)) if T > 0 else 0
        tokens = tokens[:use]
        hp = inputs.hookpoint

        per_context = {k: torch.zeros(use, dtype=torch.float64) for k in (*SUMS, "count")}
        counted_total = 0
        replaced_total = 0
        for start in range(0, use, self.options.batch_contexts):
            tok = tokens[start : start + self.options.batch_contexts]
            keep = ~adapter.special_mask(tok).to(device="cpu", dtype=torch.bool)
            if keep.shape != tok.shape:
                raise ShapeError(f"special_mask gave {list(keep.shape)} for tokens {list(tok.shape)}")
            counted = keep[:, :-1] & keep[:, 1:]  # predicting t+1 from t, neither special
            targets = tok[:, 1:][counted].to(torch.int64)
            replaced_total += int(keep.sum())
            if targets.numel() == 0:
                continue
            counted_total += targets.numel()
            row_context = torch.nonzero(counted)[:, 0] + start  # row-major, as _rows orders the rows

            def add(name: str, values: Tensor, rows: Tensor = row_context) -> None:
                per_context[name].index_add_(0, rows, values)

            add("count", torch.ones(targets.numel(), dtype=torch.float64))
            clean = _rows(adapter.logits(tok), counted)
            add("ce_clean", _cross_entropy(clean, targets))
            for key, fn in (("sae", _splice(sae, keep)), ("zero", torch.zeros_like)):
                new = _rows(adapter.logits(tok, replace={hp: fn}), counted)
                ce, kl = _ce_kl(clean, new, targets)
                add(f"ce_{key}", ce)
                add(f"kl_{key}", kl)
                del new

        sums = {k: float(per_context[k].sum()) for k in SUMS}
        raw = {k: _finite_or_none(v / counted_total) if counted_total else None for k, v in sums.items()}
        ce_clean, ce_sae, ce_zero, kl_sae, kl_zero = (
            raw[k] for k in ("ce_clean", "ce_sae", "ce_zero", "kl_sae", "kl_zero")
        )
        ce_ok, kl_ok = None not in (ce_clean, ce_sae, ce_zero), None not in (kl_sae, kl_zero)
        metrics: dict[str, float | None] = {
            "ce_loss_score": ratio(ce_zero - ce_sae, ce_zero - ce_clean) if ce_ok else None,
            "delta_lm_loss": ce_sae - ce_clean if None not in (ce_clean, ce_sae) else None,
            "kl_score": ratio(kl_zero - kl_sae, kl_zero) if kl_ok else None,
            **raw,
            "tokens": counted_total,
        }
        details = {
            "contexts": use,
            "context_length": T,
            "replaced_positions": replaced_total,
            "zero_ablation": "all positions, special ones included",
        }
        return saebench.ScoreResult(metrics=metrics, details=details, units=_units(per_context))


def _units(per_context: dict[str, Tensor]) -> Units | None:
    keep = torch.nonzero(per_context["count"] > 0).flatten()
    if keep.numel() == 0:
        return None
    columns = {k: v[keep].tolist() for k, v in per_context.items()}
    return Units(unit="context", ids=keep.tolist(), columns=columns, metrics=dict(ESTIMATORS))


def _splice(sae: saebench.SAE, keep: Tensor) -> Callable[[Tensor], Tensor]:
    """Replacement for the hook point's output [b, T, d]: the SAE's reconstruction where ``keep``."""

    def replace(out: Tensor) -> Tensor:
        if out.shape[:2] != keep.shape:
            raise ShapeError(f"hook point output {list(out.shape)} does not match tokens {list(keep.shape)}")
        mask = keep.to(out.device)
        new = out.clone()
        x = out[mask]
        if x.shape[0]:
            values, indices = sae.encode_sparse(x.to(torch.float32))
            new[mask] = sae.decode_sparse(values, indices).to(device=out.device, dtype=out.dtype)
        return new

    return replace


def _rows(logits: Tensor, counted: Tensor) -> Tensor:
    """The logits [m, vocab] at the counted positions (t < T−1 where t and t+1 are not special)."""
    return logits[:, :-1][counted.to(logits.device)].to("cpu")


def _cross_entropy(logits: Tensor, targets: Tensor) -> Tensor:
    """−log p(target) per row (float64), a chunk of rows at a time."""
    out = torch.empty(logits.shape[0], dtype=torch.float64)
    for i in range(0, logits.shape[0], ROWS_PER_CHUNK):
        lp = torch.log_softmax(logits[i : i + ROWS_PER_CHUNK].float(), dim=-1)
        out[i : i + ROWS_PER_CHUNK] = -lp.gather(1, targets[i : i + ROWS_PER_CHUNK, None])[:, 0].double()
    return out


def _ce_kl(clean: Tensor, new: Tensor, targets: Tensor) -> tuple[Tensor, Tensor]:
    """(−log p_new(target), KL(p_clean ‖ p_new)) per row (float64), a chunk of rows at a time."""
    ce = torch.empty(clean.shape[0], dtype=torch.float64)
    kl = torch.empty(clean.shape[0], dtype=torch.float64)
    for i in range(0, clean.shape[0], ROWS_PER_CHUNK):
        lp_c = torch.log_softmax(clean[i : i + ROWS_PER_CHUNK].float(), dim=-1)
        lp_n = torch.log_softmax(new[i : i + ROWS_PER_CHUNK].float(), dim=-1)
        ce[i : i + ROWS_PER_CHUNK] = -lp_n.gather(1, targets[i : i + ROWS_PER_CHUNK, None])[:, 0].double()
        p_c = lp_c.exp()
        kl[i : i + ROWS_PER_CHUNK] = torch.where(p_c > 0, p_c * (lp_c - lp_n), 0.0).sum(dim=-1, dtype=torch.float64)
    return ce, kl


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


@saebench.hookimpl
def register_scorers(register):
    register(DownstreamScorer)
