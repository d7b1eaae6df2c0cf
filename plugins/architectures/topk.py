"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token, then ReLU."""

from __future__ import annotations

import torch
from torch import Tensor

import saebench
from saebench.errors import CheckpointError


class TopKSAE(saebench.SAE):
    """TopK SAE: f = scatter(ReLU(top-k of h)), as SAELens defines it."""

    arch = "topk"
    topk_per_token = True
    latent_blocks = True

    def validate_config(self, cfg: saebench.SAEConfig) -> None:
        if cfg.k is None:
            raise CheckpointError("a topk SAE needs k (latents kept per token)")
        if cfg.k > cfg.d_sae:
            raise CheckpointError(f"k={cfg.k} is larger than d_sae={cfg.d_sae}")

    def activation(self, h: Tensor) -> Tensor:
        values, indices = h.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(h).scatter(-1, indices, values.relu())


@saebench.hookimpl
def register_architectures(register):
    register(TopKSAE)
