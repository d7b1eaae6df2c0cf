"""The bootstrap core (saebench.uncertainty) against float64 recomputations and known sampling distributions."""

from __future__ import annotations

import numpy as np
import pytest
from pydantic import ValidationError

from saebench.uncertainty import Ratio, Units, compare, draws, interval, mean_units

RATIO = {"m": Ratio(num={"s": 1.0}, den={"t": 1.0})}


def contexts(n, rng, mu=1.0, sigma_context=1.0, sigma_token=2.0, tokens=32):
    """Per-context sums of a token-level value with a shared context effect (tokens of one context correlate)."""
    effect = rng.normal(mu, sigma_context, n)
    values = effect[:, None] + rng.normal(0.0, sigma_token, (n, tokens))
    return Units(
        unit="context",
        ids=list(range(n)),
        columns={"s": values.sum(1).tolist(), "t": [float(tokens)] * n},
        metrics=RATIO,
    )


def test_point_value_is_the_ratio_of_totals():
    u = Units(unit="context", ids=[0, 1, 2], columns={"s": [1.0, 2.0, 6.0], "t": [1.0, 1.0, 2.0]}, metrics=RATIO)
    assert u.value("m") == pytest.approx(9 / 4)  # not the mean of per-context ratios (1, 2, 3)


def test_resampled_values_match_an_explicit_float64_recomputation():
    """values() under draw weights equals recomputing the metric on the drawn units, for a ratio with
    a difference in numerator and denominator (CE loss score's shape)."""
    rng = np.random.default_rng(3)
    n = 50
    cols = {k: rng.uniform(1, 5, n).tolist() for k in ("zero", "sae", "clean")}
    est = Ratio(num={"zero": 1.0, "sae": -1.0}, den={"zero": 1.0, "clean": -1.0})
    u = Units(unit="context", ids=list(range(n)), columns=cols, metrics={"score": est})
    picks = rng.integers(0, n, size=(20, n))
    weights = np.stack([np.bincount(p, minlength=n) for p in picks])
    got = u.values("score", weights)
    for row, p in zip(got, picks):
        z, s, c = (np.asarray(cols[k], dtype=np.float64)[p].sum() for k in ("zero", "sae", "clean"))
        assert row == pytest.approx((z - s) / (z - c), rel=1e-12)


def test_coverage_is_close_to_the_nominal_level():
    """Over many synthetic evaluations with a known mean, the 95% interval covers it about 95% of the time
    (the percentile bootstrap runs slightly narrow: 93.6% over 3,000 trials of this design at 30–400 contexts)."""
    rng = np.random.default_rng(0)
    trials, covered = 800, 0
    for seed in range(trials):
        iv = interval(contexts(60, rng), "m", resamples=500, seed=seed)
        covered += iv.low <= 1.0 <= iv.high
    assert 0.92 <= covered / trials <= 0.97


def test_width_shrinks_as_one_over_root_n():
    rng = np.random.default_rng(1)

    def width(n):
        return np.mean([(lambda iv: iv.high - iv.low)(interval(contexts(n, rng), "m", seed=s)) for s in range(20)])

    ratio = width(100) / width(400)
    assert ratio == pytest.approx(2.0, rel=0.15)


def test_interval_width_matches_the_context_level_standard_error():
    """Resampling whole contexts: the interval reflects the variance of context means (σ_c² + σ_t²/T)/n,
    larger than the token-level σ²/(nT) a token bootstrap would give."""
    rng = np.random.default_rng(2)
    n, tokens = 400, 32
    u = contexts(n, rng, sigma_context=1.0, sigma_token=2.0, tokens=tokens)
    iv = interval(u, "m", resamples=2000)
    se = np.sqrt((1.0 + 4.0 / tokens) / n)
    assert (iv.high - iv.low) / (2 * 1.96) == pytest.approx(se, rel=0.12)


def test_intervals_are_seeded():
    u = contexts(60, np.random.default_rng(4))
    assert interval(u, "m", seed=7) == interval(u, "m", seed=7)
    assert interval(u, "m", seed=7).low != interval(u, "m", seed=8).low


def test_stratified_draws_keep_each_stratum_size():
    strata = [0] * 5 + [1] * 3 + [2] * 12
    w = draws(len(strata), strata, 100, np.random.default_rng(0))
    s = np.asarray(strata)
    for k, size in ((0, 5), (1, 3), (2, 12)):
        assert (w[:, s == k].sum(1) == size).all()


