"""Encoder and decoder throughput, side by side: the bare GEMM ceiling, the naive torch
(SAELens-style) implementation, sae-lens itself when installed, and saebench's kernel."""

from __future__ import annotations

import importlib.util
from types import SimpleNamespace

import conftest
import pytest
import torch
import torch.nn.functional as F
from conftest import SHAPES, TOKENS, K, record, run

import saebench
import saebench.kernel
from saebench.kernel import onednn_available

HAVE_SAELENS = importlib.util.find_spec("sae_lens") is not None


@pytest.fixture(scope="module", params=SHAPES, ids=[f"{a}x{b}" for a, b in SHAPES])
def case(request):
    d_in, d_sae = request.param
    g = torch.Generator().manual_seed(0)
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
        # pre-activations are ~N(0, 1): a threshold of 2.7 leaves ~0.35% of latents active
        # (L0 ~85 at d_sae 24576), the sparsity of trained SAEs
        "threshold": torch.full((d_sae,), 2.7),
    }
    x = torch.randn(TOKENS, d_in, generator=g)
    relu_w = {k: v for k, v in w.items() if k != "threshold"}
    sparse_relu_w = dict(relu_w, b_enc=relu_w["b_enc"] - 2.7)  # the same L0 as the JumpReLU
    c = SimpleNamespace(d_in=d_in, d_sae=d_sae, x=x, w=w, flops=2.0 * TOKENS * d_in * d_sae, tag=f"{d_in}x{d_sae}")
    c.relu = saebench.build_sae("relu", sparse_relu_w)
    c.topk = saebench.build_sae("topk", relu_w, k=K)
    c.jumprelu = saebench.build_sae("jumprelu", w)
    for sae in (c.relu, c.topk, c.jumprelu):  # build the cached packed weights outside the timings
        sae.encode_sparse(x[:8])
    c.Wt_packed = (
        torch.ops.mkldnn._reorder_linear_weight(w["W_enc"].t().contiguous(), 256) if onednn_available() else None
    )
    return c


def _saelens(arch: str, c):
    from sae_lens.saes.jumprelu_sae import JumpReLUSAE, JumpReLUSAEConfig
    from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

    if arch == "topk":
        sae = TopKSAE(
            TopKSAEConfig(d_in=c.d_in, d_sae=c.d_sae, k=K, apply_b_dec_to_input=False, dtype="float32", device="cpu")
        )
        state = {k: v for k, v in c.w.items() if k != "threshold"}
    else:
        sae = JumpReLUSAE(
            JumpReLUSAEConfig(d_in=c.d_in, d_sae=c.d_sae, apply_b_dec_to_input=False, dtype="float32", device="cpu")
        )
        state = c.w
    sae.load_state_dict(state)
    return sae


# -- the ceiling --------------------------------------------------------------------------------
def test_gemm_mkl(benchmark, case):
    W, b = case.w["W_enc"], case.w["b_enc"]
    with torch.no_grad():
        run(benchmark, lambda: torch.addmm(b, case.x, W))
    record(benchmark, f"gemm {case.tag}", "bare GEMM: torch.addmm (MKL)", case.flops, TOKENS, "ceiling")


def test_gemm_onednn_chunked(benchmark, case):
    if case.Wt_packed is None:
        pytest.skip("no oneDNN")
    lin, W, b, x = torch.ops.mkldnn._linear_pointwise, case.Wt_packed, case.w["b_enc"], case.x

    def gemm():
        for i in range(0, x.shape[0], 256):
            lin(x[i : i + 256], W, b, "none", [], "")

    run(benchmark, gemm)
    record(benchmark, f"gemm {case.tag}", "bare GEMM: oneDNN packed, 256-token chunks", case.flops, TOKENS, "ceiling")


# -- ReLU -----------------------------------------------------------------------------------------
def test_relu_naive(benchmark, case):
    W, b = case.relu.W_enc, case.relu.b_enc
    with torch.no_grad():
        run(benchmark, lambda: torch.relu(case.x @ W + b))
    record(benchmark, f"relu {case.tag}", "ReLU naive torch (dense)", case.flops, TOKENS, "naive")


def test_relu_saebench_dense(benchmark, case):
    run(benchmark, lambda: case.relu.encode(case.x))
    record(benchmark, f"relu {case.tag}", "ReLU saebench encode (dense)", case.flops, TOKENS)


def test_relu_saebench_sparse(benchmark, case):
    run(benchmark, lambda: case.relu.encode_sparse(case.x))
    record(benchmark, f"relu {case.tag}", "ReLU saebench encode_sparse", case.flops, TOKENS)


