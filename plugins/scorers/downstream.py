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

A transcoder reads one hook point and writes another: its output (skip included) replaces the
hook point it writes (``inputs.hookpoint_out``, the MLP's output), computed from its input at the
hook point it reads in the same forward, and the zero ablation is of the hook point written.

Several SAEs (``score_many``, which the runner uses for all SAEs of a model on the same tokens)
share each batch's clean pass and, per hook point written, its zero-ablated pass; each SAE's
spliced pass reruns only the blocks from its hook point on when the adapter can resume
(``ModelAdapter.resume_state``). Each SAE's numbers are those ``score`` gives it alone.

Uncertainty (see saebench.uncertainty): the five sums and the count are kept per context, and
each metric is recomputed from the resampled totals: ce_loss_score = (Σce_zero − Σce_sae) /
(Σce_zero − Σce_clean), a ratio of resampled sums (never of separately resampled means).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

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
    handles_transcoders = True  # the transcoder's output replaces the hook point it writes (the MLP's output)
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
        return self.score_many([sae], [inputs])[0]

    @torch.no_grad()
    def score_many(  # long: one loop over batches, shared by every SAE
        self, saes: Sequence[saebench.SAE], inputs: Sequence[saebench.EvalInputs]
    ) -> list[saebench.ScoreResult]:
        """Every SAE on the same contexts: per batch, one clean pass and, per hook point, one zero-ablated
        pass; then each SAE's spliced pass reruns only the blocks from its hook point on (when the
        adapter can resume), with its KL taken against the kept clean log-probabilities."""
        if not saes:
            return []
        adapter = inputs[0].model(self.name)
        tokens = inputs[0].tokens
        if tokens.ndim != 2:
            raise ShapeError(f"downstream expects tokens [contexts, context_length], got {list(tokens.shape)}")
        if any(not torch.equal(i.tokens, tokens) for i in inputs[1:]):
            raise ShapeError("downstream scores several SAEs together only on the same evaluation tokens")
        n_ctx, T = tokens.shape
        use = min(n_ctx, math.ceil(self.options.tokens / T)) if T > 0 else 0
        tokens = tokens[:use]
        by_written: dict[str, list[int]] = {}  # the hook point each SAE replaces (a transcoder's hookpoint_out)
        for j, one in enumerate(inputs):
            by_written.setdefault(one.hookpoint_out or one.hookpoint, []).append(j)
        sums = [{k: torch.zeros(use, dtype=torch.float64) for k in (*SUMS, "count")} for _ in saes]
        counted_total = replaced_total = 0
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
            rows = torch.nonzero(counted)[:, 0] + start  # row-major, as _rows orders the rows
            clean = _CleanRows(_rows(adapter.logits(tok), counted), targets)
            for j in range(len(saes)):
                sums[j]["count"].index_add_(0, rows, torch.ones(targets.numel(), dtype=torch.float64))
                sums[j]["ce_clean"].index_add_(0, rows, clean.ce)
            states = _States(adapter, tok)
            for hp, members in by_written.items():
                ce, kl = clean.compare(_rows(states.logits({hp: torch.zeros_like}), counted))
                for j in members:
                    sums[j]["ce_zero"].index_add_(0, rows, ce)
                    sums[j]["kl_zero"].index_add_(0, rows, kl)
                for j in members:
                    replace = _splice(saes[j], keep, inputs[j].hookpoint, hp)
                    ce, kl = clean.compare(_rows(states.logits(replace), counted))
                    sums[j]["ce_sae"].index_add_(0, rows, ce)
                    sums[j]["kl_sae"].index_add_(0, rows, kl)
            del states
        details = {
            "contexts": use,
            "context_length": T,
            "replaced_positions": replaced_total,
            "zero_ablation": "all positions, special ones included",
        }
        return [_result(per_context, counted_total, dict(details)) for per_context in sums]


class _States:
    """One batch's resume states, one per hook point it is asked about (None where the adapter cannot resume)."""

    def __init__(self, adapter: saebench.ModelAdapter, tokens: Tensor):
        self.adapter, self.tokens = adapter, tokens
        self.states: dict[str, Any] = {}

    def logits(self, replace: dict[str, Callable[[Tensor], Tensor]]) -> Tensor:
        """Logits with ``replace``, resumed at the block of its first hook point (replacements are in forward order)."""
        first = next(iter(replace))
        if first not in self.states:
            self.states[first] = self.adapter.resume_state(self.tokens, first)
        state = self.states[first]
        if state is None:  # an adapter that cannot resume, or a hook point in the first block: a full forward
            return self.adapter.logits(self.tokens, replace=replace)
        return self.adapter.logits(self.tokens, replace=replace, resume=state)


class _CleanRows:
    """The clean model's log-probabilities at the counted rows, kept for every pass compared with them."""

    def __init__(self, logits: Tensor, targets: Tensor):
        self.targets = targets
        self.logp = torch.empty_like(logits, dtype=torch.float32)
        for i in range(0, logits.shape[0], ROWS_PER_CHUNK):  # in chunks: float32 temporaries stay small
            self.logp[i : i + ROWS_PER_CHUNK] = torch.log_softmax(logits[i : i + ROWS_PER_CHUNK].float(), dim=-1)
        del logits
        self.ce = -self.logp.gather(1, targets[:, None])[:, 0].double()

    def compare(self, new: Tensor) -> tuple[Tensor, Tensor]:
        """(−log p_new(target), KL(p_clean ‖ p_new)) per row (float64), a chunk of rows at a time."""
        ce = torch.empty(new.shape[0], dtype=torch.float64)
        kl = torch.empty(new.shape[0], dtype=torch.float64)
        for i in range(0, new.shape[0], ROWS_PER_CHUNK):
            s = slice(i, i + ROWS_PER_CHUNK)
            lp_c, lp_n = self.logp[s], torch.log_softmax(new[s].float(), dim=-1)
            ce[s] = -lp_n.gather(1, self.targets[s, None])[:, 0].double()
            p_c = lp_c.exp()
            kl[s] = torch.where(p_c > 0, p_c * (lp_c - lp_n), 0.0).sum(dim=-1, dtype=torch.float64)
        return ce, kl


def _result(per_context: dict[str, Tensor], counted_total: int, details: dict) -> saebench.ScoreResult:
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
    return saebench.ScoreResult(metrics=metrics, details=details, units=_units(per_context))


def _units(per_context: dict[str, Tensor]) -> Units | None:
    keep = torch.nonzero(per_context["count"] > 0).flatten()
    if keep.numel() == 0:
        return None
    columns = {k: v[keep].tolist() for k, v in per_context.items()}
    return Units(unit="context", ids=keep.tolist(), columns=columns, metrics=dict(ESTIMATORS))


def _splice(sae: saebench.SAE, keep: Tensor, read: str, write: str) -> dict[str, Callable[[Tensor], Tensor]]:
    """Replacements that put the SAE's output where ``keep`` at ``write``, from its input at ``read`` in the
    same forward: an SAE's reconstruction of the hook point, a transcoder's output of the MLP from its input."""
    seen: dict[str, Tensor] = {}

    def remember(x: Tensor) -> Tensor:
        seen["x"] = x
        return x

    def replace(out: Tensor) -> Tensor:
        if out.shape[:2] != keep.shape:
            raise ShapeError(f"hook point output {list(out.shape)} does not match tokens {list(keep.shape)}")
        x = seen.pop("x", out)
        mask = keep.to(out.device)
        new = out.clone()
        rows = x[mask.to(x.device)]
        if rows.shape[0]:
            new[mask] = sae.transcode(rows.to(torch.float32)).to(device=out.device, dtype=out.dtype)
        return new

    return {write: replace} if write == read else {read: remember, write: replace}


def _rows(logits: Tensor, counted: Tensor) -> Tensor:
    """The logits [m, vocab] at the counted positions (t < T−1 where t and t+1 are not special)."""
    return logits[:, :-1][counted.to(logits.device)].to("cpu")


def _finite_or_none(v: float) -> float | None:
    return v if math.isfinite(v) else None


@saebench.hookimpl
def register_scorers(register):
    register(DownstreamScorer)
