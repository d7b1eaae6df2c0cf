"""Detection scorer (delphi): can a judge tell, from the explanation alone, which examples activate?

Samples: at most ``n_activating`` of ``record.test`` (label 1) and ``n_negatives`` of
``record.test_negatives`` (label 0), each set spread over activation strength
(``prompts.spread``), shown as plain text. They are shuffled together with a generator seeded
from (ctx.seed, latent) and sent ``examples_per_prompt`` at a time.

Two answer formats:

- ``examples_per_prompt`` > 1 (delphi's): the excerpts are numbered and the judge answers a list
  of 0/1, one per excerpt; an answer that is not exactly that (wrong length, not a list, other
  values) excludes that prompt's examples and counts one parse failure. With ``logprobs: true``,
  P("1") is read from the top logprobs at each answer digit.
- ``examples_per_prompt`` = 1: one excerpt and a Yes/No question, a format small local models
  follow where they only repeat a numbered list. The answer's first word is read
  (``prompts.parse_yes_no``: yes/no or 1/0, any case; anything else is a parse failure), so at
  most ``YES_NO_TOKENS`` tokens are asked for; with ``logprobs: true``, P(Yes) against P(No) is
  read from the first generated token's alternatives (``prompts.prob_yes``; None when neither is
  among them).

Metrics over the parsed examples (``saebench.metrics.binary_metrics``): balanced_accuracy,
accuracy, precision, recall, f1; ``auc`` ranks the examples by that P("1") (or P(Yes)), None
without logprobs. Nothing parsed: every metric None. Details: one row per example (window, kind,
quantile, label, prediction, p1) and the recall of each activation quantile.

The fuzzing scorer reuses all of this with other samples and instructions.
"""

from __future__ import annotations

import asyncio
import random
from dataclasses import asdict, dataclass

from pydantic import Field

import saebench
from saebench.interfaces import InterpContext, InterpScorer, Metric
from saebench.interp.llm import LLMRequest
from saebench.interp.prompts import (
    chat,
    find_int_list,
    numbered,
    parse_binary_list,
    parse_yes_no,
    prob_one,
    prob_yes,
    render,
    spread,
)
from saebench.interp.types import Explanation, LatentRecord, LatentScore, Usage
from saebench.metrics import binary_metrics, ratio, roc_auc

TOP_LOGPROBS = 5
#: the most tokens asked for a Yes/No answer: only its first word is read
YES_NO_TOKENS = 8
METRICS = ("balanced_accuracy", "accuracy", "precision", "recall", "f1", "auc")

SYSTEM = (
    "You check an explanation of a language-model feature, which fires on certain tokens. For each excerpt, "
    "answer 1 if the feature as explained fires anywhere in it, else 0. Reply with only a list of 0/1 numbers, "
    "one per excerpt, in order, e.g. [1, 0, 0]."
)
# Kept short on purpose: with instructions in the system message (what to answer, what the marks
# mean) SmolLM2-135M restates the explanation instead of answering in most prompts; measured.
SYSTEM_ONE = "You check explanations of language-model features; a feature fires on certain tokens of a text."
QUESTION_ONE = "Does the feature as explained fire anywhere in this excerpt?"


@dataclass
class Sample:
    """One excerpt as the judge sees it, and what is known about it."""

    text: str
    label: int
    window: int
    kind: str
    quantile: int | None


