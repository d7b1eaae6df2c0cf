"""SAE similarity (saebench.compare.similarity): each metric against an independent float64 computation (numpy
references, brute-force assignments), permuted copies that must score 1, unrelated SAEs that must not,
the path that skips a metric (different d_in), and the matching on candidates that replaces the dense
assignment over max_assignment_cells (against linear_sum_assignment's optimum, and its greedy fallback)."""

import itertools
import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from saebench.compare import similarity
from saebench.compare.similarity import (
    activation_statistics,
    compare,
    compare_decoders,
    cosine_matrix,
    greedy_match,
    hungarian_match,
    max_cosines,
    top_candidates,
)
from saebench.loading import build_sae


def random_weights(d_in, d_sae, seed):
    gen = torch.Generator().manual_seed(seed)
    return {"W_enc": torch.randn(d_in, d_sae, generator=gen), "W_dec": torch.randn(d_sae, d_in, generator=gen),
            "b_enc": 0.1 * torch.randn(d_sae, generator=gen), "b_dec": torch.zeros(d_in)}


def permuted(weights, perm):
    """The same SAE with its latents reordered: B's latent j is A's latent perm[j]."""
    return {"W_enc": weights["W_enc"][:, perm], "W_dec": weights["W_dec"][perm], "b_enc": weights["b_enc"][perm],
            "b_dec": weights["b_dec"]}


def batches(d_in, sizes=(700, 333, 967), seed=1):
    gen = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d_in, generator=gen) for n in sizes]


def same_tokens(xs):
    return lambda: ((x, x) for x in xs)


def ref_cosines(W_a, W_b):
    A, B = np.asarray(W_a, dtype=np.float64), np.asarray(W_b, dtype=np.float64)
    na, nb = np.linalg.norm(A, axis=1, keepdims=True), np.linalg.norm(B, axis=1, keepdims=True)
    return (A / np.where(na > 0, na, 1)) @ (B / np.where(nb > 0, nb, 1)).T


