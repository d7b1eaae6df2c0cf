"""What explainers and interpretability scorers exchange: examples, latent records, explanations, scores.

Usage (tokens, cost, parse failures) is one model, :class:`Usage`: an explanation and a latent's
score each carry theirs, an explainer or scorer adds up its responses with :meth:`Usage.add`, and a
cell sums its latents' with :meth:`Usage.total`. Per-latent metrics are averaged over the latents
that have a value: a latent whose metric could not be computed is left out of that mean, never
scored as 0 or 0.5.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Literal

from pydantic import BaseModel, Field, PrivateAttr


class Example(BaseModel):
    """One context window as explainers and scorers see it: token strings and one latent's activations."""

    tokens: list[str] = Field(description="token strings; their concatenation is the window's text")
    activations: list[float] = Field(description="the latent's activation at each token (all 0 for a negative)")
    window: int = Field(description="index of the window in the evaluation set (for disjointness checks)")
    kind: Literal["activating", "random", "hard"] = "activating"
    quantile: int | None = Field(None, description="activation-quantile bin of an activating example, 0 = weakest")

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def max_activation(self) -> float:
        return max(self.activations, default=0.0)


class LatentRecord(BaseModel):
    """What an explainer and a scorer see of one latent.

    ``train`` (shown to explainers) and ``test`` (for scorers) are disjoint sets of activating windows,
    as are ``train_negatives`` and ``test_negatives`` (windows where the latent is 0 everywhere);
    no window appears in two of the four lists.
    """

    latent: int
    n_activating: int = Field(description="activating windows in the evaluation set")
    density: float = Field(description="fraction of evaluation tokens where the latent is non-zero")
    max_activation: float
    train: list[Example] = Field(default_factory=list)
    test: list[Example] = Field(default_factory=list)
    train_negatives: list[Example] = Field(default_factory=list)
    test_negatives: list[Example] = Field(default_factory=list)


class Usage(BaseModel):
    """Tokens, cost and unparsable answers of some LLM calls; the cost is None as soon as one call has no price."""

    parse_failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None
    _priced: bool = PrivateAttr(True)  # every response added so far had a price

    def add(self, response: Any) -> Any:
        """Count one LLM response (anything with prompt_tokens, completion_tokens and cost_usd); returns it."""
        self.prompt_tokens += response.prompt_tokens
        self.completion_tokens += response.completion_tokens
        self._priced = self._priced and response.cost_usd is not None
        self.cost_usd = (self.cost_usd or 0.0) + response.cost_usd if self._priced else None
        return response

    def usage(self) -> dict[str, Any]:
        """The usage fields alone, to pass on to an Explanation or a LatentScore."""
        return {name: getattr(self, name) for name in Usage.model_fields}

    @staticmethod
    def total(items: Sequence[Usage]) -> dict[str, float | None]:
        """Summed parse failures and tokens as floats for the leaderboard; cost only when every item has one."""
        out: dict[str, float | None] = {
            k: float(sum(getattr(i, k) for i in items))
            for k in ("parse_failures", "prompt_tokens", "completion_tokens")
        }
        costs = [i.cost_usd for i in items]
        out["cost_usd"] = float(sum(c for c in costs if c is not None)) if costs and None not in costs else None
        return out


class Explanation(Usage):
    """An explainer's answer. ``text`` is None when there is no usable answer: it is never scored."""

    latent: int
    explainer: str
    text: str | None
    failure: str | None = Field(None, description="why text is None (unparsable answer, LLM gave up...)")


class LatentScore(Usage):
    """One latent's result from an interpretability scorer (stored per latent as it arrives)."""

    latent: int
    metrics: dict[str, float | None] = Field(description="e.g. balanced_accuracy; None when not computable")
    details: dict[str, Any] = Field(default_factory=dict, description="per-example predictions and the like")


def mean_metrics(scores: Sequence[LatentScore]) -> dict[str, float | None]:
    """Mean of each per-latent metric over the latents where it is defined, plus summed usage."""
    names: dict[str, None] = {}
    for s in scores:
        names.update(dict.fromkeys(s.metrics))
    out: dict[str, float | None] = {}
    for name in names:
        values = [v for s in scores if (v := s.metrics.get(name)) is not None and math.isfinite(v)]
        out[name] = sum(values) / len(values) if values else None
    out["latents_scored"] = float(len(scores))
    out.update(Usage.total(scores))
    return out
