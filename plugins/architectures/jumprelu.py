"""JumpReLU SAE (Gemma Scope): f = h·1[h > θ] with a learned per-latent threshold θ."""

from __future__ import annotations

from typing import ClassVar

from torch import Tensor

import saebench


class JumpReLUSAE(saebench.SAE):
    """JumpReLU SAE: f = h·1[h > threshold], per-latent threshold (strict inequality)."""

    arch = "jumprelu"
    weight_shapes: ClassVar[dict[str, tuple[str, ...]]] = {**saebench.SAE.weight_shapes, "threshold": ("d_sae",)}
    sparse_from_relu = True
    latent_blocks = True

    def activation(self, h: Tensor) -> Tensor:
        return h * (h > self.threshold).to(h.dtype)

    # h > θ  <=>  ReLU(x'·W_enc + (b_enc - θ)) > 0, so the GEMM's fused ReLU finds the active latents,
    # and adding θ back to the survivors gives h (within one rounding of θ).
    def _epilogue(self) -> tuple[Tensor, str]:
        return self.b_enc - self.threshold, "relu"

    def _finish_dense(self, g: Tensor, latents: slice) -> Tensor:
        return g.addcmul_(self.threshold[latents].to(g.dtype), g.sign())

    def _finish_sparse(self, values: Tensor, latents: Tensor) -> Tensor:
        return values + self.threshold.to(values.dtype)[latents]


@saebench.hookimpl
def register_architectures(register):
    register(JumpReLUSAE)
