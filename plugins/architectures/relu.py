"""ReLU ("standard") SAE: f = ReLU(x'·W_enc + b_enc)."""

from __future__ import annotations

from torch import Tensor

import saebench


class ReLUSAE(saebench.SAE):
    """ReLU SAE (SAELens "standard"): f = ReLU(h)."""

    arch = "relu"
    sparse_from_relu = True
    latent_blocks = True

    def activation(self, h: Tensor) -> Tensor:
        return h.relu()

    def _epilogue(self) -> tuple[Tensor, str]:
        return self.b_enc, "relu"

    def _finish_dense(self, g: Tensor, latents: slice) -> Tensor:
        return g  # oneDNN already applied the ReLU


@saebench.hookimpl
def register_architectures(register):
    register(ReLUSAE)
