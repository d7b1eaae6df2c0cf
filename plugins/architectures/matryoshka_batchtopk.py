"""Matryoshka BatchTopK SAE (Bussmann et al. 2025, arXiv:2503.17547; Nabeshima 2024): nested dictionaries.

The dictionary has nested prefixes m_1 < m_2 < ... < m_n = d_sae (``prefixes`` in the ``train:``
block). Training encodes once with BatchTopK (k·B latents per batch of B tokens) and the loss sums
the reconstruction error of every prefix, each decoding only the first m latents of those
activations:

    L = Σ_i ‖x − (f[:, :m_i]·W_dec[:m_i] + b_dec)‖²  (mean over tokens)  + aux_coefficient·AuxK,

the last term of the sum being BatchTopK's own ``mse``; the others are ``mse_prefix_{m}``. This is
the paper's definition. SAELens's ``MatryoshkaBatchTopKTrainingSAE`` differs in one respect: it
re-runs BatchTopK inside each inner prefix (the top k·B of the first m pre-activations) instead of
truncating the full encoding. Inference, θ and the saved checkpoint are BatchTopK's (a JumpReLU
with one global θ); the prefixes are kept in the checkpoint's training metadata, where
:attr:`MatryoshkaBatchTopKSAE.prefixes` finds them for the reconstruction scorer's per-prefix FVU.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

from torch import Tensor

import saebench
from saebench.plugins.architectures.batchtopk import BatchTopKSAE

if TYPE_CHECKING:
    from saebench.training import TrainConfig


def check_prefixes(prefixes: list[int] | None, d_sae: int, k: int | None) -> None:
    """Raise ValueError unless ``prefixes`` strictly increase from at least k up to exactly d_sae."""
    if not prefixes:
        raise ValueError(f"a matryoshka_batchtopk SAE needs prefixes (nested widths ending at d_sae={d_sae})")
    if any(b <= a for a, b in zip(prefixes, prefixes[1:])):
        raise ValueError(f"prefixes {prefixes} must strictly increase")
    if prefixes[-1] != d_sae:
        raise ValueError(f"the last prefix ({prefixes[-1]}) must be d_sae={d_sae}")
    if k is not None and prefixes[0] < k:  # SAELens refuses this too: the smallest level could not hold k latents
        raise ValueError(f"the smallest prefix ({prefixes[0]}) is smaller than k={k}")


class MatryoshkaBatchTopKSAE(BatchTopKSAE):
    """Matryoshka BatchTopK SAE: BatchTopK whose loss sums the reconstruction errors of nested prefixes; JumpReLU (one θ) at inference."""

    arch = "matryoshka_batchtopk"
    nested_prefixes: ClassVar[bool] = True

    @classmethod
    def check_train_config(cls, cfg: TrainConfig) -> None:
        super().check_train_config(cfg)
        check_prefixes(cfg.prefixes, cfg.d_sae, cfg.k)

    @property
    def prefixes(self) -> list[int] | None:
        """The nested widths it was trained with (from its training metadata), or None if not recorded."""
        training = self.cfg.metadata.get("training")
        config = training.get("config") if isinstance(training, dict) else None
        got = config.get("prefixes") if isinstance(config, dict) else None
        return [int(m) for m in got] if isinstance(got, list) and got else None

    def nested_losses(self, f: Tensor, x: Tensor, cfg: TrainConfig) -> dict[str, Tensor]:
        from saebench.training import mse

        assert cfg.prefixes is not None
        return {
            f"mse_prefix_{m}": mse(f[:, :m] @ self.W_dec[:m] + self.b_dec, x)
            for m in cfg.prefixes
            if m < self.cfg.d_sae
        }


@saebench.hookimpl
def register_architectures(register):
    register(MatryoshkaBatchTopKSAE)