def ref_pearson(a, b):
    """float64 Pearson r [d_a, d_b] by numpy.corrcoef, 0 for a constant latent."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    alive_a, alive_b = a.std(0) > 0, b.std(0) > 0
    r = np.zeros((a.shape[1], b.shape[1]))
    full = np.corrcoef(a[:, alive_a], b[:, alive_b], rowvar=False)
    r[np.ix_(alive_a, alive_b)] = full[: alive_a.sum(), alive_a.sum():]
    return r, alive_a, alive_b


# -- cosines ---------------------------------------------------------------------------------------
def test_cosine_matrix_and_max_cosines_match_numpy_in_float64_across_chunks():
    gen = torch.Generator().manual_seed(0)
    W_a, W_b = torch.randn(8, 5, generator=gen), torch.randn(11, 5, generator=gen)
    W_a[2] = 0
    W_b[7] = 0
    ref = ref_cosines(W_a, W_b)
    for chunk in (1, 3, 2048):
        got = cosine_matrix(W_a, W_b, chunk=chunk)
        assert got.dtype == np.float32 and got.shape == (8, 11)
        np.testing.assert_allclose(got, ref, atol=1e-6)
        best = max_cosines(W_a, W_b, chunk=chunk)
        assert best.dtype == np.float64
        np.testing.assert_allclose(best, ref.max(1), atol=1e-12)
    got = cosine_matrix(W_a, W_b, chunk=3)
    assert not got[2].any() and not got[:, 7].any() and max_cosines(W_a, W_b)[2] == 0.0
    np.testing.assert_allclose(cosine_matrix(W_a, W_a), cosine_matrix(W_a, W_a).T, atol=1e-7)


def test_cosines_of_decoders_with_different_d_in_raise():
    with pytest.raises(ValueError, match=r"different d_in \(5 vs 6\)"):
        cosine_matrix(torch.ones(3, 5), torch.ones(4, 6))
    with pytest.raises(ValueError, match="different d_in"):
        max_cosines(torch.ones(3, 5), torch.ones(4, 6))
    with pytest.raises(ValueError, match="2-D"):
        cosine_matrix(torch.ones(5), torch.ones(4, 5))


# -- the assignment --------------------------------------------------------------------------------
def brute_force_best(sim):
    n_rows, n_cols = sim.shape
    if n_rows <= n_cols:
        return max(sum(sim[i, c] for i, c in enumerate(cols)) for cols in itertools.permutations(range(n_cols), n_rows))
    return brute_force_best(sim.T)


@pytest.mark.parametrize("shape", [(5, 5), (3, 5), (5, 3)])
def test_hungarian_match_finds_the_brute_force_optimum(shape):
    sim = np.random.default_rng(sum(shape)).normal(size=shape)
    rows, cols = hungarian_match(sim)
    assert len(rows) == len(cols) == min(shape)
    assert list(rows) == sorted(rows) and len(set(rows)) == len(rows) and len(set(cols)) == len(cols)
    assert rows.dtype == cols.dtype == np.int64
    assert sim[rows, cols].sum() == pytest.approx(brute_force_best(sim), abs=1e-12)


def test_hungarian_match_rejects_an_empty_or_flat_matrix():
    with pytest.raises(ValueError):
        hungarian_match(np.zeros((0, 3)))
    with pytest.raises(ValueError):
        hungarian_match(np.zeros(4))


# -- Pearson ---------------------------------------------------------------------------------------
@pytest.mark.parametrize("density", [0.0, 1.01])  # A's cross sums: always the dense GEMM, always the sparse product
def test_pearson_matches_numpy_corrcoef_over_batches_with_a_dead_and_an_offset_latent(density, monkeypatch):
    monkeypatch.setattr(similarity, "SPARSE_DENSITY", density)
    w = random_weights(8, 12, seed=3)
    w["W_enc"][:, 4] = 0
    w["b_enc"][4] = -1.0  # latent 4 never fires
    w["b_enc"][7] = 50.0  # latent 7 always fires, mean 50 beside a spread of ~3: the shift must keep r exact
    sae_a = build_sae("relu", w)
    sae_b = build_sae("topk", random_weights(8, 10, seed=4), k=3)
    xs = batches(8)
    with torch.no_grad():
        a = torch.cat([sae_a.encode(x) for x in xs]).double().numpy()
        b = torch.cat([sae_b.encode(x) for x in xs]).double().numpy()
    ref, alive_a, alive_b = ref_pearson(a, b)
    assert not alive_a[4] and alive_a.sum() >= 10
    for cells in (1 << 24, 30):  # 30 cells: 3 of A's latents per product slice
        corr = activation_statistics(same_tokens(xs)(), sae_a, sae_b, product_cells=cells)
        assert corr.n == sum(len(x) for x in xs)
        np.testing.assert_array_equal(corr.alive_a, alive_a)
        np.testing.assert_array_equal(corr.alive_b, alive_b)
        np.testing.assert_allclose(corr.mean_a, a.mean(0), rtol=1e-10, atol=1e-12)
        np.testing.assert_allclose(corr.var_b, b.var(0), rtol=1e-9, atol=1e-12)
        r = corr.pearson(rows=5)
        assert r.dtype == np.float32 and r.shape == (12, 10)
        np.testing.assert_allclose(r, ref, atol=2e-6)
        assert not r[4].any() and corr.var_a[4] == 0.0


def test_activation_statistics_checks_its_batches():
    sae = build_sae("topk", random_weights(8, 12, seed=3), k=3)
    x = torch.randn(10, 8)
    with pytest.raises(ValueError, match="not the same tokens"):
        activation_statistics([(x, x[:9])], sae, sae)
    with pytest.raises(ValueError, match="at least two tokens"):
        activation_statistics([(x[:1], x[:1])], sae, sae)


# -- compare: permuted copies, unrelated SAEs --------------------------------------------------------
METRICS = {"decoder_max_cosine", "decoder_frac_above_0.7", "decoder_frac_above_0.9", "hungarian_cosine",
           "hungarian_frac_above_0.7", "hungarian_frac_above_0.9", "activation_correlation",
           "activation_max_correlation", "activation_frac_above_0.7", "activation_frac_above_0.9"}


def test_a_permuted_copy_scores_one_and_the_assignment_recovers_the_permutation():
    w = random_weights(16, 64, seed=5)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(6))
    sae_a, sae_b = build_sae("topk", w, k=8), build_sae("topk", permuted(w, perm), k=8)
    res = compare(sae_a, sae_b, same_tokens(batches(16)))
    assert set(res.metrics) == METRICS and res.details["skipped"] == {}
    for name in ("decoder_max_cosine", "hungarian_cosine", "activation_correlation", "activation_max_correlation"):
        assert res.metrics[name] == pytest.approx(1.0, abs=1e-4), name
        assert res.per_latent[name].shape == (64,)
    for name in METRICS - {"activation_correlation"}:
        if "frac" in name:
            assert res.metrics[name] == 1.0, name
    np.testing.assert_array_equal(res.assignment, torch.argsort(perm).numpy())
    assert res.details["matching"] == "decoder" and res.details["n_tokens"] == 2000
    assert res.details["histograms"]["decoder_max_cosine"][-1] == 64
    json.dumps(res.details)


def test_an_unrelated_sae_scores_far_lower_and_the_metrics_match_a_reference():
    w_a, w_b = random_weights(32, 64, seed=5), random_weights(32, 48, seed=7)
    sae_a, sae_b = build_sae("topk", w_a, k=8), build_sae("topk", w_b, k=8)
    xs = batches(32)
    res = compare(sae_a, sae_b, same_tokens(xs))
    assert res.metrics["hungarian_cosine"] < 0.5 and res.metrics["hungarian_frac_above_0.9"] == 0.0
    assert res.metrics["decoder_frac_above_0.9"] == 0.0 and res.metrics["activation_correlation"] < 0.5
    cos = ref_cosines(w_a["W_dec"], w_b["W_dec"])
    best = cos.max(1)
    assert res.metrics["decoder_max_cosine"] == pytest.approx(best.mean(), abs=1e-6)
    assert res.metrics["decoder_frac_above_0.7"] == pytest.approx((best > 0.7).mean())
    rows = np.flatnonzero(res.assignment >= 0)
    assert len(rows) == 48 and len(set(res.assignment[rows])) == 48  # one-to-one, min(d_a, d_b) pairs
    matched = cos[rows, res.assignment[rows]]
    assert res.metrics["hungarian_cosine"] == pytest.approx(matched.mean(), abs=1e-6)
    bound = np.sort(cos, axis=None)[::-1][:48].sum()  # the 48 largest cells: no assignment can beat them...
    assert matched.sum() <= bound + 1e-9
    for _ in range(20):  # ...and random one-to-one assignments, which it must beat
        cols = np.random.default_rng(_).permutation(48)
        assert matched.sum() >= cos[rows, cols].sum()
    assert np.isnan(res.per_latent["hungarian_cosine"]).sum() == 16
    with torch.no_grad():
        a = torch.cat([sae_a.encode(x) for x in xs]).numpy()
        b = torch.cat([sae_b.encode(x) for x in xs]).numpy()
    r, alive_a, alive_b = ref_pearson(a, b)
    best_r = r[:, alive_b].max(1)[alive_a]
    assert res.metrics["activation_max_correlation"] == pytest.approx(best_r.mean(), abs=1e-5)
    assert res.metrics["activation_frac_above_0.7"] == pytest.approx((best_r > 0.7).mean())
    on_matched = r[rows, res.assignment[rows]][alive_a[rows]]
    assert res.metrics["activation_correlation"] == pytest.approx(on_matched.mean(), abs=1e-5)


def test_dead_latents_of_a_are_nan_per_latent_and_left_out_of_the_means():
    w = random_weights(16, 64, seed=5)
    w["W_enc"][:, :5] = 0
    w["b_enc"][:5] = -1.0
    sae = build_sae("relu", w)
    res = compare(sae, sae, same_tokens(batches(16)))
    assert res.details["n_alive"]["a"] == 59
    for name in ("activation_correlation", "activation_max_correlation"):
        assert np.isnan(res.per_latent[name][:5]).all() and not np.isnan(res.per_latent[name][5:]).any()
        assert res.metrics[name] == pytest.approx(1.0, abs=1e-4)


# -- the skip paths --------------------------------------------------------------------------------
def test_different_d_in_skips_the_decoder_metrics_and_matches_on_activations():
    d_in_a, d_in_b, d_sae = 16, 24, 64
    w = random_weights(d_in_a, d_sae, seed=5)
    Q = torch.linalg.qr(torch.randn(d_in_b, d_in_a, generator=torch.Generator().manual_seed(8)))[0].T  # Q Qᵀ = I
    perm = torch.randperm(d_sae, generator=torch.Generator().manual_seed(9))
    # B reads x_b = x_a Q and encodes through Qᵀ W_enc: the same latents as A (permuted), at a wider hook point
    w_b = permuted({"W_enc": Q.T @ w["W_enc"], "W_dec": w["W_dec"] @ Q, "b_enc": w["b_enc"], "b_dec": torch.zeros(d_in_b)}, perm)
    sae_a, sae_b = build_sae("topk", w, k=8), build_sae("topk", w_b, k=8)
    xs = batches(d_in_a)
    res = compare(sae_a, sae_b, lambda: ((x, x @ Q) for x in xs))
    for name in ("decoder_max_cosine", "decoder_frac_above_0.9", "hungarian_cosine", "hungarian_frac_above_0.7"):
        assert res.metrics[name] is None and "different d_in (16 vs 24)" in res.details["skipped"][name]
    assert "decoder_max_cosine" not in res.per_latent
    assert res.metrics["activation_correlation"] == pytest.approx(1.0, abs=1e-4)
    assert res.metrics["activation_max_correlation"] == pytest.approx(1.0, abs=1e-4)
    assert res.details["matching"] == "activation"
    alive = ~np.isnan(res.per_latent["activation_correlation"])
    np.testing.assert_array_equal(res.assignment[alive], torch.argsort(perm).numpy()[alive])
    assert set(compare_decoders(sae_a, sae_b).details["skipped"]) == {n for n in METRICS if not n.startswith("activation")}


def test_without_activations_only_the_decoder_metrics_are_computed():
    w = random_weights(16, 64, seed=5)
    res = compare(build_sae("topk", w, k=8), build_sae("topk", w, k=8))
    assert res.metrics["hungarian_cosine"] == pytest.approx(1.0, abs=1e-6)
    assert res.metrics["activation_correlation"] is None
    assert res.details["skipped"]["activation_max_correlation"] == "no activations given"
    np.testing.assert_array_equal(res.assignment, np.arange(64))


# -- the matching on candidates (over max_assignment_cells) ----------------------------------------
def unit_sae(W):
    W = torch.as_tensor(W, dtype=torch.float32)
    W = W / W.norm(dim=1, keepdim=True)
    zeros = torch.zeros
    return build_sae("topk", {"W_enc": W.T, "W_dec": W, "b_enc": zeros(len(W)), "b_dec": zeros(W.shape[1])}, k=4)


def saes(W_a, W_b):
    return unit_sae(W_a), unit_sae(W_b)


def decoder_cosines(W_a, W_b):
    """The float64 cosines of the decoders the SAEs hold (rounded to float32 once normalised)."""
    return ref_cosines(*(sae.W_dec.detach() for sae in saes(W_a, W_b)))


def exact_total(cos):
    r, c = linear_sum_assignment(cos, maximize=True)
    return cos[r, c].sum()


def check_one_to_one(res, d_a, d_b, n=None):
    rows = np.flatnonzero(res.assignment >= 0)
    assert len(rows) == (min(d_a, d_b) if n is None else n)
    assert len(set(res.assignment[rows].tolist())) == len(rows) and res.assignment.max() < d_b
    assert np.isnan(res.per_latent["hungarian_cosine"]).sum() == d_a - len(rows)
    return rows


def planted_pair(d_a, d_b, d_in=48):
    """Random unit rows, B's ``slots`` near-duplicates (cosine ~0.97) of A's first latents, the rest unrelated."""
    gen = torch.Generator().manual_seed(d_a * d_b)
    W_a, W_b = torch.randn(d_a, d_in, generator=gen), torch.randn(d_b, d_in, generator=gen)
    planted = min(d_a, d_b) * 2 // 3
    slots = torch.randperm(d_b, generator=gen)[:planted]
    W_a /= W_a.norm(dim=1, keepdim=True)
    W_b[slots] = W_a[:planted] + 0.25 * torch.randn(planted, d_in, generator=gen) / d_in**0.5
    return W_a, W_b, slots.numpy()


def test_top_candidates_are_each_rows_and_each_columns_top_m_across_blocks():
    sim = np.random.default_rng(0).normal(size=(23, 17))
    blocks = [torch.from_numpy(sim[lo : lo + 7]) for lo in range(0, 23, 7)]
    rows, cols, vals, best, floor_r, floor_c = top_candidates(blocks, 17, m=3)
    want = {(i, j) for i in range(23) for j in np.argsort(-sim[i])[:3]}
    want |= {(i, j) for j in range(17) for i in np.argsort(-sim[:, j])[:3]}
    assert list(zip(rows.tolist(), cols.tolist())) == sorted(want)  # each pair once, by row then column
    np.testing.assert_array_equal(vals, sim[rows, cols])
    np.testing.assert_array_equal(best, sim.max(1))
    np.testing.assert_array_equal(floor_r, -np.sort(-sim, axis=1)[:, 2])
    np.testing.assert_array_equal(floor_c, -np.sort(-sim, axis=0)[2])
    with pytest.raises(ValueError, match="no rows"):
        top_candidates([], 17, m=3)


@pytest.mark.parametrize("shape", [(40, 40), (30, 50), (50, 30)])
def test_the_sparse_matching_with_every_candidate_reaches_the_dense_optimum(shape):
    d_a, d_b = shape
    gen = torch.Generator().manual_seed(d_a + 2 * d_b)
    W_a, W_b = torch.randn(d_a, 12, generator=gen), torch.randn(d_b, 12, generator=gen)
    res = compare_decoders(*saes(W_a, W_b), max_assignment_cells=1, candidates=max(shape))
    assert res.details["matching_method"] == f"sparse candidates (m={max(shape)})" and res.details["skipped"] == {}
    rows = check_one_to_one(res, d_a, d_b)
    cos = decoder_cosines(W_a, W_b)
    np.testing.assert_allclose(res.per_latent["hungarian_cosine"][rows], cos[rows, res.assignment[rows]], atol=1e-12)
    assert cos[rows, res.assignment[rows]].sum() == pytest.approx(exact_total(cos), abs=1e-9)
    assert res.details["matching_bound"] == pytest.approx(exact_total(cos) / min(shape), abs=1e-12)
    np.testing.assert_allclose(res.per_latent["decoder_max_cosine"], cos.max(1), atol=1e-12)
    json.dumps(res.details)


@pytest.mark.parametrize("m", [1, 2, 5])
@pytest.mark.parametrize("shape", [(60, 60), (60, 45), (45, 60)])
def test_the_bound_from_the_candidates_is_above_the_exact_optimum(shape, m):
    gen = torch.Generator().manual_seed(7 * m + shape[1])
    W_a, W_b = torch.randn(shape[0], 8, generator=gen), torch.randn(shape[1], 8, generator=gen)
    for cells in (1, shape[0] * shape[1] - 1):  # the pairs the candidates leave: never added, added when they fit
        res = compare_decoders(*saes(W_a, W_b), max_assignment_cells=cells, candidates=m)
        cos = decoder_cosines(W_a, W_b)
        rows = np.flatnonzero(res.assignment >= 0)
        assert cos[rows, res.assignment[rows]].sum() <= exact_total(cos) + 1e-9
        assert exact_total(cos) / min(shape) <= res.details["matching_bound"] + 1e-9


@pytest.mark.parametrize("shape", [(300, 300), (300, 240), (240, 300)])
def test_few_candidates_stay_one_to_one_and_near_the_optimum_with_planted_duplicates(shape):
    d_a, d_b = shape
    W_a, W_b, slots = planted_pair(d_a, d_b)
    res = compare_decoders(*saes(W_a, W_b), max_assignment_cells=d_a * d_b - 1, candidates=3)
    assert res.details["matching_method"] == "sparse candidates (m=3)"
    rows = check_one_to_one(res, d_a, d_b)
    cos = decoder_cosines(W_a, W_b)
    got, best = cos[rows, res.assignment[rows]].sum(), exact_total(cos)
    assert 0.99 * best <= got <= best + 1e-9  # 0.998 to 0.9999 here
    assert res.metrics["hungarian_cosine"] == pytest.approx(got / min(d_a, d_b), abs=1e-6)
    assert best / min(d_a, d_b) <= res.details["matching_bound"] <= 1.02 * best / min(d_a, d_b)
    np.testing.assert_array_equal(res.assignment[: len(slots)], slots)  # every planted pair is found


def test_a_permuted_copy_through_the_candidates_scores_one_and_recovers_the_permutation():
    w = random_weights(16, 64, seed=5)
    perm = torch.randperm(64, generator=torch.Generator().manual_seed(6))
    sae_a, sae_b = build_sae("topk", w, k=8), build_sae("topk", permuted(w, perm), k=8)
    res = compare(sae_a, sae_b, same_tokens(batches(16)), max_assignment_cells=100, candidates=2)
    assert res.details["matching_method"] == "sparse candidates (m=2)" and res.details["skipped"] == {}
    for name in ("hungarian_cosine", "decoder_max_cosine", "activation_correlation"):
        assert res.metrics[name] == pytest.approx(1.0, abs=1e-4), name
    assert res.details["matching_bound"] == pytest.approx(1.0, abs=1e-4)
    np.testing.assert_array_equal(res.assignment, torch.argsort(perm).numpy())
    assert res.details["matching"] == "decoder"


def test_activations_are_matched_on_candidates_over_the_limit_when_the_decoders_cannot_be():
    d_in_a, d_in_b, d_sae = 16, 24, 64
    w = random_weights(d_in_a, d_sae, seed=5)
    Q = torch.linalg.qr(torch.randn(d_in_b, d_in_a, generator=torch.Generator().manual_seed(8)))[0].T
    perm = torch.randperm(d_sae, generator=torch.Generator().manual_seed(9))
    w_b = permuted({"W_enc": Q.T @ w["W_enc"], "W_dec": w["W_dec"] @ Q, "b_enc": w["b_enc"], "b_dec": torch.zeros(d_in_b)}, perm)
    sae_a, sae_b = build_sae("topk", w, k=8), build_sae("topk", w_b, k=8)
    xs = batches(d_in_a)
    res = compare(sae_a, sae_b, lambda: ((x, x @ Q) for x in xs), max_assignment_cells=100, candidates=4)
    assert res.details["matching"] == "activation" and res.details["matching_method"] == "sparse candidates (m=4)"
    assert res.metrics["activation_correlation"] == pytest.approx(1.0, abs=1e-4)
    alive = ~np.isnan(res.per_latent["activation_correlation"])
    np.testing.assert_array_equal(res.assignment[alive], torch.argsort(perm).numpy()[alive])


def funnel(n=5, d_in=16):
    """A: n latents all nearest B's latent 0; B's latents 1.. all nearest A's latent 0. With one candidate a
    side the edges are A_i-B_0 and A_0-B_j, which match at most two pairs of n."""
    A = torch.zeros(n, d_in)
    A[:, 0] = 1.0
    A[torch.arange(n), torch.arange(1, n + 1)] = 0.1
    B = torch.zeros(n, d_in)
    B[0, 0] = 1.0
    B[1:, 0], B[1:, 1] = -1.0, 0.05
    return A, B


def test_candidates_without_a_full_matching_fall_back_to_greedy_and_say_so():
    A, B = funnel()
    cos = decoder_cosines(A, B)
    res = compare_decoders(*saes(A, B), max_assignment_cells=1, candidates=1)
    assert res.details["matching_method"] == "greedy candidates (m=1)"
    rows = check_one_to_one(res, 5, 5, n=int((res.assignment >= 0).sum()))
    assert 1 <= len(rows) <= 2 and res.assignment[rows[0]] in (0, 1)
    np.testing.assert_allclose(res.per_latent["hungarian_cosine"][rows], cos[rows, res.assignment[rows]], atol=1e-6)
    assert res.details["matching_bound"] >= exact_total(cos) / 5
    json.dumps(res.details)


@pytest.mark.parametrize("seed", [0, 1])
def test_the_pairs_the_candidates_leave_make_a_full_matching_when_they_fit(seed):
    gen = torch.Generator().manual_seed(seed)
    W_a, W_b = torch.randn(60, 8, generator=gen), torch.randn(60, 8, generator=gen)
    cos = decoder_cosines(W_a, W_b)
    greedy = compare_decoders(*saes(W_a, W_b), max_assignment_cells=1, candidates=1)
    assert greedy.details["matching_method"] == "greedy candidates (m=1)"
    check_one_to_one(greedy, 60, 60, n=int((greedy.assignment >= 0).sum()))
    res = compare_decoders(*saes(W_a, W_b), max_assignment_cells=60 * 60 - 1, candidates=1)
    assert res.details["matching_method"] == "sparse candidates (m=1)"
    rows = check_one_to_one(res, 60, 60)
    got = cos[rows, res.assignment[rows]].sum()
    assert 0.9 * exact_total(cos) <= got <= exact_total(cos) + 1e-9  # 0.94 and 0.97: one candidate a side
    assert greedy.details["matching_bound"] == res.details["matching_bound"] >= exact_total(cos) / 60 - 1e-9


def test_greedy_match_takes_the_largest_edge_first_and_stays_one_to_one():
    rows, cols = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 0, 2, 2])
    r, c = greedy_match(rows, cols, np.array([0.9, 0.5, 0.95, 0.1, 0.2]))
    assert sorted(zip(r.tolist(), c.tolist())) == [(0, 1), (1, 0), (2, 2)]
    r, c = greedy_match(rows[:0], cols[:0], np.zeros(0))
    assert len(r) == len(c) == 0
