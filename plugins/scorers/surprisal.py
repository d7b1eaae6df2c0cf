"""Surprisal scorer: does reading the explanation first make a base LM less surprised by the examples?

For each test example (``record.test``, label 1, and ``record.test_negatives``, label 0) the client's
``continuation_logprobs`` gives the log-probability of each token of the example's text after two
prompts (completion mode, no chat template):

- with the explanation: ``prefix`` with ``{explanation}`` filled in, by default
  ``"The following text is about: <explanation>\\n\\n"``
- neutral: ``neutral_prefix``, by default ``"The following text is about: anything\\n\\n"``, the
  same frame so that the difference measures the explanation, not the wording around it.

An example's loss is the mean over its tokens of −log p; its score is loss(neutral) − loss(with
the explanation), the nats per token the explanation saves. Metrics per latent:

- ``auc``: ROC AUC of the scores, activating vs non-activating (a good explanation helps on the
  activating examples more than on the others; 0.5 = chance)
- ``loss_drop_activating``, ``loss_drop_negative``: the mean score of each class.

Examples with an empty text (no token to score) are skipped and counted in ``details``.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from pydantic import Field, field_validator

import saebench
from saebench.errors import ConfigError
from saebench.interfaces import InterpContext, InterpScorer, Metric
from saebench.interp.types import Explanation, LatentRecord, LatentScore
from saebench.metrics import roc_auc

if TYPE_CHECKING:
    from saebench.interp.llm import LLMClient


class SurprisalScorer(InterpScorer):
    """Surprisal: how much the explanation lowers a base LM's loss on activating vs non-activating examples."""

    name = "surprisal"
    headline = (Metric("auc"),)

    class Options(saebench.Options):
        prefix: str = Field(
            "The following text is about: {explanation}\n\n",
            description="prompt before each example; must contain {explanation}",
        )
        neutral_prefix: str = Field(
            "The following text is about: anything\n\n", description="the baseline prompt, without the explanation"
        )

        @field_validator("prefix")
        @classmethod
        def _names_the_explanation(cls, value: str) -> str:
            if "{explanation}" not in value:
                raise ValueError("must contain {explanation}")
            return value

    def check_llm(self, client: LLMClient | None) -> None:
        """Raise ConfigError unless ``client`` can score a continuation (the runner calls this up front)."""
        if client is None:
            raise ConfigError(
                "surprisal needs an LLM client (a base LM that scores continuations)", f"scorer {self.name}"
            )
        if not getattr(client, "supports_continuation_logprobs", False):
            raise ConfigError(
                f"llm client {client.name!r} cannot give the log-probabilities of a continuation; "
                "surprisal needs one that can (a local base model)",
                f"scorer {self.name}",
            )

    async def score_latent(self, record: LatentRecord, explanation: Explanation, ctx: InterpContext) -> LatentScore:
        self.check_llm(ctx.llm)
        # str.replace, not str.format: an explanation or prefix may contain other braces
        with_prompt = self.options.prefix.replace("{explanation}", explanation.text or "")
        examples = [(e, 1) for e in record.test] + [(e, 0) for e in record.test_negatives]
        texts = [e.text for e, _ in examples]

        async def loss(prompt: str, text: str) -> float | None:
            if not text:
                return None
            lps = await ctx.llm.continuation_logprobs(prompt, text)
            return -sum(lps) / len(lps) if lps else None

        losses = await asyncio.gather(*(loss(p, t) for t in texts for p in (self.options.neutral_prefix, with_prompt)))
        labels, drops, skipped = [], [], 0
        rows = []
        for i, (example, label) in enumerate(examples):
            neutral, informed = losses[2 * i], losses[2 * i + 1]
            if neutral is None or informed is None:
                skipped += 1
                continue
            labels.append(label)
            drops.append(neutral - informed)
            rows.append({"window": example.window, "label": label, "loss_neutral": neutral, "loss_explained": informed})
        metrics = {
            "auc": roc_auc(labels, drops),
            "loss_drop_activating": _mean([d for d, y in zip(drops, labels) if y]),
            "loss_drop_negative": _mean([d for d, y in zip(drops, labels) if not y]),
        }
        return LatentScore(latent=record.latent, metrics=metrics, details={"examples": rows, "skipped": skipped})


def _mean(values: list[float]) -> float | None:
    return sum(values) / len(values) if values else None


@saebench.hookimpl
def register_scorers(register):
    register(SurprisalScorer)
