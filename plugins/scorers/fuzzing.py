"""Fuzzing scorer (delphi): does the explanation say which tokens are marked, not only which texts?

Samples, from at most ``n_activating`` of ``record.test`` and ``n_negatives`` of
``record.test_negatives`` (each spread over activation strength):

- label 1: each activating example with its strongest tokens marked (``prompts.highlight_mask``,
  activation >= 0.3 × the example's maximum);
- label 0 (kind ``misplaced``): the same activating example with as many tokens marked, chosen at
  random among its unmarked positions (all of them when there are fewer; left out when there are
  none), so the text is the same and only the marks are wrong;
- label 0 (kind as given): each negative with m random tokens marked, m = the mean number of marked
  tokens per activating example, rounded up (at most the example's length).

Random choices use a generator seeded from (ctx.seed, latent). Batching, the two answer formats
(a 0/1 list, or Yes/No for one excerpt per prompt), parsing, parse failures and metrics are the
detection scorer's: the judge answers 1 (Yes) when the marked tokens are what the explanation
describes.
"""

from __future__ import annotations

import math
import random

from pydantic import Field

import saebench
from saebench.interp.prompts import highlight_mask, mark, spread
from saebench.interp.types import LatentRecord
from saebench.plugins.scorers.detection import DetectionScorer, Sample

SYSTEM = (
    "You check an explanation of a language-model feature, which fires on certain tokens. In each excerpt some "
    "tokens are marked <<like this>>. Answer 1 if the marked tokens are ones the feature as explained would fire "
    "on, else 0. Reply with only a list of 0/1 numbers, one per excerpt, in order, e.g. [1, 0, 0]."
)
# the detection scorer's short system message; naming the <<marks>> anywhere makes SmolLM2 restate
# the explanation instead of answering (measured), and strong judges read them from the excerpt
QUESTION_ONE = "Are the marked tokens ones the feature as explained fires on?"


class FuzzingScorer(DetectionScorer):
    """Fuzzing: a judge says whether the marked tokens of an example are what the explanation describes."""

    name = "fuzzing"
    SYSTEM = SYSTEM
    QUESTION_ONE = QUESTION_ONE

    class Options(DetectionScorer.Options):
        # detection's options, these two with other defaults (they keep their place, first)
        n_activating: int | None = Field(
            25, ge=0, description="activating test examples, each shown correctly and wrongly marked (None: all)"
        )
        n_negatives: int | None = Field(
            25, ge=0, description="non-activating test examples, randomly marked (None: all)"
        )

    def samples(self, record: LatentRecord, rng: random.Random) -> list[Sample]:
        out: list[Sample] = []
        marked_counts = []
        for e in spread(record.test, self.options.n_activating):
            mask = highlight_mask(e)
            n_marked = sum(mask)
            marked_counts.append(n_marked)
            out.append(Sample(mark(e.tokens, mask), 1, e.window, e.kind, e.quantile))
            unmarked = [i for i, m in enumerate(mask) if not m]
            if unmarked:
                chosen = set(rng.sample(unmarked, min(n_marked, len(unmarked))))
                out.append(
                    Sample(
                        mark(e.tokens, [i in chosen for i in range(len(mask))]), 0, e.window, "misplaced", e.quantile
                    )
                )
        n_random = max(1, math.ceil(sum(marked_counts) / len(marked_counts))) if marked_counts else 1
        for e in spread(record.test_negatives, self.options.n_negatives):
            chosen = set(rng.sample(range(len(e.tokens)), min(n_random, len(e.tokens))))
            out.append(
                Sample(mark(e.tokens, [i in chosen for i in range(len(e.tokens))]), 0, e.window, e.kind, e.quantile)
            )
        return out


@saebench.hookimpl
def register_scorers(register):
    register(FuzzingScorer)
