"""Each architecture against the float64 reference in tests/reference.py, through every public path."""

import numpy as np
import pytest
import torch

import saebench
import saebench.kernel
from reference import decode as ref_decode
from reference import encode as ref_encode
from reference import random_weights

ARCHS = [("relu", {}), ("topk", {"k": 8}), ("jumprelu", {}), ("batchtopk", {"k": 8}), ("matryoshka_batchtopk", {"k": 8})]
D_IN, D_SAE = 48, 320


def dense_from_sparse(values, indices, d_sae):
    flat_v, flat_i = values.reshape(-1, values.shape[-1]), indices.reshape(-1, indices.shape[-1])
    out = torch.zeros(flat_v.shape[0], d_sae, dtype=torch.float64)
    out.scatter_add_(1, flat_i, flat_v.double())
    return out.reshape(*values.shape[:-1], d_sae)


@pytest.mark.parametrize("arch,extra", ARCHS)
@pytest.mark.parametrize("apply_b_dec", [False, True])
@pytest.mark.parametrize("act_scale", [1.0, 0.25])
def test_encode_matches_float64_reference(arch, extra, apply_b_dec, act_scale):
    w = random_weights(D_IN, D_SAE, arch=arch)
    sae = saebench.build_sae(arch, w, apply_b_dec_to_input=apply_b_dec, act_scale=act_scale, **extra)
    x = torch.randn(3, 77, D_IN) * 2  # odd token count: chunk edges and a leading batch dim
    expected = ref_encode(arch, x.numpy(), w, k=extra.get("k"), apply_b_dec_to_input=apply_b_dec, act_scale=act_scale)

    dense = sae.encode(x)
    assert dense.shape == (3, 77, D_SAE)
    np.testing.assert_allclose(dense.double().numpy(), expected, atol=2e-5)

    values, indices = sae.encode_sparse(x)
    assert values.shape == indices.shape and values.shape[:-1] == (3, 77)
    np.testing.assert_allclose(dense_from_sparse(values, indices, D_SAE).numpy(), expected, atol=2e-5)

    x_hat = sae(x)
    np.testing.assert_allclose(x_hat.double().numpy(), ref_decode(expected, w, act_scale), atol=5e-5)
    np.testing.assert_allclose(sae.decode(dense).double().numpy(), ref_decode(expected, w, act_scale), atol=5e-5)


@pytest.mark.parametrize("arch,extra", ARCHS)
def test_latent_blocks_match_the_reference(arch, extra, monkeypatch):
    """Wide dictionaries run in latent blocks (running top-k, merged non-zeros): same answer."""
    monkeypatch.setattr(saebench.kernel, "MAX_BLOCK_LATENTS", 64)  # 320 latents -> 5 blocks
    w = random_weights(D_IN, D_SAE, arch=arch)
    sae = saebench.build_sae(arch, w, apply_b_dec_to_input=True, **extra)
    assert len(saebench.kernel.plan_for(sae).blocks) == 5
    x = torch.randn(130, D_IN) * 2
    expected = ref_encode(arch, x.numpy(), w, k=extra.get("k"), apply_b_dec_to_input=True)
    np.testing.assert_allclose(sae.encode(x).double().numpy(), expected, atol=2e-5)
    values, indices = sae.encode_sparse(x)
    np.testing.assert_allclose(dense_from_sparse(values, indices, D_SAE).numpy(), expected, atol=2e-5)
    # threshold-style architectures (BatchTopK's k is a training average) pad to the widest row
    assert values.shape[-1] == (extra["k"] if arch == "topk" else int((expected != 0).sum(-1).max()))
    if arch != "topk":
        capped, _ = sae.encode_sparse(x, k_max=3)
        top3 = np.sort(np.sort(np.abs(expected), axis=-1)[:, -3:], axis=-1)
        np.testing.assert_allclose(np.sort(capped.abs().numpy(), axis=-1), top3, atol=2e-5)