# -- TopK -----------------------------------------------------------------------------------------
def topk_saelens_style(x, W, b, k):
    h = x @ W + b
    values, indices = h.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(h).scatter(-1, indices, values.relu())


def test_topk_naive(benchmark, case):
    with torch.no_grad():
        run(benchmark, lambda: topk_saelens_style(case.x, case.w["W_enc"], case.w["b_enc"], K))
    record(
        benchmark, f"topk {case.tag}", "TopK naive torch, SAELens-style (dense scatter)", case.flops, TOKENS, "naive"
    )


@pytest.mark.skipif(not HAVE_SAELENS, reason="sae-lens not installed")
def test_topk_saelens(benchmark, case):
    sae = _saelens("topk", case)
    with torch.no_grad():
        run(benchmark, lambda: sae.encode(case.x))
    record(benchmark, f"topk {case.tag}", "TopK sae-lens TopKSAE.encode", case.flops, TOKENS, "peer")


def test_topk_saebench_sparse(benchmark, case):
    run(benchmark, lambda: case.topk.encode_sparse(case.x))
    record(benchmark, f"topk {case.tag}", "TopK saebench encode_sparse", case.flops, TOKENS)


def test_topk_saebench_dense(benchmark, case):
    run(benchmark, lambda: case.topk.encode(case.x))
    record(benchmark, f"topk {case.tag}", "TopK saebench encode (dense)", case.flops, TOKENS)


# -- JumpReLU -------------------------------------------------------------------------------------
def test_jumprelu_naive(benchmark, case):
    W, b, th = case.w["W_enc"], case.w["b_enc"], case.w["threshold"]

    def naive():
        h = case.x @ W + b
        return torch.relu(h) * (h > th)

    with torch.no_grad():
        run(benchmark, naive)
    record(
        benchmark, f"jumprelu {case.tag}", "JumpReLU naive torch, SAELens-style (dense)", case.flops, TOKENS, "naive"
    )


@pytest.mark.skipif(not HAVE_SAELENS, reason="sae-lens not installed")
def test_jumprelu_saelens(benchmark, case):
    sae = _saelens("jumprelu", case)
    with torch.no_grad():
        run(benchmark, lambda: sae.encode(case.x))
    record(benchmark, f"jumprelu {case.tag}", "JumpReLU sae-lens JumpReLUSAE.encode", case.flops, TOKENS, "peer")


def test_jumprelu_saebench_sparse(benchmark, case):
    run(benchmark, lambda: case.jumprelu.encode_sparse(case.x))
    record(benchmark, f"jumprelu {case.tag}", "JumpReLU saebench encode_sparse", case.flops, TOKENS)


def test_jumprelu_saebench_dense(benchmark, case):
    run(benchmark, lambda: case.jumprelu.encode(case.x))
    record(benchmark, f"jumprelu {case.tag}", "JumpReLU saebench encode (dense)", case.flops, TOKENS)


# -- decode ---------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def topk_codes(case):
    values, indices = case.topk.encode_sparse(case.x)
    dense = torch.zeros(TOKENS, case.d_sae).scatter_(1, indices, values)
    return values, indices, dense


def test_decode_dense(benchmark, case, topk_codes):
    _, _, dense = topk_codes
    W, b = case.w["W_dec"], case.w["b_dec"]
    run(benchmark, lambda: torch.addmm(b, dense, W))
    record(benchmark, f"decode k={K} {case.tag}", "dense decode f @ W_dec + b_dec", 0, TOKENS, "naive")


def test_decode_coo(benchmark, case, topk_codes):
    _, _, dense = topk_codes
    W, b = case.w["W_dec"], case.w["b_dec"]
    sp = dense.to_sparse()
    run(benchmark, lambda: torch.sparse.mm(sp, W) + b)
    record(benchmark, f"decode k={K} {case.tag}", "COO torch.sparse.mm", 0, TOKENS)


def test_decode_saebench_sparse(benchmark, case, topk_codes):
    values, indices, dense = topk_codes
    out = run(benchmark, lambda: case.topk.decode_sparse(values, indices))
    torch.testing.assert_close(out, torch.addmm(case.w["b_dec"], dense, case.w["W_dec"]), atol=1e-4, rtol=1e-4)
    record(benchmark, f"decode k={K} {case.tag}", "saebench decode_sparse (embedding_bag)", 0, TOKENS)


def test_decode_embedding_bag_is_what_we_call(case, topk_codes):
    values, indices, _ = topk_codes
    direct = F.embedding_bag(indices, case.w["W_dec"], per_sample_weights=values, mode="sum") + case.w["b_dec"]
    torch.testing.assert_close(case.topk.decode_sparse(values, indices), direct)


