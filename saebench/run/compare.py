"""Compare cells: SAE A against SAE B (metrics in saebench.compare.similarity), run in A's cells stage.

A matrix's ``compare:`` adds one cell per ordered pair of SAEs of a model (saebench.run.plan), stored
like any cell under A's row with the label ``compare[B]``: resumable, keyed by both SAEs' identities,
and kept out of the leaderboard (``saebench compare OUTPUT`` prints them, one row per pair).
"""

from __future__ import annotations

import random
from typing import Any

import numpy as np

from saebench.compare.similarity import SimilarityResult, compare
from saebench.run.context import RunContext
from saebench.run.latents import explain_latents
from saebench.run.plan import Cell
from saebench.run.recorder import Results
from saebench.sae import SAE
from saebench.uncertainty import Ratio, Units

BATCH_TOKENS = 4096


def compare_cell(ctx: RunContext, out: Results, cell: Cell, sae_a: SAE) -> tuple[dict, dict, Units | None]:
    """(metrics, details, units) of one compare cell; ``sae_a`` is the cells stage's SAE."""
    spec = ctx.plan.matrix.compare
    assert spec is not None and cell.other is not None
    b = cell.other
    sae_b = ctx.load_sae(b)
    cache_a, cache_b = ctx.eval_cache(cell.sae), ctx.eval_cache(b)
    pairs = None
    if "activations" in spec.metrics:
        pairs = lambda: zip(cache_a.batches(BATCH_TOKENS), cache_b.batches(BATCH_TOKENS))  # noqa: E731 - same tokens
    result = compare(sae_a, sae_b, pairs)
    if "decoder" not in spec.metrics:  # still computed: activation_correlation pairs latents by their decoders
        for name in [n for n in result.metrics if n.startswith(("decoder_", "hungarian_"))]:
            del result.metrics[name]
            result.per_latent.pop(name, None)
    details = {**result.details, "sae_b": ctx.plan.saes[b].stored_as, "hookpoint_b": ctx.plan.saes[b].spec.hookpoint}
    per_latent = dict(result.per_latent)
    if "explanations" in spec.metrics:
        sims, about = explanation_similarity(ctx, out, cell, sae_a, sae_b, result)
        result.metrics["explanation_similarity"] = float(np.nanmean(sims)) if np.isfinite(sims).any() else None
        per_latent["explanation_similarity"] = sims
        details["explanations"] = about
    return result.metrics, details, latent_units(result.metrics, per_latent)


def explanation_similarity(
    ctx: RunContext, out: Results, cell: Cell, sae_a: SAE, sae_b: SAE, result: SimilarityResult
) -> tuple[np.ndarray, dict[str, Any]]:
    """Per A latent, the cosine of the embeddings of its explanation and its match's (NaN where either
    is missing): ``latents`` of A's matched latents, drawn with the SAE's seed, explained by the run's
    rule explainer (the stored explanations where there are, the rest now)."""
    spec = ctx.plan.matrix.compare
    assert spec is not None and cell.other is not None
    sims = np.full(sae_a.cfg.d_sae, np.nan)
    matched = [int(i) for i in np.flatnonzero(result.assignment >= 0)]
    corr = result.per_latent.get("activation_max_correlation")  # dead latents have no explanation
    alive = [i for i in matched if corr is None or np.isfinite(corr[i])]
    pool = alive or matched
    chosen = sorted(random.Random(ctx.plan.saes[cell.sae].seed).sample(pool, min(spec.latents, len(pool))))
    texts_a = _explained(ctx, out, cell.sae, sae_a, chosen)
    texts_b = _explained(ctx, out, cell.other, sae_b, sorted({int(result.assignment[i]) for i in texts_a}))
    both = [i for i in texts_a if int(result.assignment[i]) in texts_b]
    if both:
        embedder = _embedder(ctx, spec.embedding_model)
        _, ea = embedder.embed("", [texts_a[i] for i in both])
        _, eb = embedder.embed("", [texts_b[int(result.assignment[i])] for i in both])
        ea = ea / np.maximum(np.linalg.norm(ea, axis=1, keepdims=True), 1e-12)
        eb = eb / np.maximum(np.linalg.norm(eb, axis=1, keepdims=True), 1e-12)
        sims[both] = (ea * eb).sum(1)
    about = {
        "sampled": len(chosen),
        "explained_a": len(texts_a),
        "explained_b": len(texts_b),
        "pairs": [
            {
                "a": i,
                "b": int(result.assignment[i]),
                "text_a": texts_a[i],
                "text_b": texts_b[int(result.assignment[i])],
                "cosine": float(sims[i]),
            }
            for i in both
        ],  # fmt: skip
    }
    return sims, about


def _explained(ctx: RunContext, out: Results, name: str, sae: SAE, wanted: list[int]) -> dict[int, str]:
    """The rule explainer's texts of ``wanted`` latents of SAE ``name``, each latent explained (or found
    unexplainable) once per run however many pairs ask for it."""
    memo = ctx.explanations.setdefault(name, {})
    todo = [j for j in wanted if j not in memo]
    if todo:
        texts = explain_latents(ctx, out, name, sae, ctx.eval_cache(name), todo)
        memo.update({j: texts.get(j) for j in todo})
    return {j: text for j in wanted if (text := memo[j]) is not None}


def _embedder(ctx: RunContext, model: str) -> Any:
    """The embedding scorer's model (one way to embed text), built once per run."""
    from saebench.run.components import construct

    return ctx.last("embedder", model, lambda: construct("scorer", "embedding", {"model": model}, "compare"))


def latent_units(metrics: dict[str, float | None], per_latent: dict[str, np.ndarray]) -> Units | None:
    """Per A latent, each metric's value and whether it is defined, so a bootstrap over A's latents
    recomputes every mean (a ``_frac_above_T`` metric from its base metric's values)."""
    if not per_latent:
        return None
    n = len(next(iter(per_latent.values())))
    columns: dict[str, list[float]] = {}
    ratios: dict[str, Ratio] = {}
    for base, values in per_latent.items():
        v = np.asarray(values, dtype=np.float64)
        defined = np.isfinite(v)
        columns[base] = np.where(defined, v, 0.0).tolist()
        columns[f"{base}.n"] = defined.astype(np.float64).tolist()
        ratios[base] = Ratio(num={base: 1.0}, den={f"{base}.n": 1.0})
    for name in metrics:
        base, _, threshold = name.partition("_frac_above_")
        source = FRACTION_OF.get(base)
        if threshold and source in per_latent:
            v = np.asarray(per_latent[source], dtype=np.float64)
            columns[name] = (np.isfinite(v) & (np.nan_to_num(v, nan=-np.inf) > float(threshold))).astype(float).tolist()
            ratios[name] = Ratio(num={name: 1.0}, den={f"{source}.n": 1.0})
    ratios = {k: r for k, r in ratios.items() if k in metrics}
    return Units(unit="latent", ids=list(range(n)), columns=columns, metrics=ratios)


#: the per-latent values a ``PREFIX_frac_above_T`` metric counts (saebench.compare.similarity's names)
FRACTION_OF = {
    "decoder": "decoder_max_cosine",
    "hungarian": "hungarian_cosine",
    "activation": "activation_max_correlation",
}
