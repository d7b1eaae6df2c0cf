"""Ablation sparsity scorer: how sparse the effect of removing one latent is on the model's next-token logits.

Gao et al. 2024, "Scaling and evaluating sparse autoencoders" (arXiv:2406.04093), section 4.5
"Sparsity of ablation effects": at a token position, ablate one active latent, compare the logits
before and after at that position and the following ones (T = 16 positions "at the ablated index or
later"), subtract at each position the median logit difference over the vocabulary (a shift of
every logit by the same amount leaves the softmax unchanged), concatenate the V·T differences and
report (L1/L2)², the "effective number of vocab tokens affected", divided by V·T: a fraction in
(0, 1], smaller is sparser (1/(V·T): one logit at one position moves; 1: every logit moves by the
same magnitude). The paper found larger k giving sparser effects (its Figure 8, GPT-2 small).

What this scorer computes, for one (model, hook point, SAE) cell:

1. Where latents fire: the cached activations of the first ``contexts`` evaluation contexts
   (special positions excluded, as everywhere) are encoded. A position p is *eligible* when its
   whole window p … p + window − 1 lies inside the context.
2. Which latents: ``latents`` of the latents that fire at an eligible position, drawn uniformly
   without replacement (dead latents and latents seen only near the end of contexts cannot be
   ablated and are never drawn; how many fired is in the details). ``latent_ids`` names them
   instead; one of those that never fires at an eligible position gets no value (None in
   ``per_latent``, counted in ``never_fired``), and is left out of the mean.
3. Where each is ablated: up to ``positions_per_latent`` of its eligible firing positions, drawn
   uniformly without replacement. Draws use ``seed`` (default: the run's seed).
4. The ablation, one latent at one position per row of a batch: with f = the SAE's latents of the
   model's activation x at p, the activation becomes x − (decode(f) − decode(f with latent i set
   to 0)). The SAE's error x − decode(f) is kept (the model runs on its own activation everywhere
   else, and at p loses only latent i's contribution), so the effect measured is the latent's, not
   the reconstruction error's. Only position p of the hook point changes; positions after p change
   through the model's own computation.
5. The effect: d[t, v] = logits_ablated[t, v] − logits_clean[t, v] for the window positions t
   whose token is not special (BOS/EOS/PAD logits are no prediction of text; T' ≤ window of them),
   d[t] −= median_v d[t, v] (numpy's median: the mean of the two middle values for even V), and
   s = (Σ|d|)² / (Σd²) / (V·T'). An ablation that changes no logit (d = 0 after centring, e.g. the
   latent is 0 in the live forward pass though the cache had it active) has no s and is counted in
   ``no_effect``. The clean logits come from the same forward pass (one unablated row of the
   context beside its ablated rows, all cut at the batch's last window end: the model is causal),
   so rounding does not differ between the two and unaffected logits differ by exactly 0.
6. ``sparsity`` = the mean over latents of each latent's mean s over its ablations (each latent
   counts once, however often it was ablated). ``latents`` and ``ablations`` count what was
   scored.

Details: the spread over latents (``std``, ``quantiles``), ``per_latent`` ([latent, its mean s or
None, ablations scored, eligible firing positions]), ``ablation_mean`` (the mean over every
ablation, pooled: a latent ablated at fewer positions weighs less), and counts.

Uncertainty (see saebench.uncertainty): ``sparsity`` is a mean over latents, resampled over the
scored latents (unit "latent", unpaired between SAEs).

Cost: one forward pass per ablation, cut at p + window, plus one clean row per batch; with the
defaults (32 latents × 4 positions in 32 contexts of 128 tokens) about as many tokens as the
downstream scorer's 4096-token default. Logits are [rows, length, V] floats (0.5 GB at 4 rows of 128
tokens for a 262k vocabulary, plus the clean row): keep ``batch_rows`` small.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pydantic import Field
from torch import Tensor

import saebench
from saebench.errors import ConfigError, ShapeError
from saebench.metrics import activation_batches, sparse_parts
from saebench.uncertainty import mean_units

QUANTILES = {"min": 0.0, "p10": 0.1, "p25": 0.25, "p50": 0.5, "p75": 0.75, "p90": 0.9, "max": 1.0}


class AblationSparsityScorer(saebench.Scorer):
    """Sparsity of the logit effects of ablating single latents, (L1/L2)² / (V·T) (Gao et al. 2024, 4.5)."""

    name = "ablation_sparsity"
    needs_model = True
    headline = (saebench.Metric("sparsity", higher_is_better=False, label="ablation sparsity (L1/L2)² / (V·T)"),)

    class Options(saebench.Options):
        latents: int = Field(32, ge=1, description="latents ablated, drawn among those that fire")
        positions_per_latent: int = Field(4, ge=1, description="firing positions each latent is ablated at, at most")
        contexts: int = Field(32, ge=1, description="the first N evaluation contexts are searched and ablated in")
        window: int = Field(16, ge=1, description="positions measured, from the ablated one on (the paper's T)")
        latent_ids: list[int] | None = Field(None, description="ablate these latents instead of a random draw")
        seed: int | None = Field(None, description="seed of the draws (default: the run's seed)")
        batch_rows: int = Field(4, ge=1, description="ablated rows per forward pass (plus one clean row)")
        batch_tokens: int = Field(4096, ge=1, description="activation rows encoded at once to find where latents fire")

    @torch.no_grad()
    def score(self, sae: saebench.SAE, inputs: saebench.EvalInputs) -> saebench.ScoreResult:
        if sae.is_transcoder or inputs.hookpoint_out is not None:  # it ablates at the hook point read, not written
            raise ConfigError("ablation_sparsity does not evaluate transcoders", f"scorer {self.name}")
        opts = self.options
        adapter = inputs.model(self.name)
        tokens = inputs.tokens
        if tokens.ndim != 2:
            raise ShapeError(f"ablation_sparsity expects tokens [contexts, context_length], got {list(tokens.shape)}")
        d_sae = sae.cfg.d_sae
        if opts.latent_ids is not None:
            bad = [i for i in opts.latent_ids if not 0 <= i < d_sae]
            if bad:
                raise ConfigError(f"latent_ids {bad} outside 0 .. {d_sae - 1}", f"scorer {self.name}")
        use = min(int(tokens.shape[0]), opts.contexts)
        tokens = tokens[:use]
        length = int(tokens.shape[1])
        keep = ~adapter.special_mask(tokens).to(device="cpu", dtype=torch.bool)
        if keep.shape != tokens.shape:
            raise ShapeError(f"special_mask gave {list(keep.shape)} for tokens {list(tokens.shape)}")
        where = torch.nonzero(keep)  # [rows, 2]: (context, position) of each cached row, in cache order
        if inputs.token_contexts is not None:
            cached = inputs.token_contexts[: where.shape[0]].to(torch.int64)
            if cached.numel() < where.shape[0] or not torch.equal(cached, where[:, 0]):
                raise ShapeError("token_contexts do not match the non-special positions of the evaluation contexts")
        eligible = where[:, 1] + opts.window <= length

        counts = self._firing(sae, inputs, where, eligible, None)[0]
        rng = np.random.default_rng(inputs.seed if opts.seed is None else opts.seed)
        if opts.latent_ids is not None:
            chosen = np.array(list(dict.fromkeys(opts.latent_ids)), dtype=np.int64)
        else:
            firing = np.flatnonzero(counts > 0)
            chosen = np.sort(rng.choice(firing, size=min(opts.latents, firing.size), replace=False))
        _, pairs = self._firing(sae, inputs, where, eligible, torch.from_numpy(chosen))

        ablations: list[tuple[int, int, int]] = []  # (context, position, latent)
        for latent in chosen.tolist():
            rows = pairs.get(latent, np.zeros(0, dtype=np.int64))
            picked = np.sort(rng.choice(rows, size=min(opts.positions_per_latent, rows.size), replace=False))
            ablations += [(int(where[r, 0]), int(where[r, 1]), latent) for r in picked]
        ablations.sort()

        values, live = self._ablate(sae, adapter, inputs.hookpoint, tokens, keep, ablations)
        return self._result(chosen, counts, ablations, values, live, use, length)

    def _result(
        self,
        chosen: np.ndarray,
        counts: np.ndarray,
        ablations: list[tuple[int, int, int]],
        values: list[float | None],
        live: dict,
        use: int,
        length: int,
    ) -> saebench.ScoreResult:
        """Per-latent means of the ablations' s, their mean, spread and counts."""
        opts = self.options
        by_latent: dict[int, list[float]] = {int(i): [] for i in chosen}
        for (_, _, latent), s in zip(ablations, values):
            if s is not None:
                by_latent[latent].append(s)
        per_latent = {i: (float(np.mean(v)) if v else None) for i, v in by_latent.items()}
        scored = {i: v for i, v in per_latent.items() if v is not None}
        vals = np.array(list(scored.values()), dtype=np.float64)
        pooled = [s for s in values if s is not None]
        metrics: dict[str, float | None] = {
            "sparsity": float(vals.mean()) if vals.size else None,
            "latents": len(scored),
            "ablations": len(pooled),
        }
        details = {
            "contexts": use,
            "context_length": length,
            "window": opts.window,
            "vocab": live.get("vocab"),
            "latents_firing": int((counts > 0).sum()),
            "latents_drawn": int(chosen.size),
            "never_fired": [i for i in chosen.tolist() if int(counts[i]) == 0],
            "no_effect": sum(1 for s in values if s is None),
            "zero_live_activation": live.get("zero", 0),
            "std": float(vals.std(ddof=1)) if vals.size >= 2 else None,
            "quantiles": {k: float(np.quantile(vals, q)) for k, q in QUANTILES.items()} if vals.size else None,
            "ablation_mean": float(np.mean(pooled)) if pooled else None,
            "per_latent": [[i, per_latent[i], len(by_latent[i]), int(counts[i])] for i in by_latent],
        }
        units = mean_units("latent", list(scored), {"sparsity": list(scored.values())}) if scored else None
        return saebench.ScoreResult(metrics=metrics, details=details, units=units)

    def _firing(
        self, sae: saebench.SAE, inputs: saebench.EvalInputs, where: Tensor, eligible: Tensor, chosen: Tensor | None
    ) -> tuple[np.ndarray, dict[int, np.ndarray]]:
        """One pass over the cached rows of the searched contexts: how often each latent fires at an
        eligible position, and (for the ``chosen`` latents) at which rows."""
        d_sae = sae.cfg.d_sae
        counts = torch.zeros(d_sae, dtype=torch.int64)
        want = None
        if chosen is not None:
            want = torch.zeros(d_sae, dtype=torch.bool)
            want[chosen] = True
        found_rows, found_latents = [], []
        seen = 0
        for x in activation_batches(sae, inputs, self.options.batch_tokens, max_tokens=where.shape[0]):
            for s, vals, idx in sparse_parts(sae, x):  # row ranges, each padded to its own widest row
                vals, idx = vals.cpu(), idx.cpu()
                active = (vals != 0) & eligible[seen + s.start : seen + s.stop, None]
                counts += torch.bincount(idx[active], minlength=d_sae)
                if want is not None:
                    hit = active & want[idx]
                    r, j = torch.nonzero(hit, as_tuple=True)
                    found_rows.append(r + seen + s.start)
                    found_latents.append(idx[r, j])
            seen += x.shape[0]
        if seen != where.shape[0]:
            raise ShapeError(
                f"{seen} cached activation rows for {where.shape[0]} non-special positions of the searched contexts"
            )
        pairs: dict[int, np.ndarray] = {}
        if found_rows:
            rows, lats = torch.cat(found_rows).numpy(), torch.cat(found_latents).numpy()
            order = np.lexsort((rows, lats))
            rows, lats = rows[order], lats[order]
            for latent in np.unique(lats):
                pairs[int(latent)] = rows[lats == latent]
        return counts.numpy(), pairs

    def _ablate(
        self,
        sae: saebench.SAE,
        adapter: saebench.ModelAdapter,
        hookpoint: str,
        tokens: Tensor,
        keep: Tensor,
        ablations: list[tuple[int, int, int]],
    ) -> tuple[list[float | None], dict]:
        """The sparsity s of each ablation (None: no effect), a context's ablations batched with one clean row."""
        window = self.options.window
        out: list[float | None] = []
        info: dict = {"zero": 0}
        start = 0
        while start < len(ablations):
            ctx = ablations[start][0]
            stop = start
            while stop < len(ablations) and ablations[stop][0] == ctx and stop - start < self.options.batch_rows:
                stop += 1
            batch = ablations[start:stop]
            start = stop
            end = max(p for _, p, _ in batch) + window
            positions = torch.tensor([p for _, p, _ in batch])
            latents = torch.tensor([i for _, _, i in batch])
            rows = tokens[ctx, :end].repeat(len(batch) + 1, 1)  # row 0: clean
            live: list[Tensor] = []

            def ablate(
                h: Tensor, positions: Tensor = positions, latents: Tensor = latents, live: list = live
            ) -> Tensor:
                if h.shape[0] != positions.numel() + 1:
                    raise ShapeError(f"hook point output {list(h.shape)} for {positions.numel() + 1} rows")
                r = torch.arange(1, positions.numel() + 1)
                x = h[r, positions].to(torch.float32)
                values, indices = sae.encode_sparse(x)
                hit = indices == latents.to(indices.device)[:, None]
                live.append((values * hit).sum(dim=1).cpu())
                delta = sae.decode_sparse(values, indices) - sae.decode_sparse(values.masked_fill(hit, 0.0), indices)
                new = h.clone()
                new[r, positions] = h[r, positions] - delta.to(device=h.device, dtype=h.dtype)
                return new

            logits = adapter.logits(rows, replace={hookpoint: ablate})
            info["vocab"] = int(logits.shape[-1])
            a = live[0] if live else torch.zeros(len(batch))
            info["zero"] += int((a == 0).sum())
            for j, (_, p, _) in enumerate(batch):
                t = p + torch.nonzero(keep[ctx, p : p + window]).flatten()
                out.append(effect_sparsity(logits[j + 1, t] - logits[0, t]) if t.numel() else None)
            del logits
        return out, info


def effect_sparsity(diff: Tensor | np.ndarray) -> float | None:
    """(L1/L2)² / numel of a logit-difference block [positions, vocab] after subtracting each
    position's median over the vocabulary (numpy's, in float64); None when nothing is left (no
    change, or the same shift of every logit)."""
    d = np.array(diff.cpu().numpy() if isinstance(diff, Tensor) else diff, dtype=np.float64, ndmin=2)
    d -= np.median(d, axis=-1, keepdims=True)
    flat = d.ravel()
    l1 = float(np.abs(flat).sum())
    l2 = float(flat @ flat)
    if not (l2 > 0 and math.isfinite(l1) and math.isfinite(l2)):
        return None
    return l1 * l1 / l2 / flat.size


@saebench.hookimpl
def register_scorers(register):
    register(AblationSparsityScorer)