# -- bf16 compute (optional mode) -----------------------------------------------------------------
def test_topk_saebench_sparse_bf16(benchmark, case):
    run(benchmark, lambda: case.topk.encode_sparse(case.x, compute_dtype=torch.bfloat16))
    record(benchmark, f"topk {case.tag}", "TopK saebench encode_sparse, bf16 compute", case.flops, TOKENS)
    _, exact = case.topk.encode_sparse(case.x)
    _, approx = case.topk.encode_sparse(case.x, compute_dtype=torch.bfloat16)
    same = torch.zeros(TOKENS, case.d_sae, dtype=torch.bool).scatter_(1, exact, True).gather(1, approx).float().mean()
    conftest.NOTES[f"bf16 accuracy {case.tag}"] = (
        f"TopK k={K}: {100 * same:.2f}% of the bf16 top-k indices are also in the fp32 top-k set."
    )


def test_jumprelu_saebench_sparse_bf16(benchmark, case):
    run(benchmark, lambda: case.jumprelu.encode_sparse(case.x, compute_dtype=torch.bfloat16))
    record(benchmark, f"jumprelu {case.tag}", "JumpReLU saebench encode_sparse, bf16 compute", case.flops, TOKENS)
    exact = case.jumprelu.encode(case.x[:512])
    approx = case.jumprelu.encode(case.x[:512], compute_dtype=torch.bfloat16)
    both = (exact != 0) & (approx != 0)
    flips = ((exact != 0) != (approx != 0)).sum().item() / max(1, (exact != 0).sum().item())
    err = (approx - exact)[both].abs().max().item() if both.any() else 0.0
    conftest.NOTES[f"bf16 accuracy {case.tag}"] = conftest.NOTES.get(f"bf16 accuracy {case.tag}", "") + (
        f" JumpReLU: {100 * flips:.2f}% of active latents flip on/off at the threshold; "
        f"max |error| on latents active in both {err:.3f} (values ~{exact[both].abs().mean().item():.1f})."
    )


# -- a wide dictionary: latent blocks and the running top-k ---------------------------------------
WIDE = (64, 4096, 128) if conftest.SMALL else (768, 131072, 1024)  # d_in, d_sae, tokens


@pytest.fixture(scope="module")
def wide():
    d_in, d_sae, tokens = WIDE
    g = torch.Generator().manual_seed(1)
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g).div_(d_in**0.5),
        "W_dec": torch.randn(d_sae, d_in, generator=g).div_(d_sae**0.5),
        "b_enc": torch.zeros(d_sae),
        "b_dec": torch.zeros(d_in),
    }
    sae = saebench.build_sae("topk", w, k=K)
    x = torch.randn(tokens, d_in, generator=g)
    sae.encode_sparse(x[:8])
    return SimpleNamespace(sae=sae, w=w, x=x, flops=2.0 * tokens * d_in * d_sae, tokens=tokens, tag=f"{d_in}x{d_sae}")


def test_wide_topk_naive(benchmark, wide):
    with torch.no_grad():
        run(benchmark, lambda: topk_saelens_style(wide.x, wide.w["W_enc"], wide.w["b_enc"], K))
    record(
        benchmark,
        f"topk {wide.tag}",
        "TopK naive torch, SAELens-style (dense scatter)",
        wide.flops,
        wide.tokens,
        "naive",
    )


def test_wide_topk_saebench_sparse(benchmark, wide):
    blocks = len(saebench.kernel.plan_for(wide.sae).blocks)
    run(benchmark, lambda: wide.sae.encode_sparse(wide.x))
    record(
        benchmark,
        f"topk {wide.tag}",
        f"TopK saebench encode_sparse ({blocks} latent blocks, running top-k)",
        wide.flops,
        wide.tokens,
    )


def test_wide_gemm_ceiling(benchmark, wide):
    if not onednn_available():
        pytest.skip("no oneDNN")
    W = torch.ops.mkldnn._reorder_linear_weight(wide.w["W_enc"].t().contiguous(), 256)
    b, x = wide.w["b_enc"], wide.x

    def gemm():
        for i in range(0, x.shape[0], 256):
            torch.ops.mkldnn._linear_pointwise(x[i : i + 256], W, b, "none", [], "")

    run(benchmark, gemm)
    record(
        benchmark, f"gemm {wide.tag}", "bare GEMM: oneDNN packed, 256-token chunks", wide.flops, wide.tokens, "ceiling"
    )
