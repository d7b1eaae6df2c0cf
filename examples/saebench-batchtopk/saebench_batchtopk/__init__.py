"""A Gated SAE architecture for saebench: the example third-party plugin.

Notation as in :mod:`saebench.sae`: x' = s·x − b_dec when ``apply_b_dec_to_input``
else s·x (s = ``act_scale``), and x̂ = (f·W_dec + b_dec) / s.

The package is still called saebench-batchtopk: it once also registered ``batchtopk``,
which is now built in (saebench/plugins/architectures/batchtopk.py); the name is kept
so installs and the entry point ``batchtopk`` keep working.

- ``gated`` (SAELens names): f = 1[x'·W_enc + b_gate > 0] ⊙ ReLU(x'·(W_enc ⊙ e^r_mag) + b_mag),
  where e^r_mag scales each latent's column of W_enc. There is no b_enc.
"""

from __future__ import annotations

from typing import ClassVar

import torch
from torch import Tensor

import saebench


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
    register(GatedSAE)