class DetectionScorer(InterpScorer):
    """Detection: a judge says which examples, activating or not, match the explanation."""

    name = "detection"
    SYSTEM = SYSTEM
    SYSTEM_ONE = SYSTEM_ONE
    QUESTION_ONE = QUESTION_ONE
    headline = (Metric("balanced_accuracy"), Metric("auc"))

    class Options(saebench.Options):
        # the fuzzing scorer's Options subclass this one, with its own defaults for the first two
        n_activating: int | None = Field(50, ge=0, description="activating test examples (None: all)")
        n_negatives: int | None = Field(50, ge=0, description="non-activating test examples (None: all)")
        examples_per_prompt: int = Field(
            5, ge=1, description="excerpts per prompt; 1 asks a Yes/No question, which small models follow"
        )
        logprobs: bool = Field(False, description="ask for top logprobs and report auc from P('1') or P(Yes)")
        max_tokens: int = Field(
            64, ge=1, description=f"longest answer per prompt (at most {YES_NO_TOKENS} for a Yes/No answer)"
        )

    def samples(self, record: LatentRecord, rng: random.Random) -> list[Sample]:
        positives = spread(record.test, self.options.n_activating)
        negatives = spread(record.test_negatives, self.options.n_negatives)
        return [
            Sample(render(e.tokens), label, e.window, e.kind, e.quantile)
            for label, group in ((1, positives), (0, negatives))
            for e in group
        ]

    def question(self, explanation: str, batch: list[Sample]) -> str:
        if self.options.examples_per_prompt == 1:
            return (
                f"Explanation: {explanation}\n\nExcerpt: {batch[0].text}\n\n"
                f"{self.QUESTION_ONE} Reply with one word: Yes or No."
            )
        return (
            f"Explanation: {explanation}\n\nExcerpts:\n{numbered([s.text for s in batch])}\n\n"
            f"Answer with exactly {len(batch)} numbers."
        )

    async def score_latent(self, record: LatentRecord, explanation: Explanation, ctx: InterpContext) -> LatentScore:
        # a string seed hashes (seed, latent) pairs apart: seed 0/latent 1 differs from seed 1/latent 0
        rng = random.Random(f"{self.name}:{ctx.seed}:{record.latent}")
        samples = self.samples(record, rng)
        rng.shuffle(samples)
        k = self.options.examples_per_prompt
        batches = [samples[i : i + k] for i in range(0, len(samples), k)]
        usage = Usage(cost_usd=0.0)  # priced from the start, as before: a latent without prompts costs 0, not unknown
        answers = await asyncio.gather(*(self._judge(ctx, explanation.text or "", b, usage) for b in batches))
        rows = []
        for batch, answer in zip(batches, answers):
            if answer is None:
                usage.parse_failures += 1
                continue
            for sample, (prediction, p1) in zip(batch, answer):
                # the shown text is left out: the window identifies it, and it would dominate the stored details
                rows.append({**asdict(sample), "prediction": prediction, "p1": p1})
                del rows[-1]["text"]
        return LatentScore(
            latent=record.latent,
            metrics=judge_metrics(rows),
            details={"examples": rows, "recall_by_quantile": recall_by_quantile(rows), "prompts": len(batches)},
            **usage.usage(),
        )

    async def _judge(self, ctx: InterpContext, explanation: str, batch: list[Sample], usage: Usage):
        """[(prediction, p1)] per sample, or None when the answer is unparsable."""
        opts = self.options
        one = opts.examples_per_prompt == 1  # the option, not len(batch): a short last batch keeps the list format
        request = LLMRequest(
            messages=chat(self.SYSTEM_ONE if one else self.SYSTEM, self.question(explanation, batch)),
            max_tokens=min(opts.max_tokens, YES_NO_TOKENS) if one else opts.max_tokens,
            temperature=0.0,
            seed=ctx.seed,
            top_logprobs=TOP_LOGPROBS if opts.logprobs else 0,
        )
        response = usage.add(await ctx.llm.complete(request))
        if one:
            prediction = parse_yes_no(response.text)
            if prediction is None:
                return None
            return [(prediction, prob_yes(response) if opts.logprobs else None)]
        predictions = parse_binary_list(response.text, len(batch))
        if predictions is None:
            return None
        p1s = prob_one(response, find_int_list(response.text)[1]) if opts.logprobs else [None] * len(batch)
        return list(zip(predictions, p1s))


def judge_metrics(rows: list[dict]) -> dict[str, float | None]:
    """binary_metrics over the parsed rows, and auc over the rows with a P("1"); all None if none parsed."""
    if not rows:
        return dict.fromkeys(METRICS)
    metrics = binary_metrics([r["label"] for r in rows], [r["prediction"] for r in rows])
    scored = [r for r in rows if r["p1"] is not None]
    metrics["auc"] = roc_auc([r["label"] for r in scored], [r["p1"] for r in scored]) if scored else None
    return metrics


def recall_by_quantile(rows: list[dict]) -> dict[str, float | None]:
    """Recall of the label-1 rows of each activation quantile (keys are quantile numbers as strings)."""
    out: dict[str, float | None] = {}
    for q in sorted({r["quantile"] for r in rows if r["label"] == 1 and r["quantile"] is not None}):
        group = [r for r in rows if r["label"] == 1 and r["quantile"] == q]
        out[str(q)] = ratio(sum(r["prediction"] for r in group), len(group))
    return out


@saebench.hookimpl
def register_scorers(register):
    register(DetectionScorer)
