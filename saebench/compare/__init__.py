"""SAE-to-SAE comparison: the measures (similarity.py) and what compare cells declare."""

from __future__ import annotations

from saebench.interfaces import Metric


class Comparison:
    """What compare cells declare, in the place of a scorer's class attributes (the store's headline
    metrics; whether they read explanations). Cells are built in saebench.run.plan, run in
    saebench.run.compare."""

    name = "compare"
    family = "compare"
    needs_model = False
    headline = (
        Metric("hungarian_cosine", plot=False),
        Metric("decoder_max_cosine", plot=False),
        Metric("activation_correlation", plot=False),
        Metric("explanation_similarity", plot=False),
    )

    def __init__(self, uses_explanations: bool):
        self.uses_explanations = uses_explanations
