"""Wide dictionaries: a token that fires many latents pads only its own part of a batch, not the batch.

``kernel.encode_sparse_parts`` splits each chunk of tokens into row ranges padded to their own widest
row; the sparsity and reconstruction scorers and the latent records consume those parts. Each test
puts one outlier row (firing most latents) among ordinary rows and checks the parts' bound and that
every result is bit-identical to the unsplit path (``encode_sparse`` of the whole batch as one part),
and, independently, close to the float64 reference.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

import saebench
from reference import decode as ref_decode
from reference import encode as ref_encode
from reference import random_weights
from saebench import kernel
from saebench.interp import scan
from saebench.plugins.scorers.reconstruction import ReconstructionScorer
from saebench.plugins.scorers.sparsity import SparsityScorer

D_IN, D_SAE, N, OUTLIER = 8, 320, 100, 37
PREFIXES = [40, 200, D_SAE]
CASES = [
    ("jumprelu", {"apply_b_dec_to_input": True}),
    ("relu", {}),
    ("matryoshka_batchtopk", {"k": 4, "metadata": {"training": {"config": {"prefixes": PREFIXES}}}}),
]


def outlier_case(arch: str, extra: dict, monkeypatch) -> tuple[saebench.SAE, torch.Tensor, dict]:
    """An SAE in 5 latent blocks, 16-token chunks, and x [100, 8] whose row 37 fires (nearly) every latent:
    input dimension 0 feeds every latent, and only that row has it."""
    monkeypatch.setattr(kernel, "MAX_BLOCK_LATENTS", 64)
    w = random_weights(D_IN, D_SAE, arch=arch, seed=3)
    w["W_enc"][0] = 1.0
    sae = saebench.build_sae(arch, w, **extra)
    sae.chunk_tokens = 16
    x = torch.randn(N, D_IN, generator=torch.Generator().manual_seed(4)) * 0.15
    x[:, 0] = 0.0
    x[OUTLIER, 0] = 20.0
    return sae, x, w


def reference(arch: str, extra: dict, x: torch.Tensor, w: dict) -> np.ndarray:
    """float64 latents from tests/reference.py (a Matryoshka BatchTopK SAE encodes as BatchTopK at inference)."""
    b_dec = extra.get("apply_b_dec_to_input", False)
    return ref_encode("batchtopk" if "batchtopk" in arch else arch, x.numpy(), w, apply_b_dec_to_input=b_dec)


def unsplit(monkeypatch) -> None:
    """Make encode_sparse_parts give encode_sparse of the whole batch as one part: the path before parts."""
    whole = kernel.encode_sparse

    def one_part(sae, x, slots=None, compute_dtype=None):
        yield slice(0, x.shape[0]), *whole(sae, x, compute_dtype=compute_dtype)

    monkeypatch.setattr(kernel, "encode_sparse_parts", one_part)


def inputs_of(x: torch.Tensor, contexts: torch.Tensor | None = None) -> saebench.EvalInputs:
    return saebench.EvalInputs(
        hookpoint="layers.0",
        activations=lambda b: iter(x.split(b)),
        tokens=torch.zeros(0, 0, dtype=torch.long),
        token_contexts=contexts,
    )


@pytest.mark.parametrize("arch,extra", CASES, ids=[a for a, _ in CASES])
def test_parts_cover_the_batch_within_the_bound_and_equal_encode_sparse(arch, extra, monkeypatch):
    sae, x, w = outlier_case(arch, extra, monkeypatch)
    f = reference(arch, extra, x, w)
    per_row = (f != 0).sum(axis=1)
    assert (
        len(kernel.plan_for(sae).blocks) == 5 and per_row[OUTLIER] > 0.8 * D_SAE > 3 * np.delete(per_row, OUTLIER).max()
    )
    with torch.no_grad():
        values, indices = sae.encode_sparse(x)
        parts = list(kernel.encode_sparse_parts(sae, x, slots=32))
    assert values.shape[1] == per_row.max()
    assert [p[0].start for p in parts] == [0] + [p[0].stop for p in parts[:-1]] and parts[-1][0].stop == N
    for s, v, i in parts:
        nnz = int((v != 0).sum())
        assert v.shape == i.shape and v.shape[0] * v.shape[1] <= max(32, 2 * nnz)
        assert v.shape[1] == int((values[s] != 0).sum(dim=1).max())  # padded to the part's own widest row
        assert torch.equal(v, values[s, : v.shape[1]]) and torch.equal(i, indices[s, : v.shape[1]])
        assert not values[s, v.shape[1] :].any() and not indices[s, v.shape[1] :].any()  # only padding left out
    (outlier_part,) = [p for p in parts if p[0].start <= OUTLIER < p[0].stop]
    assert outlier_part[0].stop - outlier_part[0].start <= 2
    dense = torch.zeros(N, D_SAE, dtype=torch.float64)
    for s, v, i in parts:
        dense[s].scatter_add_(1, i, v.double())
    np.testing.assert_allclose(dense.numpy(), f, atol=1e-4)


def test_split_rows_by_hand():
    # [2, 2] pads 4 <= 8; adding 40 would pad 120 > 2·44; [40, 1] pads 80 <= 2·41; [40, 1, 1] pads 120 > 84
    assert kernel.split_rows([2, 2, 40, 1, 1, 1], 8) == [(0, 2), (2, 4), (4, 6)]
    assert kernel.split_rows([0, 0, 0], 1) == [(0, 3)]  # nothing to pad
    assert kernel.split_rows([5, 5, 5, 5], 1) == [(0, 4)]  # no padding at all: 20 <= 2·20
    assert kernel.split_rows([], 8) == []


def test_topk_sae_gives_one_part_of_k_columns(monkeypatch):
    w = random_weights(D_IN, D_SAE, arch="topk", seed=3)
    sae = saebench.build_sae("topk", w, k=5)
    x = torch.randn(30, D_IN)
    with torch.no_grad():
        ((s, v, i),) = kernel.encode_sparse_parts(sae, x, slots=1)
        want_v, want_i = sae.encode_sparse(x)
    assert s == slice(0, 30) and torch.equal(v, want_v) and torch.equal(i, want_i)


@pytest.mark.parametrize("arch,extra", CASES, ids=[a for a, _ in CASES])
def test_scorers_on_an_outlier_batch_are_bit_identical_to_the_unsplit_path(arch, extra, monkeypatch):
    sae, x, w = outlier_case(arch, extra, monkeypatch)
    contexts = torch.arange(N) // 10
    monkeypatch.setattr(kernel, "PART_SLOTS", 1)  # parts as narrow as the bound allows
    got = [cls(batch_tokens=64).score(sae, inputs_of(x, contexts)) for cls in (SparsityScorer, ReconstructionScorer)]
    with monkeypatch.context() as m:
        unsplit(m)
        want = [
            cls(batch_tokens=64).score(sae, inputs_of(x, contexts)) for cls in (SparsityScorer, ReconstructionScorer)
        ]
    for g, u in zip(got, want):
        assert g.metrics == u.metrics and g.details == u.details
        assert g.units is not None and g.units.columns == u.units.columns
    if "prefixes" in str(extra):
        assert set(got[1].details["fvu_by_prefix"]) == {str(m) for m in PREFIXES}
    # and independently of both paths: float64 from the reference definitions
    f = reference(arch, extra, x, w)
    assert got[0].metrics["l0"] == pytest.approx((f != 0).sum(axis=1).mean(), rel=1e-12)
    assert got[0].details["firing_counts"] == (f != 0).sum(axis=0).tolist()
    x64 = x.double().numpy()
    sse = ((x64 - ref_decode(f, w)) ** 2).sum()
    assert got[1].metrics["fvu"] == pytest.approx(sse / ((x64 - x64.mean(0)) ** 2).sum(), rel=1e-5)


def test_latent_records_scan_is_bit_identical_to_the_unsplit_path(monkeypatch):
    sae, x, w = outlier_case("jumprelu", {}, monkeypatch)
    monkeypatch.setattr(kernel, "PART_SLOTS", 1)
    tracked = torch.full((D_SAE,), -1, dtype=torch.long)
    tracked[::3] = torch.arange(len(range(0, D_SAE, 3)))
    with torch.no_grad():
        got = scan._active(sae, x, tracked)
        with monkeypatch.context() as m:
            unsplit(m)
            want = scan._active(sae, x, tracked)
    assert all(torch.equal(a, b) for a, b in zip(got, want))
    f = reference("jumprelu", {}, x, w)
    rows, cols = np.nonzero(f[:, ::3])  # row-major, as _active lists them
    np.testing.assert_array_equal(got[0].numpy(), rows)
    np.testing.assert_array_equal(got[1].numpy(), cols)
    np.testing.assert_allclose(got[2].numpy(), f[:, ::3][rows, cols], rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("arch,extra", CASES, ids=[a for a, _ in CASES])
def test_forward_decodes_part_by_part_bit_identical_to_the_padded_decode(arch, extra, monkeypatch):
    sae, x, w = outlier_case(arch, extra, monkeypatch)
    got = sae(x.reshape(4, 25, D_IN))  # what the downstream splice calls (transcode is forward)
    assert got.shape == (4, 25, D_IN)
    assert torch.equal(got.reshape(N, D_IN), sae.decode_sparse(*sae.encode_sparse(x)))
    want = ref_decode(reference(arch, extra, x, w), w)  # float64 x̂ = f·W_dec + b_dec
    np.testing.assert_allclose(got.reshape(N, D_IN).double().numpy(), want, rtol=1e-4, atol=1e-4)
    assert sae(x[:0]).shape == (0, D_IN)
