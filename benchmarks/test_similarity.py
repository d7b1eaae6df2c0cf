"""SAE-to-SAE similarity (saebench.compare.similarity), side by side.

Cross sums: ``activation_statistics`` of two TopK SAEs on the same tokens, its Σ aᵀb as the sparse product
(``SPARSE_DENSITY`` 1.01: always) and as the dense float32 GEMM slices (``SPARSE_DENSITY`` 0: never), beside
the bare float32 GEMM of that shape (the dense latents [tokens, d_sae] of A transposed times B's), which
is the ceiling of the dense path. Their GFLOP/s count that GEMM's flops only, although each
``activation_statistics`` row also encodes both SAEs' tokens and adds up the per-latent moments.

Matching: ``hungarian_cosine``'s one-to-one matching of decoder cosines, scipy's dense
``linear_sum_assignment`` (the exact optimum, and what runs up to ``max_assignment_cells``) beside the
matching on 32 candidates a latent that replaces it above. The decoders are random unit rows with two
thirds of B's latents near-duplicates (cosine ~0.97) of A's, as between SAEs trained from two seeds; the
mean cosines reached, and the candidate matching's bound on the optimum, go into the notes.
"""

from __future__ import annotations

import conftest
import numpy as np
import pytest
import torch
from conftest import NOTES, record, run

from saebench.compare import similarity
from saebench.compare.similarity import CANDIDATES, activation_statistics, decoder_match
from saebench.loading import build_sae

D_IN, D_SAE, K, TOKENS = (64, 512, 8, 256) if conftest.SMALL else (640, 4096, 32, 20000)
N_MATCH = 256 if conftest.SMALL else 4096
BATCH = 4096  # tokens a batch, as saebench.run.compare reads the evaluation cache
CROSS = f"activation_statistics cross sums, TopK k={K}, {TOKENS} tokens: {TOKENS}x{D_SAE}x{D_SAE}"
MATCH = f"hungarian_cosine matching, decoders d_in {D_IN}: {N_MATCH}x{N_MATCH}"
QUALITY: dict[str, tuple[float, float | None]] = {}


def topk_sae(seed: int):
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) / D_SAE**0.5,
        "b_enc": torch.zeros(D_SAE),
        "b_dec": torch.zeros(D_IN),
    }
    return build_sae("topk", w, k=K)


@pytest.fixture(scope="module")
def cross():
    x = torch.randn(TOKENS, D_IN, generator=torch.Generator().manual_seed(2))
    sae_a, sae_b = topk_sae(0), topk_sae(1)
    with torch.no_grad():
        a, b = sae_a.encode(x), sae_b.encode(x)
    return sae_a, sae_b, x, a, b


def pairs(x):
    return [(x[lo : lo + BATCH], x[lo : lo + BATCH]) for lo in range(0, len(x), BATCH)]


def cross_flops() -> float:
    return 2.0 * TOKENS * D_SAE * D_SAE


def test_cross_bare_gemm(benchmark, cross):
    _, _, _, a, b = cross
    at = a.T.contiguous()
    run(benchmark, lambda: at @ b)
    record(benchmark, CROSS, "bare GEMM: float32 aᵀb of the dense latents", cross_flops(), TOKENS, "ceiling")


@pytest.mark.parametrize("path", ["dense", "sparse"])
def test_cross_activation_statistics(benchmark, cross, path, monkeypatch):
    sae_a, sae_b, x, a, b = cross
    monkeypatch.setattr(similarity, "SPARSE_DENSITY", 0.0 if path == "dense" else 1.01)
    corr = run(benchmark, lambda: activation_statistics(pairs(x), sae_a, sae_b))
    ref = (a.double().T @ b.double()) / TOKENS - torch.outer(a.double().mean(0), b.double().mean(0))
    np.testing.assert_allclose(corr.cov, ref.numpy(), atol=1e-4 * float(ref.abs().max()))
    if path == "dense":
        record(benchmark, CROSS, "activation_statistics, dense float32 GEMM slices", cross_flops(), TOKENS, "naive")
    else:
        record(benchmark, CROSS, "activation_statistics, sparse product (saebench's choice)", cross_flops(), TOKENS)


@pytest.fixture(scope="module")
def decoders():
    g = torch.Generator().manual_seed(3)
    W_a, W_b = torch.randn(N_MATCH, D_IN, generator=g), torch.randn(N_MATCH, D_IN, generator=g)
    W_a /= W_a.norm(dim=1, keepdim=True)
    planted = N_MATCH * 2 // 3
    slots = torch.randperm(N_MATCH, generator=g)[:planted]
    W_b[slots] = W_a[:planted] + 0.25 * torch.randn(planted, D_IN, generator=g) / D_IN**0.5
    return W_a, W_b / W_b.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("how", ["dense", "candidates"])
def test_matching(benchmark, decoders, how):
    W_a, W_b = decoders
    cells = N_MATCH * N_MATCH if how == "dense" else N_MATCH * N_MATCH - 1  # one cell fewer: the candidates
    found = run(benchmark, lambda: decoder_match(W_a, W_b, max_cells=cells, candidates=CANDIDATES))
    assert found.method == ("linear_sum_assignment" if how == "dense" else f"sparse candidates (m={CANDIDATES})")
    assert len(set(found.cols.tolist())) == len(found.rows) == N_MATCH
    QUALITY[found.method] = (float(found.values.mean()), found.bound)
    if how == "dense":
        record(benchmark, MATCH, "scipy linear_sum_assignment on the dense cosines", 0, 0, "naive")
    else:
        record(benchmark, MATCH, f"saebench: exact on {CANDIDATES} candidates a latent (sparse LAPJV)", 0, 0)
    if len(QUALITY) == 2:
        exact = QUALITY["linear_sum_assignment"][0]
        lines = [f"Mean matched cosine on {N_MATCH}x{N_MATCH} (the dense optimum: {exact:.6f}):", ""]
        for method, (mean, bound) in QUALITY.items():
            tail = "" if bound is None else f", bound on the optimum {bound:.6f}"
            lines.append(f"- {method}: {mean:.6f} ({mean / exact:.6f} of the optimum{tail})")
        NOTES["similarity: matching quality"] = "\n".join(lines)
