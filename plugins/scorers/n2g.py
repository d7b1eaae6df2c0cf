"""N2G scorer (no LLM): the precision and recall of an N2G explanation's per-token firing predictions.

Gao et al. 2024 ("Scaling and evaluating sparse autoencoders", arXiv:2406.04093: the explainability evaluation in
§4 and its N2G appendix) score N2G explanations (Foote et al. 2023) of SAE latents by treating each explanation
as a binary classifier of tokens: it predicts, at every token, whether the latent fires, and the predictions are
compared with the latent's actual firing. Their released code (openai/sparse_autoencoder, ``sparse_autoencoder/explanations.py``,
``NtgExplanation.predict``) predicts at each token by reading the trie backwards from that token.

Here the explanation is the ``n2g`` explainer's text (see ``saebench.plugins.explainers.n2g``: one pattern per
line, ``*`` any token, the activating token in brackets). At each token of every held-out window,
``record.test`` (activating) and ``record.test_negatives`` (non-activating), the prediction is "fires" when any
pattern matches ending at that token, inside the window; the truth is activation > 0. Over all those tokens of
one latent, with TP, FP, FN the usual counts:

- ``precision`` = TP / (TP + FP): of the tokens the explanation says fire, the share that do (None when it
  predicts none);
- ``recall`` = TP / (TP + FN): of the tokens that fire, the share it predicts;
- ``f1`` = 2TP / (2TP + FP + FN), the harmonic mean of the two (0 when TP = 0; the same definitions as
  ``saebench.metrics.binary_metrics``).

Choices (the paper's exact evaluation sample is not reproduced): the tokens are those of the record's test
windows, 50 activating and 50 non-activating by default, so precision is measured at that mix of windows, not at
the corpus's base rate (a latent firing on 0.1 % of tokens would show more false positives on a random sample);
predictions are binary (the released code also predicts an activation value, which precision and recall do not
use); any pattern matching counts (the released trie is walked greedily, exact tokens before wildcards, which can
miss a match another branch would find).

Columns are the means over scored latents (``n2g.precision``, ``n2g.recall``, ``n2g.f1``), each with a bootstrap
interval over latents (the InterpScorer default units); ``saebench leaderboard --latents`` shows each latent's
values. Details per latent: the counts and each pattern's own (tp, fp) on the test windows. An explanation that
is not in the N2G format (another explainer's prose) is counted as one parse failure with every metric None, as
the judge scorers count an unparsable answer.
"""

from __future__ import annotations

import saebench
from saebench.interfaces import InterpContext, InterpScorer, Metric
from saebench.interp.types import Explanation, LatentRecord, LatentScore
from saebench.metrics import ratio
from saebench.plugins.explainers.n2g import Matcher, N2GParseError, parse_patterns, pattern_text

METRICS = ("precision", "recall", "f1")


def n2g_counts(matcher: Matcher, record: LatentRecord) -> tuple[dict[str, int], list[list[int]]]:
    """({tp, fp, fn, tn} over every test token, [tp, fp] per pattern) of the matcher's predictions."""
    tp = fp = fn = tn = 0
    per = [[0, 0] for _ in matcher.patterns]
    for e in (*record.test, *record.test_negatives):
        acts = e.activations
        fires = sum(1 for a in acts if a > 0)
        predicted = matcher.where(e.tokens)
        hits = 0
        for i, matched in predicted.items():
            fired = acts[i] > 0
            hits += fired
            for k in matched:
                per[k][0 if fired else 1] += 1
        tp, fp = tp + hits, fp + len(predicted) - hits
        fn, tn = fn + fires - hits, tn + len(acts) - fires - (len(predicted) - hits)
    return {"tp": tp, "fp": fp, "fn": fn, "tn": tn}, per


def n2g_metrics(c: dict[str, int]) -> dict[str, float | None]:
    tp, fp, fn = c["tp"], c["fp"], c["fn"]
    return {"precision": ratio(tp, tp + fp), "recall": ratio(tp, tp + fn), "f1": ratio(2 * tp, 2 * tp + fp + fn)}


class N2GScorer(InterpScorer):
    """N2G: per-token precision and recall of an N2G explanation's firing predictions (Gao et al. 2024)."""

    name = "n2g"
    needs_llm = False
    headline = (Metric("f1"), Metric("precision", plot=False), Metric("recall", plot=False))

    async def score_latent(self, record: LatentRecord, explanation: Explanation, ctx: InterpContext) -> LatentScore:
        try:
            patterns = parse_patterns(explanation.text or "")
        except N2GParseError as exc:
            return LatentScore(
                latent=record.latent,
                metrics=dict.fromkeys(METRICS),
                details={"unparsable": str(exc)},
                parse_failures=1,
                cost_usd=0.0,
            )
        matcher = Matcher(patterns)
        counts, per = n2g_counts(matcher, record)
        details = {
            **counts,
            "patterns": [{"pattern": pattern_text(p), "tp": t, "fp": f} for p, (t, f) in zip(matcher.patterns, per)],
        }
        return LatentScore(latent=record.latent, metrics=n2g_metrics(counts), details=details, cost_usd=0.0)


@saebench.hookimpl
def register_scorers(register):
    register(N2GScorer)
