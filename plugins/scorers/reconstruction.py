"""Reconstruction scorer: how well x̂ = sae(x) reproduces the activations x.

Over the N evaluated tokens (special positions already removed), with d = d_in, x̄ the mean
activation vector over those tokens and every sum accumulated in float64:

- ``explained_variance`` = 1 − Σ‖x − x̂‖² / Σ‖x − x̄‖²  (the correct form; x̄ over all N tokens)
- ``fvu`` = Σ‖x − x̂‖² / Σ‖x − x̄‖²  (fraction of variance unexplained, OpenAI's normalised MSE)
- ``mse`` = Σ‖x − x̂‖² / (N·d): the mean over all N·d elements. SAELens's evals report
  ``mse`` as the mean over tokens of ‖x − x̂‖² (summed over d, as its training loss is): that
  is d times this value, and is in the details as ``sse_per_token``.
- ``cosine`` = mean over tokens of x·x̂ / (‖x‖‖x̂‖), over the tokens where ‖x‖ > 0 and ‖x̂‖ > 0
  (undefined elsewhere; how many were left out is ``cosine_undefined_tokens`` in the details).
- ``l2_ratio`` = mean over tokens of ‖x̂‖ / ‖x‖, over the tokens where ‖x‖ > 0.
- ``relative_reconstruction_bias`` = Σ‖x̂‖² / Σ x·x̂  (Gao et al. 2024's γ; 1 when unbiased,
  below 1 when the SAE shrinks its outputs).
- ``tokens`` = N.

Σ‖x − x̄‖² is computed in one pass as Σ‖x − c‖² − N‖x̄ − c‖², with c the first batch's mean
(a shift that keeps large common offsets from cancelling catastrophically).

Uncertainty (see saebench.uncertainty): every metric is a ratio of sums over tokens, resampled
over whole contexts from per-context sums (Σ‖x − x̂‖², Σ‖x − x̄‖², Σ‖x̂‖², Σ x·x̂, the cosine and
L2-ratio sums and counts). Σ‖x − x̄‖² per context uses x̄ of all evaluated tokens (a second pass
over the activations, without encoding): the bootstrap keeps x̄ fixed, whose re-estimation would
change the total by a relative O(1 / contexts).

Test-time k (option ``ks``; Gao et al. 2024, arXiv:2406.04093, section 5.3 "Progressive recovery"): for a TopK SAE
(one whose latents are a per-token top-k, ``topk_per_token``), ``fvu_at_k{K}`` for each K in ``ks`` is
the FVU above when the SAE encodes with TopK(K) in place of its trained TopK(k): each token keeps its K
largest pre-activations (then the ReLU), decoded as usual, over the same tokens and the same
Σ‖x − x̄‖². ``fvu_at_k{k}`` equals ``fvu``. A TopK SAE that overfits to its k gets worse above it; one
trained with Multi-TopK (``train: multi_topk``) keeps improving. Any other SAE (ReLU, JumpReLU, a
BatchTopK-style one with a threshold at inference) has no per-token k to change: its ``fvu_at_k{K}``
are None and ``ks_skipped`` in the details says why (so a matrix may pair the option with SAEs of
several architectures); a K larger than d_sae is skipped the same way. The top-K encoding is one
more pass of the encoder per batch (at the largest K, whose sorted rows give every smaller K).

Matryoshka SAEs (those with ``prefixes``, e.g. ``matryoshka_batchtopk``): ``fvu_by_prefix`` in the
details maps each nested width m to the FVU when only latents 0..m−1 of the SAE's encoding decode
(the last, m = d_sae, is ``fvu``), over the same tokens and Σ‖x − x̄‖².

Transcoders (``inputs.targets`` given, or ``sae.is_transcoder``): x above is the target, the activations
at ``inputs.hookpoint_out`` for the same tokens (``inputs.targets``), and x̂ the transcoder's output
f·W_dec + b_dec + x_in·W_skip (``sae.transcode`` of the activations x_in it reads; no skip term
without W_skip), with d = d_out; ``fvu_at_k{K}`` and ``fvu_by_prefix`` decode the same way, skip
included. The details add ``hookpoint_out``, ``d_in`` and ``d_out``.

Details: ``saebench_0_6_explained_variance`` is what sae-bench 0.6.0's core eval reports as
``explained_variance`` for these tokens evaluated as one batch (its default,
n_eval_sparsity_variance_batches=1, or equal-sized batches):
1 − E‖x − x̂‖² / (E‖x‖² − (E‖x‖²/d)²). Its denominator squares the mean of x² over dimensions
instead of subtracting ‖E[x]‖², so it is not a variance; kept for comparison with its tables.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field

import torch
from pydantic import Field, field_validator
from torch import Tensor

import saebench
from saebench import kernel
from saebench.metrics import ContextSums, StreamOptions, activation_batches, encoded_batches, ratio
from saebench.uncertainty import Ratio

#: how each metric is recomputed from per-context sums
ESTIMATORS = {
    "explained_variance": Ratio(num={"tss": 1.0, "sse": -1.0}, den={"tss": 1.0}),
    "fvu": Ratio(num={"sse": 1.0}, den={"tss": 1.0}),
    "cosine": Ratio(num={"cos_sum": 1.0}, den={"cos_n": 1.0}),
    "l2_ratio": Ratio(num={"ratio_sum": 1.0}, den={"ratio_n": 1.0}),
    "relative_reconstruction_bias": Ratio(num={"xhat_sq": 1.0}, den={"dot": 1.0}),
}

METRICS = ("explained_variance", "fvu", "mse", "cosine", "l2_ratio", "relative_reconstruction_bias")


class ReconstructionOptions(StreamOptions):
    ks: list[int] | None = Field(
        None,
        min_length=1,
        description="TopK SAEs: also report fvu_at_k{K}, the FVU when encoding with top-K instead of the trained k",
    )

    @field_validator("ks")
    @classmethod
    def _positive_and_distinct(cls, ks: list[int] | None) -> list[int] | None:
        if ks is not None and any(k < 1 for k in ks):
            raise ValueError(f"ks are latents kept per token, each at least 1: {ks}")
        if ks is not None and len(set(ks)) != len(ks):
            raise ValueError(f"ks lists a k more than once: {ks}")
        return ks


class ReconstructionScorer(saebench.Scorer):
    """Explained variance, FVU, MSE, cosine similarity, L2 ratio and relative reconstruction bias."""

    name = "reconstruction"
    headline = (
        saebench.Metric("explained_variance"),
        saebench.Metric("mse", higher_is_better=False),
        saebench.Metric("cosine"),
    )

    Options = ReconstructionOptions
    options: ReconstructionOptions
    handles_transcoders = True  # a transcoder's output against the activations it writes (module docstring)

    @torch.no_grad()
    def score(self, sae: saebench.SAE, inputs: saebench.EvalInputs) -> saebench.ScoreResult:
        ks, skipped = _test_time_ks(sae, self.options.ks or [])
        sums = _Sums(by_context=ContextSums(inputs), ks=ks)
        prefixes = getattr(sae, "prefixes", None) or []
        prefix_sse = dict.fromkeys(prefixes, 0.0)
        targets = None  # an SAE's target is its input; a transcoder's, the activations where it writes
        if inputs.targets is not None or sae.is_transcoder:
            targets = activation_batches(sae, inputs, self.options.batch_tokens, self.options.max_tokens, targets=True)
        for x_in, parts in encoded_batches(sae, inputs, self.options.batch_tokens, self.options.max_tokens):
            decoded: list[list[Tensor]] = [[] for _ in range(1 + len(prefixes))]  # x̂, then x̂_m per prefix
            for _, values, indices in parts:  # row ranges, each padded to its own widest row
                decoded[0].append(sae.decode_sparse(values, indices))
                for j, m in enumerate(prefixes, 1):
                    decoded[j].append(_decode_prefix(sae, values, indices, m))
            x_hat = torch.cat(decoded[0]).to(torch.float64)
            x, skip = _target(sae, x_in, targets, x_hat.device)
            resid = x if skip is None else x - skip  # what the decoder alone reproduces
            sums.add(x, x_hat if skip is None else x_hat + skip, _sse_at_ks(sae, x_in, resid, ks))
            for j, m in enumerate(prefixes, 1):
                prefix_sse[m] += float((resid - torch.cat(decoded[j]).to(torch.float64)).square().sum())
        result = sums.result(sae.d_out)
        if targets is not None:
            result.details.update(hookpoint_out=inputs.hookpoint_out, d_in=sae.cfg.d_in, d_out=sae.d_out)
        if prefixes:  # a details entry, not a metric: only Matryoshka SAEs have it, each with its own widths
            tss = result.details.get("total_variance_per_token", 0.0) * sums.n
            result.details["fvu_by_prefix"] = {str(m): ratio(v, tss) for m, v in prefix_sse.items()}
        if self.options.ks:
            for k in self.options.ks:
                result.metrics.setdefault(f"fvu_at_k{k}", None)
            result.details["k"] = sae.cfg.k if sae.topk_per_token else None
            result.details["ks_skipped"] = {str(k): why for k, why in skipped.items()}
        if sums.by_context.active and sums.n:
            result.units = self._units(sae, inputs, sums)
        return result

    def _units(self, sae: saebench.SAE, inputs: saebench.EvalInputs, sums: _Sums):
        assert sums.shift is not None and sums.sum_dx is not None
        mean = sums.shift + sums.sum_dx / sums.n
        tss = ContextSums(inputs)
        for x in activation_batches(sae, inputs, self.options.batch_tokens, self.options.max_tokens, targets=True):
            tss.add(x.shape[0], tss=(x.to(device=mean.device, dtype=torch.float64) - mean).square().sum(dim=1))
        d = sae.d_out
        estimators = {**ESTIMATORS, "mse": Ratio(num={"sse": 1.0}, den={"tokens": float(d)})}
        for k in sums.ks:
            estimators[f"fvu_at_k{k}"] = Ratio(num={f"sse_k{k}": 1.0}, den={"tss": 1.0})
        return sums.by_context.units(estimators, weight="tokens", tss=tss.sums["tss"])


def _target(
    sae: saebench.SAE, x_in: Tensor, targets: Iterator[Tensor] | None, device: torch.device
) -> tuple[Tensor, Tensor | None]:
    """(target, skip) in float64 for one batch x_in: x_in itself and None for an SAE; for a transcoder the next
    batch of ``targets`` and x_in·W_skip (None without a skip)."""
    if targets is None:
        return x_in.to(device=device, dtype=torch.float64), None
    y = next(targets, None)
    if y is None or y.shape[0] != x_in.shape[0]:
        rows = 0 if y is None else y.shape[0]
        raise saebench.ShapeError(f"a batch of {x_in.shape[0]} activation rows has {rows} target rows")
    skip = sae.skip_connection(x_in)
    return y.to(device=device, dtype=torch.float64), None if skip is None else skip.to(device, torch.float64)


def _test_time_ks(sae: saebench.SAE, ks: list[int]) -> tuple[list[int], dict[int, str]]:
    """The ks this SAE can encode with, and why the others are skipped."""
    if not ks:
        return [], {}
    if not sae.topk_per_token or sae.cfg.k is None:
        why = f"a {sae.arch} SAE has no per-token top-k to change at test time (ks is for TopK SAEs)"
        return [], dict.fromkeys(ks, why)
    d_sae = sae.cfg.d_sae
    return [k for k in ks if k <= d_sae], {k: f"k={k} is larger than d_sae={d_sae}" for k in ks if k > d_sae}


def _sse_at_ks(sae: saebench.SAE, x_in: Tensor, x: Tensor, ks: list[int]) -> dict[int, Tensor]:
    """Per-token ‖x − x̂_K‖² [n] (float64) for each K, x̂_K decoded from the SAE's top-K encoding of ``x_in``.

    One encoder pass at the largest K with each row in decreasing order: its first K columns are the top K."""
    if not ks:
        return {}
    values, indices = kernel.encode_topk(sae, x_in.to(sae.W_enc.device), max(ks), sorted=True)
    out = {}
    for k in ks:
        x_hat = sae.decode_sparse(values[:, :k].contiguous(), indices[:, :k].contiguous()).to(torch.float64)
        out[k] = (x - x_hat).square().sum(dim=1)
    return out


def _decode_prefix(sae: saebench.SAE, values: Tensor, indices: Tensor, m: int) -> Tensor:
    """x̂_m, decoded from the latents below ``m`` only (a Matryoshka prefix)."""
    return sae.decode_sparse(torch.where(indices < m, values, torch.zeros_like(values)), indices)


@dataclass
class _Sums:
    """The float64 sums over the evaluated tokens that every metric is computed from."""

    n: int = 0
    shift: Tensor | None = None  # c: the first batch's mean
    sum_dx: Tensor | None = None  # Σ (x − c), [d]
    sum_dx_sq: float = 0.0  # Σ ‖x − c‖²
    sum_x_sq: float = 0.0  # Σ ‖x‖²
    sse: float = 0.0  # Σ ‖x − x̂‖²
    sum_xhat_sq: float = 0.0  # Σ ‖x̂‖²
    sum_dot: float = 0.0  # Σ x·x̂
    cos_sum: float = 0.0  # Σ cos(x, x̂) over the tokens where ‖x‖ > 0 and ‖x̂‖ > 0
    cos_n: int = 0
    ratio_sum: float = 0.0  # Σ ‖x̂‖ / ‖x‖ over the tokens where ‖x‖ > 0
    ratio_n: int = 0
    by_context: ContextSums | None = None  # the same sums per context, for the bootstrap
    ks: list[int] = field(default_factory=list)  # test-time top-K encodings (option ks)
    sse_k: dict[int, float] = field(default_factory=dict)  # Σ ‖x − x̂_K‖² per K

    def add(self, x: Tensor, x_hat: Tensor, sse_k: dict[int, Tensor] | None = None) -> None:
        """Add one batch: x and x̂ [n, d], float64 on the same device; ``sse_k`` per-token ‖x − x̂_K‖² per K."""
        sse_k = sse_k or {}
        for k, v in sse_k.items():
            self.sse_k[k] = self.sse_k.get(k, 0.0) + float(v.sum())
        if self.shift is None:
            self.shift = x.mean(dim=0)
            self.sum_dx = torch.zeros_like(self.shift)
        dx = x - self.shift
        self.sum_dx += dx.sum(dim=0)
        self.sum_dx_sq += float(dx.square().sum())
        x_norm_sq = x.square().sum(dim=1)
        xhat_norm_sq = x_hat.square().sum(dim=1)
        dot = (x * x_hat).sum(dim=1)
        self.n += x.shape[0]
        self.sum_x_sq += float(x_norm_sq.sum())
        self.sse += float((x - x_hat).square().sum())
        self.sum_xhat_sq += float(xhat_norm_sq.sum())
        self.sum_dot += float(dot.sum())
        x_norm, xhat_norm = x_norm_sq.sqrt(), xhat_norm_sq.sqrt()
        ok = (x_norm > 0) & (xhat_norm > 0)
        self.cos_sum += float((dot[ok] / (x_norm[ok] * xhat_norm[ok])).sum())
        self.cos_n += int(ok.sum())
        has_x = x_norm > 0
        l2 = torch.where(has_x, xhat_norm / torch.where(has_x, x_norm, 1.0), 0.0)
        self.ratio_sum += float(l2.sum())
        self.ratio_n += int(has_x.sum())
        if self.by_context is not None and self.by_context.active:
            cos = torch.where(ok, dot / torch.where(ok, x_norm * xhat_norm, 1.0), 0.0)
            self.by_context.add(
                x.shape[0],
                tokens=torch.ones(x.shape[0]),
                sse=(x - x_hat).square().sum(dim=1),
                xhat_sq=xhat_norm_sq,
                dot=dot,
                cos_sum=cos,
                cos_n=ok,
                ratio_sum=l2,
                ratio_n=has_x,
                **{f"sse_k{k}": v for k, v in sse_k.items()},
            )

    def result(self, d: int) -> saebench.ScoreResult:
        """The metrics and details of the module docstring from the sums (``d`` = d_in)."""
        n = self.n
        if n == 0:
            return saebench.ScoreResult(metrics={**dict.fromkeys(METRICS), "tokens": 0}, details={"d_in": d})
        mean_dx = self.sum_dx / n
        total_ss = max(self.sum_dx_sq - n * float(mean_dx.square().sum()), 0.0)  # Σ‖x − x̄‖²
        fvu = ratio(self.sse, total_ss)
        metrics = {
            "explained_variance": None if fvu is None else 1.0 - fvu,
            "fvu": fvu,
            "mse": self.sse / (n * d),
            "cosine": ratio(self.cos_sum, self.cos_n),
            "l2_ratio": ratio(self.ratio_sum, self.ratio_n),
            "relative_reconstruction_bias": ratio(self.sum_xhat_sq, self.sum_dot),
            "tokens": n,
            **{f"fvu_at_k{k}": ratio(self.sse_k.get(k, 0.0), total_ss) for k in self.ks},
        }
        mean_sq_norm = self.sum_x_sq / n
        sb06 = ratio(self.sse / n, mean_sq_norm - (mean_sq_norm / d) ** 2)
        details = {
            "d_in": d,
            "sse_per_token": self.sse / n,
            "total_variance_per_token": total_ss / n,
            "mean_sq_norm": mean_sq_norm,
            "cosine_undefined_tokens": n - self.cos_n,
            "l2_ratio_undefined_tokens": n - self.ratio_n,
            "saebench_0_6_explained_variance": None if sb06 is None else 1.0 - sb06,
        }
        return saebench.ScoreResult(metrics=metrics, details=details)


@saebench.hookimpl
def register_scorers(register):
    register(ReconstructionScorer)