@pytest.mark.parametrize("arch,extra", ARCHS)
def test_some_latents_fire_and_some_do_not(arch, extra):
    """Guards the other tests against vacuous agreement (all zeros, or everything active)."""
    sae = saebench.build_sae(arch, random_weights(D_IN, D_SAE, arch=arch), **extra)
    f = sae.encode(torch.randn(200, D_IN) * 2)
    frac = (f != 0).float().mean().item()
    assert 0.005 < frac < 0.6


def test_topk_keeps_exactly_k_and_sparse_width_is_k():
    sae = saebench.build_sae("topk", random_weights(D_IN, D_SAE, arch="topk"), k=8)
    x = torch.randn(50, D_IN) * 2
    assert ((sae.encode(x) != 0).sum(-1) <= 8).all()
    values, indices = sae.encode_sparse(x)
    assert values.shape == (50, 8) and indices.dtype == torch.int64
    assert (indices.sort(-1).values.diff(dim=-1) > 0).all()  # k distinct latents per token


def test_threshold_sparse_padding_is_value_zero_at_index_zero():
    sae = saebench.build_sae("relu", random_weights(D_IN, D_SAE, arch="relu"))
    values, indices = sae.encode_sparse(torch.randn(40, D_IN))
    counts = (values != 0).sum(-1)
    assert values.shape[-1] == counts.max()
    pad = torch.arange(values.shape[-1]) >= counts[:, None]
    assert (values[pad] == 0).all() and (indices[pad] == 0).all()
    assert (indices[~pad].view(-1) >= 0).all()


@pytest.mark.parametrize("arch", ["relu", "jumprelu"])
def test_a_batch_with_no_active_latent(arch):
    w = random_weights(D_IN, D_SAE, arch=arch)
    w["b_enc"] = torch.full((D_SAE,), -1e3)  # nothing can fire
    sae = saebench.build_sae(arch, w)
    x = torch.randn(2, 5, D_IN)
    values, indices = sae.encode_sparse(x)
    assert values.shape == indices.shape == (2, 5, 0)
    expected = w["b_dec"].expand(2, 5, D_IN)
    torch.testing.assert_close(sae.decode_sparse(values, indices), expected)
    torch.testing.assert_close(sae(x), expected)
    assert (sae.encode(x) == 0).all()


def test_k_max_keeps_the_largest_values():
    sae = saebench.build_sae("relu", random_weights(D_IN, D_SAE, arch="relu"))
    x = torch.randn(30, D_IN) * 2
    full = sae.encode(x)
    values, indices = sae.encode_sparse(x, k_max=5)
    assert values.shape == (30, 5)
    expected = full.topk(5, dim=-1).values.sort(-1).values
    np.testing.assert_allclose(values.sort(-1).values.numpy(), expected.numpy(), atol=1e-6)
    assert torch.equal(full.gather(1, indices)[values != 0], values[values != 0])


def test_jumprelu_threshold_is_strict():
    d_in, d_sae = 2, 3
    w = {"W_enc": torch.eye(d_in, d_sae), "W_dec": torch.ones(d_sae, d_in), "b_enc": torch.zeros(d_sae),
         "b_dec": torch.zeros(d_in), "threshold": torch.tensor([0.5, 0.5, 0.0])}
    sae = saebench.build_sae("jumprelu", w)
    f = sae.encode(torch.tensor([[0.5, 0.75]]))  # h = [0.5, 0.75, 0]: 0.5 is not > 0.5, 0 is not > 0
    assert f.tolist() == [[0.0, 0.75, 0.0]]


def test_autograd_uses_the_reference_path():
    sae = saebench.build_sae("jumprelu", random_weights(D_IN, D_SAE, arch="jumprelu"))
    sae.requires_grad_(True)
    x = torch.randn(10, D_IN)
    loss = (sae(x) - x).pow(2).sum()
    loss.backward()
    assert sae.W_dec.grad is not None and sae.W_dec.grad.abs().sum() > 0


