"""Sparsity scorer: how many latents fire per token, and how often each latent fires.

Definitions, over the evaluated tokens (special positions already removed by the runner):

- ``l0``: mean over tokens of the number of active latents (value != 0; a TopK latent that the
  ReLU zeroes is not active, nor is encode_sparse's padding).
- ``dead_fraction``: fraction of latents active on no evaluated token.
- ``dense_fraction``: fraction of latents active on more than 10% of the tokens (strictly);
  ``dense_fraction_1pct``: on more than 1%.
- ``tokens``: number of tokens evaluated.

Uncertainty (see saebench.uncertainty): ``l0`` is resampled over whole contexts as Σ active /
Σ tokens. ``dead_fraction`` has no interval: a bootstrap resample holds about 63% of the distinct
contexts, so latents that fire in a few contexts drop out of it and the resampled fraction sits
above the measured one (on the quickstart its "95% interval" did not contain the value); the dense
fractions threshold each latent's token frequency, which per-context sums cannot recompute.

Details: ``frequency_histogram`` holds log10(feature density) of the latents that fire, in
fixed bins of width 0.25 from the multiple of 0.25 at or below log10(1/tokens) up to 0 (the last
bin includes density 1; numpy.histogram's convention otherwise: [a, b)); dead latents, whose
log10 density is -inf, are counted separately (``dead``). ``firing_counts`` lists every latent's
count when d_sae <= 16384 (about 100 kB of JSON) and is None above that, where
``firing_count_quantiles`` and ``top_latents`` (the 20 most frequent, as [latent, count]) still
summarise the distribution.
"""

from __future__ import annotations

import math

import numpy as np
import torch

import saebench
from saebench.metrics import ContextSums, StreamOptions, encoded_batches
from saebench.uncertainty import Ratio

#: above this many latents the full per-latent count list is left out of the details
FULL_COUNTS_MAX_LATENTS = 16384
HISTOGRAM_BIN_WIDTH = 0.25  # in log10 units; a power of two, so the edges are exact
TOP_LATENTS = 20
DEAD_NO_INTERVAL = (
    "a count of latents that never fire: a bootstrap resample sees ~63% of the contexts, so the "
    "resampled fraction is biased upward and its interval would not cover the value"
)


class SparsityScorer(saebench.Scorer):
    """L0, dead and dense latent fractions, and the latent frequency histogram."""

    name = "sparsity"
    headline = (
        saebench.Metric("l0", higher_is_better=None, plot=False, axis=True, label="L0 (active latents per token)"),
        saebench.Metric("dead_fraction", higher_is_better=False, plot=False, no_interval=DEAD_NO_INTERVAL),
    )

    Options = StreamOptions
    handles_transcoders = True  # latents only: a transcoder's are those of the hook point it reads

    @torch.no_grad()
    def score(self, sae: saebench.SAE, inputs: saebench.EvalInputs) -> saebench.ScoreResult:
        d_sae = sae.cfg.d_sae
        counts: torch.Tensor | None = None
        n_tokens = 0
        active_total = 0
        by_context = ContextSums(inputs)
        for x, parts in encoded_batches(sae, inputs, self.options.batch_tokens, self.options.max_tokens):
            per_row, fired = [], []
            for _, values, indices in parts:  # row ranges, each padded to its own widest row
                active = values != 0
                per_row.append(active.sum(dim=1))
                fired.append(indices[active])
            active_per_row = torch.cat(per_row)
            n_tokens += x.shape[0]
            active_total += int(active_per_row.sum())
            batch_counts = torch.bincount(torch.cat(fired), minlength=d_sae)
            counts = batch_counts if counts is None else counts + batch_counts
            by_context.add(x.shape[0], active=active_per_row, tokens=torch.ones(x.shape[0]))

        if n_tokens == 0 or counts is None:
            metrics = {k: None for k in ("l0", "dead_fraction", "dense_fraction", "dense_fraction_1pct")}
            return saebench.ScoreResult(metrics={**metrics, "tokens": 0}, details={"d_sae": d_sae})

        c = counts.cpu().numpy().astype(np.int64)
        # integer comparisons: count / n > 0.1  <=>  10 * count > n (no rounding at the boundary)
        metrics = {
            "l0": active_total / n_tokens,
            "dead_fraction": float(np.mean(c == 0)),
            "dense_fraction": float(np.mean(10 * c > n_tokens)),
            "dense_fraction_1pct": float(np.mean(100 * c > n_tokens)),
            "tokens": n_tokens,
        }
        details = {
            "d_sae": d_sae,
            "dead_latents": int(np.sum(c == 0)),
            "dense_latents": int(np.sum(10 * c > n_tokens)),
            "frequency_histogram": frequency_histogram(c, n_tokens),
            "firing_count_quantiles": _quantiles(c),
            "top_latents": _top_latents(c),
            "firing_counts": c.tolist() if d_sae <= FULL_COUNTS_MAX_LATENTS else None,
        }
        units = by_context.units({"l0": Ratio(num={"active": 1.0}, den={"tokens": 1.0})}, weight="tokens")
        return saebench.ScoreResult(metrics=metrics, details=details, units=units)


def frequency_histogram(counts: np.ndarray, n_tokens: int) -> dict:
    """Histogram of log10(count / n_tokens) over latents with count > 0; dead latents counted apart."""
    w = HISTOGRAM_BIN_WIDTH
    lowest = math.floor(math.log10(1.0 / n_tokens) / w)  # in bins; log10 of the smallest non-zero density
    edges = np.arange(lowest, 1) * w  # integer multiples of 0.25: exact
    if len(edges) < 2:  # n_tokens == 1: every live latent has density 1
        edges = np.array([-w, 0.0])
    alive = counts[counts > 0]
    log_density = np.log10(alive / n_tokens)
    hist, _ = np.histogram(log_density, bins=edges)
    return {
        "log10_density_edges": edges.tolist(),
        "counts": hist.astype(int).tolist(),
        "dead": int(np.sum(counts == 0)),
        "alive": int(alive.size),
        "tokens": n_tokens,
    }


def _quantiles(counts: np.ndarray) -> dict:
    qs = {"min": 0.0, "p10": 0.1, "p50": 0.5, "p90": 0.9, "p99": 0.99, "max": 1.0}
    return {name: float(np.quantile(counts, q)) for name, q in qs.items()} | {"mean": float(counts.mean())}


def _top_latents(counts: np.ndarray) -> list[list[int]]:
    order = np.argsort(-counts, kind="stable")[:TOP_LATENTS]
    return [[int(i), int(counts[i])] for i in order if counts[i] > 0]


@saebench.hookimpl
def register_scorers(register):
    register(SparsityScorer)
