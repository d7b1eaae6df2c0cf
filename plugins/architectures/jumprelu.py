"""JumpReLU SAE (Gemma Scope): f = h·1[h > θ] with a learned per-latent threshold θ."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor

import saebench

if TYPE_CHECKING:
    from saebench.training import TrainingOutput, TrainState


def _rect(h: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
    """rect((h − θ)/ε) = 1[|h − θ| < ε/2]: the kernel of the straight-through estimators."""
    return ((h - theta).abs() < bandwidth / 2).to(h.dtype)


class JumpReLUFunction(torch.autograd.Function):
    """f = h·1[h > θ] with the straight-through estimator of Rajamanoharan et al. (2024).

    ∂f/∂h = 1[h > θ];  ∂f/∂θ = −(θ/ε)·rect((h − θ)/ε). h is [tokens, d_sae], θ is [d_sae].
    """

    @staticmethod
    def forward(ctx, h: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(h, theta)
        ctx.bandwidth = bandwidth
        return h * (h > theta).to(h.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        h, theta = ctx.saved_tensors
        grad_h = g * (h > theta).to(g.dtype)
        grad_theta = -(theta / ctx.bandwidth) * (_rect(h, theta, ctx.bandwidth) * g).sum(0)
        return grad_h, grad_theta, None


class StepFunction(torch.autograd.Function):
    """H(h − θ) = 1[h > θ] with ∂/∂θ = −(1/ε)·rect((h − θ)/ε) and no gradient to h (the L0 penalty's estimator)."""

    @staticmethod
    def forward(ctx, h: Tensor, theta: Tensor, bandwidth: float) -> Tensor:
        ctx.save_for_backward(h, theta)
        ctx.bandwidth = bandwidth
        return (h > theta).to(h.dtype)

    @staticmethod
    def backward(ctx, g: Tensor):
        h, theta = ctx.saved_tensors
        grad_theta = -(1.0 / ctx.bandwidth) * (_rect(h, theta, ctx.bandwidth) * g).sum(0)
        return None, grad_theta, None


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
    def fused_epilogue(self) -> tuple[Tensor, str]:
        return self.b_enc - self.threshold, "relu"

    def finish_dense(self, g: Tensor, latents: slice) -> Tensor:
        return g.addcmul_(self.threshold[latents].to(g.dtype), g.sign())

    def finish_sparse(self, values: Tensor, latents: Tensor) -> Tensor:
        return values + self.threshold.to(values.dtype)[latents]

    def training_forward(self, x: Tensor, state: TrainState) -> TrainingOutput:
        """MSE + l0·Σ_i H(h_i − θ_i), θ = exp(log θ) learned through the straight-through estimators."""
        from saebench.training import TrainingOutput, mse

        cfg = state.cfg
        log_theta = state.parameter(
            "log_threshold", lambda: torch.full_like(self.b_enc, math.log(cfg.initial_threshold))
        )
        theta = log_theta.exp()
        with torch.no_grad():
            self.threshold.copy_(theta)
        h = self.pre_acts(x)
        f = JumpReLUFunction.apply(h, theta, cfg.bandwidth)
        x_hat = f @ self.W_dec + self.b_dec
        l0 = StepFunction.apply(h, theta, cfg.bandwidth).sum(-1).mean()
        losses = {"mse": mse(x_hat, x), "l0": cfg.l0 * l0}
        return TrainingOutput(x_hat, losses, l0=l0.detach(), fired=(f != 0).any(0))


@saebench.hookimpl
def register_architectures(register):
    register(JumpReLUSAE)
