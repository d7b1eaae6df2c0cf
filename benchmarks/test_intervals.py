"""Recomputing every interval of a quickstart-sized leaderboard from stored per-unit statistics.

The store holds what the quickstart's cells store: 3 SAEs × (sparsity, reconstruction, downstream)
over 156 contexts of 128 tokens (20,000 evaluation tokens), sparsity with 800 rare latents for its
dead-fraction interval. "ours" is what ``saebench leaderboard --ci`` does (load the units, 1,000
resamples per metric, vectorised draws); "naive" is the loop one would write first: per resample,
draw context indices and recompute each metric from the drawn contexts' sums. The issue's target is
under 2 s for the whole leaderboard; the bytes the units add to results.sqlite go into the notes.
"""

from __future__ import annotations

import conftest
import numpy as np
import pytest
from conftest import NOTES, record, run

from saebench.results.intervals import StoredUnits, intervals
from saebench.run.store import CellKey, ResultsStore
from saebench.uncertainty import Ratio, Units

CONTEXTS = 20 if conftest.SMALL else 156
RESAMPLES = 50 if conftest.SMALL else 1000
GROUP = f"intervals of a quickstart-sized leaderboard: 3 SAEs, {CONTEXTS} contexts, {RESAMPLES} resamples"
DOWNSTREAM = {
    "ce_loss_score": Ratio(num={"ce_zero": 1.0, "ce_sae": -1.0}, den={"ce_zero": 1.0, "ce_clean": -1.0}),
    "kl_score": Ratio(num={"kl_zero": 1.0, "kl_sae": -1.0}, den={"kl_zero": 1.0}),
    "delta_lm_loss": Ratio(num={"ce_sae": 1.0, "ce_clean": -1.0}, den={"count": 1.0}),
}
RECONSTRUCTION = {
    "explained_variance": Ratio(num={"tss": 1.0, "sse": -1.0}, den={"tss": 1.0}),
    "mse": Ratio(num={"sse": 1.0}, den={"tokens": 640.0}),
    "cosine": Ratio(num={"cos_sum": 1.0}, den={"cos_n": 1.0}),
}


def cells(rng) -> dict[str, Units]:
    ids = list(range(CONTEXTS))
    tokens = np.full(CONTEXTS, 127.0)

    def col(scale):
        return (rng.uniform(0.5, 1.5, CONTEXTS) * scale * tokens).tolist()

    return {
        "sparsity": Units(
            unit="context",
            ids=ids,
            columns={"active": col(32), "tokens": tokens.tolist()},
            metrics={"l0": Ratio(num={"active": 1.0}, den={"tokens": 1.0})},
        ),  # fmt: skip
        "reconstruction": Units(
            unit="context",
            ids=ids,
            columns={
                "sse": col(1),
                "tss": col(5),
                "cos_sum": col(0.9),
                "cos_n": tokens.tolist(),
                "tokens": tokens.tolist(),
            },
            metrics=RECONSTRUCTION,
        ),  # fmt: skip
        "downstream": Units(
            unit="context",
            ids=ids,
            columns={
                "ce_clean": col(2),
                "ce_sae": col(2.2),
                "ce_zero": col(6),
                "kl_sae": col(0.2),
                "kl_zero": col(4),
                "count": tokens.tolist(),
            },
            metrics=DOWNSTREAM,
        ),  # fmt: skip
    }


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    folder = tmp_path_factory.mktemp("intervals")
    rng = np.random.default_rng(0)
    with ResultsStore(folder) as s:
        for sae in ("topk-k32", "relu-l1", "jumprelu"):
            for scorer, units in cells(rng).items():
                metrics = {m: units.value(m) for m in units.metrics}
                s.write_cell(CellKey("gemma", "layers.6", sae, scorer), config_hash="h", config={}, run_id=1,
                             seconds=0.0, metrics=metrics, units=units)  # fmt: skip
        NOTES["intervals storage"] = (
            f"per-unit statistics of the 9 cells: {s.units_bytes():,} bytes in results.sqlite "
            f"({s.units_bytes() / 9 / 1024:.1f} KiB per cell, zlib-compressed JSON)"
        )
    return folder


def naive(folder) -> dict:
    """A resampling loop over explicit context draws, every metric recomputed from the drawn sums."""
    with ResultsStore.existing(folder) as s:
        stored = s.units()
    rng = np.random.default_rng(0)
    out = {}
    for key, u in stored.items():
        cols = {k: np.asarray(v) for k, v in u.columns.items()}
        for metric, est in u.metrics.items():
            values = []
            for _ in range(RESAMPLES):
                pick = rng.integers(0, u.n, u.n)
                num = sum(c * cols[k][pick].sum() for k, c in est.num.items())
                den = sum(c * cols[k][pick].sum() for k, c in est.den.items())
                values.append(num / den)
            out[(key, metric)] = np.quantile(values, [0.025, 0.975])
    return out


def test_intervals_ours(benchmark, store):
    found = run(benchmark, lambda: intervals(StoredUnits.load(store), resamples=RESAMPLES))
    assert sum(len(v) for v in found.values()) == 3 * 7
    record(benchmark, GROUP, "saebench: load units + vectorised bootstrap", 0, 0)


def test_intervals_naive(benchmark, store):
    found = run(benchmark, lambda: naive(store))
    assert len(found) == 3 * 7
    record(benchmark, GROUP, "naive: per-resample loop over drawn contexts", 0, 0, "naive")
