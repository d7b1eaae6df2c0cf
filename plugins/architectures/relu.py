"""ReLU ("standard") SAE: f = ReLU(x'·W_enc + b_enc)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from torch import Tensor

import saebench

if TYPE_CHECKING:
    from saebench.training import TrainingOutput, TrainState


class ReLUSAE(saebench.SAE):
    """ReLU SAE (SAELens "standard"): f = ReLU(h)."""

    arch = "relu"
    sparse_from_relu = True
    latent_blocks = True

    def activation(self, h: Tensor) -> Tensor:
        return h.relu()

    def fused_epilogue(self) -> tuple[Tensor, str]:
        return self.b_enc, "relu"

    def finish_dense(self, g: Tensor, latents: slice) -> Tensor:
        return g  # oneDNN already applied the ReLU

    def training_forward(self, x: Tensor, state: TrainState) -> TrainingOutput:
        """MSE + l1·Σ f_i (decoder rows are unit-norm, so this is also the decoder-norm-weighted L1)."""
        from saebench.training import TrainingOutput, mse

        f = self.pre_acts(x).relu()
        x_hat = f @ self.W_dec + self.b_dec
        active = f > 0
        losses = {"mse": mse(x_hat, x), "l1": state.cfg.l1 * f.sum(-1).mean()}
        return TrainingOutput(x_hat, losses, l0=active.sum(-1).float().mean(), fired=active.any(0))


@saebench.hookimpl
def register_architectures(register):
    register(ReLUSAE)
