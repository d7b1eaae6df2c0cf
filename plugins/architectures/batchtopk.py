"""BatchTopK SAE (Bussmann, Leask and Nanda 2024, arXiv:2412.06410): top k·B latents per batch of B tokens.

Training keeps the k·B largest ReLU'd pre-activations of the whole batch (``batch_topk``), so tokens
get a variable number of latents, k on average. At inference the SAE is a JumpReLU with ONE threshold
for every latent, f = h·1[h > max(θ, 0)], h = x'·W_enc + b_enc: θ is the weight ``threshold``, a 0-d
tensor (a [1] tensor is accepted and squeezed, as dictionary_learning stores it). Saved checkpoints
stay ``arch: batchtopk`` and evaluate as that JumpReLU, so a leaderboard's L0 is the true per-token
average at inference, not the training k. ``cfg.k`` records the training average.

θ is estimated during training as SAELens's ``BatchTopKTrainingSAE`` does: each batch's smallest
positive kept activation, folded into an exponential moving average with rate ``threshold_lr``
(SAELens's ``topk_threshold_lr``, 0.01): θ ← (1 − lr)·θ + lr·min_positive. SAELens starts θ at 0;
here the first batch sets θ to its own minimum (dictionary_learning's start), so short runs are not
left with a θ biased towards 0.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, ClassVar

import torch
from torch import Tensor

import saebench
from saebench.errors import CheckpointError

if TYPE_CHECKING:
    from saebench.training import TrainConfig, TrainingOutput, TrainState


def batch_topk(h: Tensor, k: int) -> Tensor:
    """ReLU(h) at the k·B largest entries of h [B, d_sae] taken over the whole batch, 0 elsewhere.

    With fewer than k·B positive entries every positive one is kept. Ties at the cut are broken
    arbitrarily. Differentiable in h (gradients flow to the kept entries only).
    """
    acts = h.relu()
    flat = acts.reshape(-1)
    keep = min(k * h.shape[0], flat.numel())
    top = flat.topk(keep, sorted=False)
    return torch.zeros_like(flat).scatter(0, top.indices, top.values).view_as(acts)


def updated_threshold(theta: float, f: Tensor, lr: float, first: bool) -> float:
    """The running θ after a batch whose kept activations are ``f``: the EMA of the smallest positive one."""
    positive = f[f > 0]
    if positive.numel() == 0:  # nothing fired: this batch says nothing about θ
        return theta
    low = float(positive.min().double())
    return low if first else (1 - lr) * theta + lr * low


class BatchTopKSAE(saebench.SAE):
    """BatchTopK SAE: f = h·1[h > θ], one global threshold θ (JumpReLU at inference); k·B per batch in training."""

    arch = "batchtopk"
    weight_shapes: ClassVar[dict[str, tuple[str, ...]]] = {**saebench.SAE.weight_shapes, "threshold": ()}
    sparse_from_relu = True  # k is a training statistic: inference is a threshold, not a per-token top-k
    latent_blocks = True  # one scalar θ fits any slice of latents
    threshold: Tensor

    def validate_config(self, cfg: saebench.SAEConfig) -> None:
        if cfg.k is None:
            raise CheckpointError(f"a {self.arch} SAE needs k (the average latents per token it was trained with)")
        if cfg.k > cfg.d_sae:
            raise CheckpointError(f"k={cfg.k} is larger than d_sae={cfg.d_sae}")

    @classmethod
    def check_train_config(cls, cfg: TrainConfig) -> None:
        """TrainConfig calls this: raise ValueError for a ``train:`` block this architecture cannot train."""
        if cfg.k is None:
            raise ValueError(f"a {cfg.arch} SAE needs k (the average latents per token)")

    @classmethod
    def from_weights(
        cls, weights: Mapping[str, Any], cfg: saebench.SAEConfig, where: str | None = None, *, take: bool = False
    ) -> saebench.SAE:
        """Build from SAELens-named weights; ``threshold`` may be shape [] or [1]."""
        theta = weights.get("threshold")
        if theta is not None and tuple(getattr(theta, "shape", ())) == (1,):
            weights = {**weights, "threshold": torch.as_tensor(theta).reshape(())}
        return super().from_weights(weights, cfg, where, take=take)

    def _theta(self) -> Tensor:
        # f is a ReLU'd quantity, so a negative θ (dictionary_learning's "not yet estimated" −1) is plain ReLU.
        return self.threshold.clamp(min=0)

    # -- the inference definition -----------------------------------------------------------
    def activation(self, h: Tensor) -> Tensor:
        return h * (h > self._theta()).to(h.dtype)

    # h > θ  <=>  ReLU(x'·W_enc + (b_enc − θ)) > 0: the GEMM's fused ReLU finds the active latents,
    # adding θ back to the survivors gives h (as jumprelu does, with a scalar θ).
    def fused_epilogue(self) -> tuple[Tensor, str]:
        return self.b_enc - self._theta(), "relu"

    def finish_dense(self, g: Tensor, latents: slice) -> Tensor:
        return g.addcmul_(self._theta().to(g.dtype), g.sign())

    def finish_sparse(self, values: Tensor, latents: Tensor) -> Tensor:
        return values + self._theta().to(values.dtype)

    # -- the training-time definition -------------------------------------------------------
    def encode_batch_topk(self, x: Tensor, k: int | None = None) -> Tensor:
        """Training-time latents of x [..., d_in], one batch of all its tokens: :func:`batch_topk` of h."""
        x = self._check_input(x)
        k = self.cfg.k if k is None else k
        if k is None or k < 1:
            raise ValueError(f"k must be a positive integer, got {k}")
        h = self.pre_acts(x)
        return batch_topk(h.reshape(-1, self.cfg.d_sae), k).view_as(h)

    def training_forward(self, x: Tensor, state: TrainState) -> TrainingOutput:
        """MSE (+ the nested losses of a subclass) + aux_coefficient·AuxK on the batch-level top-k latents.

        Dense [batch, d_sae] like relu and jumprelu: the batch-wide top-k needs every pre-activation.
        θ is updated only while gradients are on: the trainer's closing no-grad pass measures, it
        does not train, and so leaves the saved θ as the last training step set it.
        """
        from saebench.training import TrainingOutput, mse

        cfg = state.cfg
        assert self.cfg.k is not None
        h = self.pre_acts(x)
        f = batch_topk(h, self.cfg.k)
        x_hat = f @ self.W_dec + self.b_dec
        losses = {"mse": mse(x_hat, x), **self.nested_losses(f, x, cfg)}
        losses["auxk"] = self._auxk(x, x_hat, state)
        if torch.is_grad_enabled():
            with torch.no_grad():
                theta = updated_threshold(float(self.threshold), f.detach(), cfg.threshold_lr, state.step == 0)
                self.threshold.fill_(theta)
        active = f.detach() > 0
        return TrainingOutput(x_hat, losses, l0=active.sum(-1).float().mean(), fired=active.any(0))

    def nested_losses(self, f: Tensor, x: Tensor, cfg: TrainConfig) -> dict[str, Tensor]:
        """Further loss terms on the training latents f (Matryoshka's prefixes); none for plain BatchTopK."""
        return {}

    def _auxk(self, x: Tensor, x_hat: Tensor, state: TrainState) -> Tensor:
        """TopK's AuxK term: each token's top aux_k dead latents reconstruct the residual (not b_dec's job)."""
        from saebench.plugins.architectures.topk import auxk_loss

        cfg = state.cfg
        if state.dead is None or cfg.aux_coefficient == 0 or not bool(state.dead.any()):
            return x_hat.new_zeros(())
        dead = state.dead.nonzero().squeeze(1)
        aux_k = min(cfg.aux_k_for(self.cfg.d_in), len(dead))
        h_dead = self.prepare_input(x).detach() @ self.W_enc[:, dead] + self.b_enc[dead]
        values, pos = h_dead.topk(aux_k, dim=1)
        return cfg.aux_coefficient * auxk_loss((x - x_hat).detach(), x, values, dead[pos], self.W_dec)


@saebench.hookimpl
def register_architectures(register):
    register(BatchTopKSAE)