def test_kernel_plan_follows_weight_updates():
    sae = saebench.build_sae("relu", random_weights(D_IN, D_SAE, arch="relu"))
    x = torch.randn(20, D_IN)
    before = sae.encode(x).clone()
    with torch.no_grad():
        sae.W_enc.mul_(2.0)
        sae.b_enc.mul_(2.0)
    np.testing.assert_allclose(sae.encode(x).numpy(), 2 * before.numpy(), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("arch,extra", ARCHS)
def test_bf16_compute_agrees_with_fp32(arch, extra):
    """bf16 moves values by ~1e-2 and can flip latents sitting at a threshold or at the k-th place."""
    sae = saebench.build_sae(arch, random_weights(D_IN, D_SAE, arch=arch), **extra)
    x = torch.randn(256, D_IN) * 2
    exact = sae.encode(x)
    approx = sae.encode(x, compute_dtype=torch.bfloat16)
    assert approx.dtype == torch.float32
    both = (exact != 0) & (approx != 0)
    assert (approx - exact)[both].abs().max().item() < 0.02 * exact.abs().max().item()
    flipped = ((exact != 0) != (approx != 0)).sum().item()
    assert flipped <= 0.03 * (exact != 0).sum().item()
    assert not torch.equal(approx, exact)  # the bf16 path really ran


def test_shape_errors_name_the_expected_shape():
    sae = saebench.build_sae("relu", random_weights(D_IN, D_SAE, arch="relu"))
    with pytest.raises(saebench.ShapeError, match=r"\[\.\.\., 48\], got \[4, 7\]"):
        sae.encode(torch.randn(4, 7))
    with pytest.raises(saebench.ShapeError, match="320"):
        sae.decode(torch.randn(4, 7))
    values, indices = sae.encode_sparse(torch.randn(4, D_IN))
    with pytest.raises(saebench.ShapeError, match="latent indices"):
        sae.decode_sparse(values, indices + D_SAE)


def test_build_sae_rejects_bad_weights_and_config():
    w = random_weights(D_IN, D_SAE, arch="topk")
    with pytest.raises(saebench.CheckpointError, match="needs k"):
        saebench.build_sae("topk", w)
    with pytest.raises(saebench.PluginError, match="unknown architecture 'topkk' \\(did you mean 'topk'\\?\\)"):
        saebench.build_sae("topkk", w, k=4)
    bad = dict(w, b_dec=torch.zeros(D_IN + 1))
    with pytest.raises(saebench.CheckpointError, match=r"b_dec has shape \[49\], expected \[d_in=48\]"):
        saebench.build_sae("relu", bad)
    nan = dict(w, W_dec=w["W_dec"].clone())
    nan["W_dec"][3, 4] = float("nan")
    with pytest.raises(saebench.CheckpointError, match="W_dec has 1 NaN/Inf"):
        saebench.build_sae("relu", nan)
    with pytest.raises(saebench.CheckpointError, match="missing tensor\\(s\\) threshold"):
        saebench.build_sae("jumprelu", w)
    with pytest.raises(saebench.ConfigError, match="act_scale"):
        saebench.build_sae("relu", w, act_scale=-1.0)


def test_config_records_what_the_sae_is():
    sae = saebench.build_sae("topk", random_weights(D_IN, D_SAE, arch="topk"), k=8, hook_name="layers.6", model_name="m")
    assert sae.cfg.model_dump()["d_in"] == D_IN and sae.cfg.d_sae == D_SAE and sae.cfg.k == 8
    assert sae.cfg.hook_name == "layers.6" and sae.cfg.model_name == "m"
    assert "arch=topk" in repr(sae)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("arch,extra", ARCHS)
def test_cuda_matches_reference(arch, extra):
    w = random_weights(D_IN, D_SAE, arch=arch)
    sae = saebench.build_sae(arch, w, apply_b_dec_to_input=True, **extra).to("cuda")
    x = torch.randn(300, D_IN) * 2
    expected = ref_encode(arch, x.numpy(), w, k=extra.get("k"), apply_b_dec_to_input=True)
    dense = sae.encode(x)
    assert dense.device.type == "cuda"
    np.testing.assert_allclose(dense.double().cpu().numpy(), expected, atol=1e-4)
    values, indices = sae.encode_sparse(x.cuda())
    np.testing.assert_allclose(dense_from_sparse(values.cpu(), indices.cpu(), D_SAE).numpy(), expected, atol=1e-4)
    np.testing.assert_allclose(sae(x).double().cpu().numpy(), ref_decode(expected, w), atol=1e-4)