def test_weighted_mean_over_tasks_of_per_task_means():
    """mean_units with per-task weights gives the mean over tasks of per-task accuracies, on all units
    and on every stratified resample."""
    correct = [1, 0, 1, 1] + [0, 0, 1]  # task 0: 3/4, task 1: 1/3
    strata = [0] * 4 + [1] * 3
    u = mean_units("example", list(range(7)), {"acc": correct}, strata=strata, weights=[1 / 4] * 4 + [1 / 3] * 3)
    assert u.value("acc") == pytest.approx((3 / 4 + 1 / 3) / 2)
    w = draws(7, strata, 50, np.random.default_rng(1))
    c, s = np.asarray(correct, dtype=float), np.asarray(strata)
    want = [(r[s == 0] @ c[s == 0] / 4 + r[s == 1] @ c[s == 1] / 3) / 2 for r in w]
    assert u.values("acc", w) == pytest.approx(want, rel=1e-12)


def test_mean_units_leave_out_undefined_values():
    u = mean_units("latent", [3, 5, 9], {"auc": [0.5, None, float("nan")], "f1": [1.0, 0.0, 0.5]})
    assert u.value("auc") == 0.5 and u.value("f1") == pytest.approx(0.5)


def test_a_stored_estimator_this_version_does_not_know_is_left_out():
    stored = {
        "unit": "context",
        "ids": [0, 1],
        "columns": {"a": [1.0, 2.0], "n": [1.0, 1.0]},
        "metrics": {"m": {"kind": "ratio", "num": {"a": 1.0}, "den": {"n": 1.0}}, "dead": {"kind": "absent", "items": 3}},
    }
    u = Units.model_validate(stored)
    assert set(u.metrics) == {"m"} and u.value("m") == pytest.approx(1.5)


def test_paired_comparison_sees_a_small_difference_that_unpaired_cannot():
    """Two SAEs on the same contexts share the contexts' difficulty; pairing cancels it."""
    rng = np.random.default_rng(5)
    n = 200
    difficulty = rng.normal(0, 5, n)
    a = difficulty + 0.2 + rng.normal(0, 0.1, n)
    b = difficulty + rng.normal(0, 0.1, n)
    ua = mean_units("context", list(range(n)), {"loss": a.tolist()})
    ub = mean_units("context", list(range(n)), {"loss": b.tolist()})
    paired = compare(ua, ub, "loss")
    assert paired.paired and paired.diff == pytest.approx(float(np.mean(a - b)))
    assert paired.low > 0 and paired.p_value < 0.01
    unpaired = compare(ua.model_copy(update={"unit": "latent"}), ub.model_copy(update={"unit": "latent"}), "loss")
    assert not unpaired.paired and unpaired.low < 0 < unpaired.high and unpaired.p_value > 0.05


def test_paired_comparison_aligns_units_by_id():
    ua = mean_units("context", [0, 1, 2, 3], {"v": [1.0, 2.0, 3.0, 4.0]})
    ub = mean_units("context", [3, 2, 1, 9], {"v": [4.0, 3.0, 2.0, 100.0]})  # same values on shared ids
    c = compare(ua, ub, "v")
    assert c.units == 3 and c.diff == pytest.approx(0.0) and c.low == c.high == 0.0 and c.p_value == 1.0


def test_identical_sae_is_no_different():
    u = contexts(80, np.random.default_rng(6))
    c = compare(u, u, "m")
    assert c.diff == 0 and c.low == c.high == 0 and c.p_value == 1.0


def test_blob_round_trip_and_size():
    u = contexts(150, np.random.default_rng(7))
    back = Units.from_blob(u.to_blob())
    assert back == u
    assert len(u.to_blob()) < 150 * 2 * 20  # compressed JSON: tens of bytes per unit


def test_misaligned_columns_are_refused():
    with pytest.raises(ValidationError, match="column 's' has 2 rows for 3 units"):
        Units(unit="context", ids=[0, 1, 2], columns={"s": [1.0, 2.0], "t": [1.0] * 3}, metrics=RATIO)
    with pytest.raises(ValidationError, match="unknown column 't'"):
        Units(unit="context", ids=[0], columns={"s": [1.0]}, metrics=RATIO)


def test_one_unit_has_no_interval():
    u = Units(unit="context", ids=[0], columns={"s": [3.0], "t": [2.0]}, metrics=RATIO)
    iv = interval(u, "m")
    assert iv.point == 1.5 and iv.low is None and iv.high is None
