"""Gated SAE (Rajamanoharan et al. 2024, arXiv:2404.16014): a gate decides which latents fire, a magnitude path how much.

Notation as in :mod:`saebench.sae` (x' = s·x − b_dec with ``apply_b_dec_to_input``, else s·x).
Weights, SAELens names: W_enc [d_in, d_sae] (the paper's W_gate), b_gate, r_mag, b_mag [d_sae],
W_dec, b_dec; no b_enc. The magnitude path shares W_enc, rescaled per latent: W_mag = exp(r_mag) ⊙ W_gate.

    π_gate = x'·W_enc + b_gate
    π_mag  = x'·(W_enc ⊙ exp(r_mag)) + b_mag = (π_gate − b_gate)·exp(r_mag) + b_mag
    f      = 1[π_gate > 0] ⊙ ReLU(π_mag),        x̂ = f·W_dec + b_dec

π_gate is this architecture's pre-activation h (``pre_acts``): ``b_enc`` reads ``b_gate``, so the
base class's h = x'·W_enc + b_enc is π_gate, and ``activation(h)`` derives π_mag from it.

Training (the paper's section 3.2), per token and averaged over the batch, in the trainer's units:

    L = ‖x − x̂‖²  +  l1·Σ_i ReLU(π_gate)_i·‖W_dec,i‖  +  ‖x − (ReLU(π_gate)·sg(W_dec) + sg(b_dec))‖²

(``mse``, ``l1``, ``aux``); sg is stop-gradient: the auxiliary reconstruction trains the gate
through a frozen copy of the decoder. The gate 1[·] passes no gradient, so the gate's own
parameters (b_gate, and W_enc's gate role) learn from the last two terms, the magnitude path from
the first. SAELens's ``GatedTrainingSAE`` has the same three terms, the sparsity one weighted by
decoder row norms as here (the trainer keeps those norms at 1, so it is also the plain L1), but
does not detach the decoder in the auxiliary term. Initialisation is the trainer's (W_enc = W_decᵀ,
b_gate = 0) with r_mag = b_mag = 0, as in SAELens.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

import saebench
from saebench.errors import CheckpointError

if TYPE_CHECKING:
    from saebench.training import TrainConfig, TrainingOutput, TrainState


class GatedSAE(saebench.SAE):
    """Gated SAE: f = 1[π_gate > 0] ⊙ ReLU(π_mag), π_gate = x'·W_enc + b_gate, π_mag = x'·(W_enc ⊙ exp(r_mag)) + b_mag."""

    arch = "gated"
    weight_shapes: ClassVar[dict[str, tuple[str, ...]]] = {
        **{n: s for n, s in saebench.SAE.weight_shapes.items() if n != "b_enc"},
        "b_gate": ("d_sae",),
        "r_mag": ("d_sae",),
        "b_mag": ("d_sae",),
    }
    latent_blocks = True  # every hook below works latent by latent
    b_gate: Tensor
    r_mag: Tensor
    b_mag: Tensor

    @property
    def b_enc(self) -> Tensor:  # type: ignore[override]  # read-only on purpose: b_gate is the weight
        """The gate's bias: what the base class adds to x'·W_enc to make h (here π_gate), and what the trainer zeroes."""
        return self.b_gate

    def validate_config(self, cfg: saebench.SAEConfig) -> None:
        if cfg.k is not None:
            raise CheckpointError("a gated SAE has no k; remove it from the config")

    @classmethod
    def check_train_config(cls, cfg: TrainConfig) -> None:
        """TrainConfig calls this: a gated SAE's sparsity comes from ``l1``, it has no k."""
        if cfg.k is not None:
            raise ValueError("a gated SAE has no k (its sparsity comes from l1); remove k")

    def activation(self, h: Tensor) -> Tensor:
        magnitude = ((h - self.b_gate) * self.r_mag.exp() + self.b_mag).relu()
        return magnitude * (h > 0).to(magnitude.dtype)

    # The fused GEMM gives g = ReLU(π_gate): g > 0 is the gate, and where it is open g is π_gate itself
    # (within one rounding of b_gate), from which π_mag follows. Where the gate is open π_mag may still be
    # ≤ 0, so g > 0 is not "active" (sparse_from_relu stays False) and finish_dense decides.
    def fused_epilogue(self) -> tuple[Tensor, str]:
        return self.b_gate, "relu"

    def finish_dense(self, g: Tensor, latents: slice) -> Tensor:
        closed = g <= 0
        scale = self.r_mag[latents].exp().to(g.dtype)
        g.sub_(self.b_gate[latents].to(g.dtype)).mul_(scale).add_(self.b_mag[latents].to(g.dtype)).relu_()
        return g.masked_fill_(closed, 0.0)

    def training_forward(self, x: Tensor, state: TrainState) -> TrainingOutput:
        """mse + l1·Σ ReLU(π_gate)·‖W_dec,i‖ + aux, the reconstruction from ReLU(π_gate) by the detached decoder."""
        from saebench.training import TrainingOutput, mse

        pi_gate = self.pre_acts(x)
        f = self.activation(pi_gate)
        x_hat = f @ self.W_dec + self.b_dec
        gate = pi_gate.relu()
        sparsity = (gate * self.W_dec.norm(dim=1)).sum(-1).mean()
        via_gate = gate @ self.W_dec.detach() + self.b_dec.detach()
        losses = {"mse": mse(x_hat, x), "l1": state.cfg.l1 * sparsity, "aux": mse(via_gate, x)}
        active = f.detach() > 0
        return TrainingOutput(x_hat, losses, l0=active.sum(-1).float().mean(), fired=active.any(0))


@saebench.hookimpl
def register_architectures(register):
    register(GatedSAE)
