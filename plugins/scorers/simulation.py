"""Simulation scorer (OpenAI, Bills et al. 2023): a judge predicts per-token activations from the explanation.

Examples, ``n_examples`` in all: a third (rounded down) negatives drawn at random from
``record.test_negatives``; of the rest, half (rounded up) the strongest of ``record.test`` by
maximum activation and the others drawn at random among the remaining activating examples.
Fewer are used when a set runs short. Random draws are seeded from (ctx.seed, latent).

One prompt per example shows the explanation and the tokens as a JSON list of strings.

- ``mode: json``: the judge replies with a JSON list of integers 0-10, one per token; a list of
  another length or with other values is a parse failure.
- ``mode: logprobs``: the judge writes one line per token, ``token<TAB>digit`` (0-9); the
  prediction at a line is the expected digit under the top logprobs at that digit (OpenAI's
  expected-value simulator). Fewer or more digit lines than tokens, or an answer without usable
  logprobs, is a parse failure.

Metrics: ``correlation``, Pearson's r between predicted and true activations pooled over every
token of every parsed example (OpenAI's "all at once"), and ``correlation_per_example``, the mean
of r over the parsed examples where it is defined. r is None when either side is constant
(a negative alone has constant true activations) or nothing was parsed.
"""

from __future__ import annotations

import asyncio
import json
import random
import re

import numpy as np
from pydantic import Field, field_validator

import saebench
from saebench.interfaces import InterpContext, InterpScorer, Metric
from saebench.interp.llm import LLMRequest, LLMResponse
from saebench.interp.prompts import chat, expected_digit, parse_int_list, token_at
from saebench.interp.types import Example, Explanation, LatentRecord, LatentScore, Usage

TOP_LOGPROBS = 10
MODES = ("json", "logprobs")
_DIGIT_LINE = re.compile(r"\t[ ]*(\d)[ ]*$", re.MULTILINE)

SYSTEM = (
    "You simulate a feature of a language model from its explanation. The feature fires on some tokens of a "
    "text; predict how strongly it fires on each token, from 0 (not at all, most tokens) to {top} (strongest)."
)
ANSWER = {
    "json": "Reply with only a JSON list of integers, one per token, in order.",
    "logprobs": "Reply with one line per token, in order: the token, a tab, then one digit.",
}


class SimulationScorer(InterpScorer):
    """Simulation: a judge predicts per-token activations from the explanation (Pearson correlation)."""

    name = "simulation"
    headline = (Metric("correlation"),)

    class Options(saebench.Options):
        n_examples: int = Field(6, ge=1, description="test examples simulated: top, random activating, negatives")
        mode: str = Field("json", description="json (a list of 0-10) or logprobs (expected digit per token line)")
        max_tokens: int = Field(512, ge=1, description="longest answer per example")

        @field_validator("mode")
        @classmethod
        def _known_mode(cls, value: str) -> str:
            if value not in MODES:
                raise ValueError(f"must be one of {', '.join(MODES)}")
            return value

    def examples(self, record: LatentRecord, rng: random.Random) -> list[Example]:
        n = self.options.n_examples
        n_neg = n // 3
        n_top = -(-(n - n_neg) // 2)
        ranked = sorted(record.test, key=lambda e: -e.max_activation)
        rest = ranked[n_top:]
        chosen = ranked[:n_top] + rng.sample(rest, min(n - n_neg - n_top, len(rest)))
        return chosen + rng.sample(record.test_negatives, min(n_neg, len(record.test_negatives)))

    async def score_latent(self, record: LatentRecord, explanation: Explanation, ctx: InterpContext) -> LatentScore:
        rng = random.Random(f"{self.name}:{ctx.seed}:{record.latent}")
        examples = self.examples(record, rng)
        usage = Usage(cost_usd=0.0)  # priced from the start, as before: a latent without examples costs 0, not unknown
        predictions = await asyncio.gather(*(self._simulate(ctx, explanation.text or "", e, usage) for e in examples))
        rows, pooled_pred, pooled_true, per_example = [], [], [], []
        for e, pred in zip(examples, predictions):
            r = pearson(pred, e.activations) if pred is not None else None
            rows.append(
                {"window": e.window, "kind": e.kind, "quantile": e.quantile, "predicted": pred, "correlation": r}
            )
            if pred is None:
                continue
            pooled_pred += pred
            pooled_true += e.activations
            if r is not None:
                per_example.append(r)
        metrics = {
            "correlation": pearson(pooled_pred, pooled_true),
            "correlation_per_example": float(np.mean(per_example)) if per_example else None,
        }
        usage.parse_failures += sum(p is None for p in predictions)
        return LatentScore(
            latent=record.latent,
            metrics=metrics,
            details={"examples": rows, "mode": self.options.mode},
            **usage.usage(),
        )

    async def _simulate(self, ctx: InterpContext, explanation: str, example: Example, usage: Usage):
        """Predicted activations, one per token, or None when the answer cannot be parsed."""
        n, mode = len(example.tokens), self.options.mode
        top = 10 if mode == "json" else 9
        user = (
            f"Explanation: {explanation}\n\nTokens ({n}): {json.dumps(example.tokens, ensure_ascii=False)}\n\n"
            + ANSWER[mode]
        )
        request = LLMRequest(
            messages=chat(SYSTEM.format(top=top), user),
            max_tokens=self.options.max_tokens,
            temperature=0.0,
            seed=ctx.seed,
            top_logprobs=TOP_LOGPROBS if mode == "logprobs" else 0,
        )
        response = usage.add(await ctx.llm.complete(request))
        if mode == "json":
            values = parse_int_list(response.text, n, 0, 10)
            return None if values is None else [float(v) for v in values]
        return line_expectations(response, n)


def line_expectations(response: LLMResponse, n: int) -> list[float] | None:
    """The expected digit at each ``token<TAB>digit`` line; None unless exactly n lines and logprobs at each."""
    digits = list(_DIGIT_LINE.finditer(response.text))
    if len(digits) != n:
        return None
    values = [expected_digit(token_at(response, m.start(1))) for m in digits]
    return None if any(v is None for v in values) else values


def pearson(x, y) -> float | None:
    """Pearson's r in float64; None with fewer than two points or a constant side."""
    a, b = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if a.size < 2 or a.size != b.size or np.ptp(a) == 0 or np.ptp(b) == 0:
        return None
    r = float(np.corrcoef(a, b)[0, 1])
    return r if np.isfinite(r) else None


@saebench.hookimpl
def register_scorers(register):
    register(SimulationScorer)
