"""BatchTopK and Gated SAE architectures for saebench: the example third-party plugin.

Notation as in :mod:`saebench.sae`: x' = s·x − b_dec when ``apply_b_dec_to_input``
else s·x (s = ``act_scale``), and x̂ = (f·W_dec + b_dec) / s.

- ``batchtopk``: trained by keeping the k·B largest ReLU'd pre-activations of a
  batch of B tokens; run at inference as a JumpReLU with ONE global threshold:
  f = h·1[h > max(θ, 0)], h = x'·W_enc + b_enc. θ is the weight ``threshold``, a
  0-d tensor (shape []; a [1] tensor is accepted and squeezed), as
  dictionary_learning stores it. ``cfg.k`` is the average k it was trained with.
- ``gated`` (SAELens names): f = 1[x'·W_enc + b_gate > 0] ⊙ ReLU(x'·(W_enc ⊙ e^r_mag) + b_mag),
  where e^r_mag scales each latent's column of W_enc. There is no b_enc.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from torch import Tensor

import saebench


class BatchTopKSAE(saebench.SAE):
    """BatchTopK SAE: f = h·1[h > θ], one global threshold θ (JumpReLU at inference); k·B per batch in training."""

    arch = "batchtopk"
    weight_shapes: ClassVar[dict[str, tuple[str, ...]]] = {**saebench.SAE.weight_shapes, "threshold": ()}
    sparse_from_relu = True  # k is a training statistic: inference is a threshold, not a per-token top-k
    latent_blocks = True  # one scalar θ fits any slice of latents

    def validate_config(self, cfg: saebench.SAEConfig) -> None:
        if cfg.k is None:
            raise saebench.CheckpointError(
                "a batchtopk SAE needs k (the average latents per token it was trained with)"
            )
        if cfg.k > cfg.d_sae:
            raise saebench.CheckpointError(f"k={cfg.k} is larger than d_sae={cfg.d_sae}")

    @classmethod
    def from_weights(
        cls, weights: Mapping[str, Any], cfg: saebench.SAEConfig, where: str | None = None
    ) -> BatchTopKSAE:
        """Build from SAELens-named weights; ``threshold`` may be shape [] or [1]."""
        theta = weights.get("threshold")
        if theta is not None and tuple(getattr(theta, "shape", ())) == (1,):
            weights = {**weights, "threshold": torch.as_tensor(theta).reshape(())}
        return super().from_weights(weights, cfg, where)

    def _theta(self) -> Tensor:
        # f is a ReLU'd quantity, so a negative θ (dictionary_learning's "not yet estimated" -1) means plain ReLU.
        return self.threshold.clamp(min=0)

    # -- the inference definition -----------------------------------------------------------
    def activation(self, h: Tensor) -> Tensor:
        return h * (h > self._theta()).to(h.dtype)

    # h > θ  <=>  ReLU(x'·W_enc + (b_enc − θ)) > 0: the GEMM's fused ReLU finds the active latents,
    # adding θ back to the survivors gives h (as the built-in jumprelu does, with a scalar θ).
    def fused_epilogue(self) -> tuple[Tensor, str]:
        return self.b_enc - self._theta(), "relu"

    def finish_dense(self, g: Tensor, latents: slice) -> Tensor:
        return g.addcmul_(self._theta().to(g.dtype), g.sign())

    def finish_sparse(self, values: Tensor, latents: Tensor) -> Tensor:
        return values + self._theta().to(values.dtype)

    # -- the training-time definition -------------------------------------------------------
    def encode_batch_topk(self, x: Tensor, k: int | None = None) -> Tensor:
        """Training-time latents: ReLU(h) at the k·B largest entries across all B tokens of x, 0 elsewhere.

        x [..., d_in] is one batch of B = x.numel() // d_in tokens; k defaults to ``cfg.k``. When fewer
        than k·B entries are positive, every positive one is kept. Ties at the cut are broken
        arbitrarily. Plain torch ops (autograd works); the output is dense [..., d_sae].
        """
        x = self._check_input(x)
        k = self.cfg.k if k is None else k
        if k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        acts = self.pre_acts(x).relu()
        flat = acts.reshape(-1)
        keep = min(k * (flat.numel() // self.cfg.d_sae), flat.numel())
        top = flat.topk(keep, sorted=False)
        return torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(acts)


class GatedSAE(saebench.SAE):
    """Gated SAE: f = 1[x'·W_enc + b_gate > 0] ⊙ ReLU(x'·(W_enc ⊙ exp(r_mag)) + b_mag), SAELens weight names."""

    arch = "gated"
    # No b_enc: the gate and the magnitude path each have their own bias.
    weight_shapes: ClassVar[dict[str, tuple[str, ...]]] = {
        "W_enc": ("d_in", "d_sae"),
        "W_dec": ("d_sae", "d_in"),
        "b_dec": ("d_in",),
        "b_gate": ("d_sae",),
        "r_mag": ("d_sae",),
        "b_mag": ("d_sae",),
    }

    def validate_config(self, cfg: saebench.SAEConfig) -> None:
        if cfg.k is not None:
            raise saebench.CheckpointError("a gated SAE has no k; remove it from the config")

    # The shared projection h = x'·W_enc is this architecture's "pre-activation": both paths are
    # affine in it (x'·(W_enc ⊙ e^r) = h ⊙ e^r), so one GEMM serves both. The kernel's generic path
    # is used unchanged: its fused GEMM adds the bias from fused_epilogue (zero here; it folds b_dec in
    # itself), then calls activation() on each chunk.
    def pre_acts(self, x: Tensor) -> Tensor:
        return self.prepare_input(x) @ self.W_enc

    def activation(self, h: Tensor) -> Tensor:
        gate = (h + self.b_gate) > 0
        magnitude = torch.relu(h * self.r_mag.exp() + self.b_mag)
        return magnitude * gate.to(magnitude.dtype)

    def fused_epilogue(self) -> tuple[Tensor, str]:
        return torch.zeros_like(self.b_gate), "none"


@saebench.hookimpl
def register_architectures(register):
    register(BatchTopKSAE)
    register(GatedSAE)
