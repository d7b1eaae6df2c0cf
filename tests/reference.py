"""Independent float64 definitions of the architectures, written from ../shared/PEERS.md, sharing no code with saebench."""

from __future__ import annotations

import numpy as np
import torch


def random_weights(d_in: int, d_sae: int, *, arch: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """SAELens-named weights at a scale where a fair share of latents fire (and many do not)."""
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g) / d_in**0.5,
        "W_dec": torch.randn(d_sae, d_in, generator=g) / d_sae**0.5,
        "b_enc": torch.randn(d_sae, generator=g) * 0.1 - 0.2,
        "b_dec": torch.randn(d_in, generator=g) * 0.1,
    }
    if arch == "jumprelu":
        w["threshold"] = torch.rand(d_sae, generator=g) * 0.8
    if arch in ("batchtopk", "matryoshka_batchtopk"):  # one global threshold, a 0-d tensor
        w["threshold"] = torch.tensor(0.3)
    if arch == "gated":  # b_enc stays in the dict: a gated SAE has none and ignores it
        w["b_gate"] = torch.randn(d_sae, generator=g) * 0.1 - 0.2
        w["r_mag"] = torch.randn(d_sae, generator=g) * 0.3
        w["b_mag"] = torch.randn(d_sae, generator=g) * 0.2 - 0.05
    return w


def pre_acts(x, w, apply_b_dec_to_input=False, act_scale=1.0):
    x = np.asarray(x, dtype=np.float64) * act_scale
    if apply_b_dec_to_input:
        x = x - np.asarray(w["b_dec"], dtype=np.float64)
    return x @ np.asarray(w["W_enc"], dtype=np.float64) + np.asarray(w["b_enc"], dtype=np.float64)


def gated(x, w, apply_b_dec_to_input=False, act_scale=1.0):
    """(f, π_gate) of the Gated SAE (Rajamanoharan et al. 2024): f = 1[π_gate > 0]·ReLU(π_mag), with
    π_gate = x'·W_gate + b_gate, π_mag = x'·(exp(r_mag) ⊙ W_gate) + b_mag, W_gate = W_enc (no b_enc)."""
    f64 = lambda name: np.asarray(w[name], dtype=np.float64)
    xp = np.asarray(x, dtype=np.float64) * act_scale
    if apply_b_dec_to_input:
        xp = xp - f64("b_dec")
    pi_gate = xp @ f64("W_enc") + f64("b_gate")
    pi_mag = xp @ (f64("W_enc") * np.exp(f64("r_mag"))[None, :]) + f64("b_mag")
    return np.where(pi_gate > 0, np.maximum(pi_mag, 0.0), 0.0), pi_gate


def encode(arch, x, w, k=None, apply_b_dec_to_input=False, act_scale=1.0):
    if arch == "gated":
        return gated(x, w, apply_b_dec_to_input, act_scale)[0]
    h = pre_acts(x, w, apply_b_dec_to_input, act_scale)
    if arch == "relu":
        return np.maximum(h, 0.0)
    if arch == "jumprelu":
        theta = np.asarray(w["threshold"], dtype=np.float64)
        return h * (h > theta)
    if arch in ("batchtopk", "matryoshka_batchtopk"):  # inference: JumpReLU with one θ; θ < 0 acts as 0
        theta = max(float(np.asarray(w["threshold"], dtype=np.float64).reshape(())), 0.0)
        return h * (h > theta)
    if arch == "topk":
        f = np.zeros_like(h)
        idx = np.argsort(-h, axis=-1, kind="stable")[..., :k]
        np.put_along_axis(f, idx, np.maximum(np.take_along_axis(h, idx, axis=-1), 0.0), axis=-1)
        return f
    raise ValueError(arch)


def decode(f, w, act_scale=1.0):
    x_hat = np.asarray(f, dtype=np.float64) @ np.asarray(w["W_dec"], dtype=np.float64) + np.asarray(w["b_dec"], dtype=np.float64)
    return x_hat / act_scale


def gated_losses(x, w, l1):
    """The Gated SAE's training terms (Rajamanoharan et al. 2024, section 3.2), per token summed over d_in and
    averaged over tokens, on inputs x already in training units (apply_b_dec_to_input, act_scale 1):
    mse = ‖x − x̂‖², l1 = λ·Σ_i ReLU(π_gate)_i·‖W_dec,i‖, aux = ‖x − (ReLU(π_gate)·W_dec + b_dec)‖²."""
    x = np.asarray(x, dtype=np.float64)
    f, pi_gate = gated(x, w, apply_b_dec_to_input=True)
    W_dec, b_dec = np.asarray(w["W_dec"], dtype=np.float64), np.asarray(w["b_dec"], dtype=np.float64)
    gate = np.maximum(pi_gate, 0.0)
    return {
        "mse": ((f @ W_dec + b_dec - x) ** 2).sum(-1).mean(),
        "l1": l1 * (gate * np.linalg.norm(W_dec, axis=1)).sum(-1).mean(),
        "aux": ((gate @ W_dec + b_dec - x) ** 2).sum(-1).mean(),
    }
