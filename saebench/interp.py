"""Aggregation shared by the interpretability scorers and the runner's explanation stage.

Per-latent results are averaged over the latents that have a value: a latent whose metric could
not be computed (all answers unparsable, one class missing) is left out of that mean and counted,
never scored as 0 or 0.5. Usage (tokens, cost, parse failures) is summed.
"""

from __future__ import annotations

import math
from typing import Sequence

from saebench.interfaces import LatentScore

USAGE = ("parse_failures", "prompt_tokens", "completion_tokens")


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
    out.update(usage(scores))
    return out


def usage(items: Sequence) -> dict[str, float | None]:
    """Summed parse failures and tokens of LatentScores or Explanations; cost only when every item has one."""
    out: dict[str, float | None] = {k: float(sum(getattr(i, k) for i in items)) for k in USAGE}
    costs = [i.cost_usd for i in items]
    out["cost_usd"] = float(sum(costs)) if costs and all(c is not None for c in costs) else None
    return out

