"""Top-tokens explainer: a baseline that needs no LLM.

Counts, over ``record.train``, the tokens at positions where the latent is active (activation > 0),
each stripped of surrounding whitespace and case-folded, empty ones ignored; the explanation lists
the ``n_tokens`` most frequent (ties broken alphabetically, so the result is deterministic) as
``tokens: "def", "class", "return"`` (each token JSON-quoted). Any judge scorer can then score this
explanation like an LLM's: it is the bar an LLM explanation should clear.
"""

from __future__ import annotations

import json
from collections import Counter

from pydantic import Field

import saebench
from saebench.interfaces import Explainer
from saebench.interp.types import Explanation, LatentRecord


def top_tokens(record: LatentRecord, n: int) -> list[str]:
    """The ``n`` most frequent normalised tokens at active positions of the training examples."""
    counts: Counter[str] = Counter()
    for example in record.train:
        for token, activation in zip(example.tokens, example.activations):
            key = token.strip().casefold()
            if activation > 0 and key:
                counts[key] += 1
    return [t for t, _ in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]]


class TopTokensExplainer(Explainer):
    """No LLM: the most frequent activating tokens, a deterministic baseline."""

    name = "top-tokens"
    needs_llm = False

    class Options(saebench.Options):
        n_tokens: int = Field(5, ge=1, description="tokens listed")

    async def explain(self, record: LatentRecord) -> Explanation:
        tokens = top_tokens(record, self.options.n_tokens)
        if not tokens:
            return Explanation(
                latent=record.latent,
                explainer=self.name,
                text=None,
                failure="no activating tokens in the training examples",
                cost_usd=0.0,
            )
        text = "tokens: " + ", ".join(json.dumps(t, ensure_ascii=False) for t in tokens)
        return Explanation(latent=record.latent, explainer=self.name, text=text, cost_usd=0.0)


@saebench.hookimpl
def register_explainers(register):
    register(TopTokensExplainer)
