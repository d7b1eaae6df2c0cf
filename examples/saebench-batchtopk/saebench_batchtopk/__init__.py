"""A ProLU SAE architecture for saebench: the example third-party plugin.

Notation as in :mod:`saebench.sae`: x' = s·x − b_dec when ``apply_b_dec_to_input``
else s·x (s = ``act_scale``), h = x'·W_enc + b_enc, and x̂ = (f·W_dec + b_dec) / s.

The package is still called saebench-batchtopk: it once registered ``batchtopk`` and then
``gated``, both now built in (saebench/plugins/architectures/); the name is kept so installs
and the entry point ``batchtopk`` keep working.

- ``prolu`` (Taggart 2024, "ProLU: A Nonlinearity for Sparse Autoencoders"), the usual weights
  W_enc, W_dec, b_enc, b_dec: with m = x'·W_enc, f = ProLU(m, b_enc) = m·1[m > 0 and m + b_enc > 0].
  The bias only decides whether a latent fires (it suppresses noise), it does not shift the
  value of an active latent. That is a JumpReLU on m with threshold θ = max(−b_enc, 0): a positive
  bias has no effect.
"""

from __future__ import annotations

from torch import Tensor

import saebench


class ProLUSAE(saebench.SAE):
    """ProLU SAE: f = m·1[m > 0 and m + b_enc > 0], m = x'·W_enc (the bias gates, it does not shift)."""

    arch = "prolu"
    sparse_from_relu = True  # active exactly where the fused GEMM's ReLU output is > 0 (see below)
    latent_blocks = True

    def activation(self, h: Tensor) -> Tensor:
        m = h - self.b_enc  # h = m + b_enc, the base class's pre-activation
        return m * ((m > 0) & (h > 0)).to(m.dtype)

    # ProLU fires where m > θ with θ = max(−b_enc, 0), i.e. where ReLU(x'·W_enc − θ) > 0: the kernel's
    # fused GEMM with bias −θ finds the active latents, and adding θ back to the survivors gives m.
    def _theta(self) -> Tensor:
        return (-self.b_enc).clamp(min=0)

    def fused_epilogue(self) -> tuple[Tensor, str]:
        return -self._theta(), "relu"

    def finish_dense(self, g: Tensor, latents: slice) -> Tensor:
        return g.addcmul_(self._theta()[latents].to(g.dtype), g.sign())

    def finish_sparse(self, values: Tensor, latents: Tensor) -> Tensor:
        return values + self._theta().to(values.dtype)[latents]


@saebench.hookimpl
def register_architectures(register):
    register(ProLUSAE)
