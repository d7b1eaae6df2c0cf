"""What training an SAE takes and gives: its configuration, the state an architecture's step reads, the stats.

Coefficients are in normalised units (see saebench.training.trainer).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeFloat,
    NonNegativeInt,
    PositiveFloat,
    PositiveInt,
    ValidationError,
    field_validator,
    model_validator,
)
from torch import Tensor, nn

from saebench import plugin_manager
from saebench.errors import PluginError, validation_error
from saebench.sae import SAE


class MultiTopK(BaseModel):
    """Gao et al. 2024 (arXiv:2406.04093), section 5.3 "Progressive recovery": Multi-TopK trains a TopK SAE on
    L(k) + L(4k)/8, i.e. its own reconstruction loss plus ``weight`` times the loss of the same SAE
    encoding with top-(``multiplier``·k), so that it also works when more latents are kept at test time.

    ``multi_topk: true`` in a ``train:`` block is the paper's ``{multiplier: 4, weight: 0.125}``.
    """

    model_config = ConfigDict(extra="forbid")

    multiplier: int = Field(4, ge=2, description="the second term encodes with top-(multiplier·k) latents")
    weight: PositiveFloat = Field(0.125, description="coefficient of the second term (Gao et al.: 1/8)")


class TrainConfig(BaseModel):
    """How to train one SAE. Coefficients are in normalised units (see the module docstring)."""

    model_config = ConfigDict(extra="forbid")

    arch: str = Field(
        description="architecture: relu, topk, jumprelu, batchtopk, matryoshka_batchtopk, gated, or a plugin that implements training_forward"
    )
    d_sae: PositiveInt
    tokens: PositiveInt = Field(description="training tokens; the data is repeated if it holds fewer")
    batch_size: PositiveInt = 4096
    lr: PositiveFloat = 4e-4
    seed: int = 0
    k: PositiveInt | None = Field(
        None, description="TopK: latents kept per token; BatchTopK: the per-token average (k·batch_size per batch)"
    )
    l1: NonNegativeFloat = Field(5.0, description="ReLU and gated: L1 coefficient (Anthropic's 5 with E‖x‖ = √d_in)")
    l0: NonNegativeFloat = Field(1.0, description="JumpReLU: L0 coefficient")
    bandwidth: PositiveFloat = Field(0.05, description="JumpReLU: straight-through estimator bandwidth ε")
    initial_threshold: PositiveFloat = Field(0.001, description="JumpReLU: θ at initialisation")
    aux_k: PositiveInt | None = Field(None, description="TopK: dead latents used by AuxK; default min(d_in, d_sae)/2")
    aux_coefficient: NonNegativeFloat = Field(1 / 32, description="TopK: AuxK weight α (Gao et al.)")
    multi_topk: MultiTopK | None = Field(
        None,
        description="TopK: add weight·L(multiplier·k) to the loss (Gao et al.'s Multi-TopK); true = {multiplier: 4, weight: 0.125}",
    )
    threshold_lr: float = Field(
        0.01, gt=0, le=1, description="BatchTopK: EMA rate of the inference threshold θ (SAELens's topk_threshold_lr)"
    )
    prefixes: list[PositiveInt] | None = Field(
        None, description="Matryoshka BatchTopK: nested dictionary widths, increasing, the last = d_sae"
    )
    dead_tokens: PositiveInt | None = Field(
        None, description="a latent is dead after this many tokens without firing; default min(10M, tokens/10)"
    )
    normalize: bool = Field(True, description="train on x·√d_in/E‖x‖; the SAE's act_scale undoes it")
    warmup: float = Field(0.05, ge=0, le=1, description="fraction of steps with a linear learning-rate warm-up")
    decay: float = Field(0.2, ge=0, le=1, description="fraction of steps at the end with a linear decay to 0")
    shuffle_batches: NonNegativeInt = Field(
        4, description="shuffle tokens within buffers of this many batches (0: keep order)"
    )
    log_every: PositiveInt | None = Field(None, description="history entry every this many steps; default ~50 entries")

    @field_validator("arch")
    @classmethod
    def _trainable(cls, arch: str) -> str:
        try:
            sae_cls = plugin_manager.get("architecture", arch)
        except PluginError as exc:
            raise ValueError(exc.problem) from None
        if sae_cls.training_forward is SAE.training_forward:
            raise ValueError(f"architecture {arch!r} cannot be trained by saebench (it has no training_forward)")
        return arch

    @field_validator("multi_topk", mode="before")
    @classmethod
    def _multi_topk_shorthand(cls, v: Any) -> Any:
        """``true`` is the paper's setting, ``false`` (or nothing) turns it off; a mapping sets the two numbers."""
        if v is True:
            return MultiTopK()
        if v is False:
            return None
        if v is not None and not isinstance(v, (Mapping, MultiTopK)):
            raise ValueError(f"multi_topk is true, false or a mapping {{multiplier, weight}}, got {v!r}")
        return v

    @model_validator(mode="after")
    def _defaults(self) -> TrainConfig:
        sae_cls = plugin_manager.get("architecture", self.arch)
        topk_style = getattr(sae_cls, "topk_per_token", False)
        if self.prefixes is not None and not getattr(sae_cls, "nested_prefixes", False):
            raise ValueError(f"prefixes are for Matryoshka SAEs (matryoshka_batchtopk); {self.arch} has none")
        check = getattr(sae_cls, "check_train_config", None)  # an architecture's own requirements (BatchTopK's k)
        if check is not None:
            check(self)
        if topk_style and self.k is None:
            raise ValueError(f"a {self.arch} SAE needs k (latents kept per token)")
        if self.k is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")
        if self.multi_topk is not None:
            if not topk_style or self.k is None:
                raise ValueError(f"multi_topk is for TopK SAEs (a per-token k); {self.arch} has none")
            if self.multi_topk_k > self.d_sae:
                raise ValueError(
                    f"multi_topk: multiplier·k = {self.multi_topk.multiplier}·{self.k} = {self.multi_topk_k} "
                    f"is larger than d_sae={self.d_sae}"
                )
        if self.aux_k is not None and self.aux_k > self.d_sae:
            raise ValueError(f"aux_k={self.aux_k} is larger than d_sae={self.d_sae}")
        if self.dead_tokens is None:
            self.dead_tokens = min(10_000_000, max(self.batch_size, self.tokens // 10))
        if self.warmup + self.decay > 1:
            raise ValueError(f"warmup ({self.warmup}) + decay ({self.decay}) exceed the whole run (1)")
        if self.log_every is None:
            self.log_every = max(1, self.steps // 50)
        return self

    @property
    def steps(self) -> int:
        return -(-self.tokens // self.batch_size)

    @property
    def multi_topk_k(self) -> int:
        """The k of Multi-TopK's second term (multiplier·k), 0 when ``multi_topk`` is off."""
        return self.multi_topk.multiplier * self.k if self.multi_topk is not None and self.k is not None else 0

    def aux_k_for(self, d_in: int) -> int:
        """``aux_k``, or its default: d_in/2 (Gao et al.'s heuristic, as sparsify and SAELens use it), at most d_sae/2."""
        return self.aux_k or max(1, min(d_in, self.d_sae) // 2)

    @classmethod
    def from_mapping(cls, data: Mapping[str, Any], where: str | None = None) -> TrainConfig:
        """Validate a ``train:`` block, turning pydantic's report into a one-line ConfigError."""
        try:
            return cls(**data)
        except ValidationError as exc:
            raise validation_error(exc, where or "train") from None

    def lr_at(self, step: int) -> float:
        """Learning rate of step ``step`` (0-based): linear warm-up, constant, linear decay to 0."""
        n = self.steps
        warm, cool = math.ceil(self.warmup * n), math.floor(self.decay * n)
        if step < warm:
            return self.lr * (step + 1) / warm
        if step >= n - cool:
            return self.lr * (n - step) / cool
        return self.lr


class HistoryEntry(BaseModel):
    step: int
    tokens: int
    loss: float
    mse: float
    l0: float
    dead_fraction: float


class TrainingStats(BaseModel):
    """What a run did. Loss terms are in normalised units, measured on the last batch with the final weights."""

    arch: str
    steps: int
    tokens: int = Field(description="tokens trained on (steps × batch_size)")
    seconds: float = Field(description="wall time of the training loop")
    tokens_per_s: float
    act_scale: float
    losses: dict[str, float] = Field(description="final loss terms and their sum, 'loss'")
    l0: float = Field(description="mean active latents per token, last batch")
    explained_variance: float = Field(description="1 − Σ‖x − x̂‖² / Σ‖x − x̄‖², last batch")
    dead_fraction: float = Field(description="share of latents that did not fire in the last dead_tokens tokens")
    history: list[HistoryEntry]


@dataclass
class TrainingOutput:
    """What :meth:`SAE.training_forward` returns for one batch (normalised space)."""

    x_hat: Tensor  # [batch, d_in]
    losses: dict[str, Tensor]  # weighted loss terms, including "mse"; the loss is their sum
    l0: Tensor  # scalar: mean number of active latents per token
    fired: Tensor  # [d_sae] bool: latents active on at least one token of the batch


@dataclass
class TrainState:
    """What an architecture's training_forward may read: the config, progress, dead latents, extra parameters."""

    cfg: TrainConfig
    step: int = 0
    dead: Tensor | None = None  # [d_sae] bool, latents that have not fired for cfg.dead_tokens tokens
    optimizer: torch.optim.Optimizer | None = None
    extra: dict[str, nn.Parameter] = field(default_factory=dict)

    def parameter(self, name: str, init: Callable[[], Tensor]) -> nn.Parameter:
        """A trainable tensor that is not an SAE weight (JumpReLU's log θ), created from ``init()`` on first use.

        Write what it implies into the SAE's weights in training_forward: the trainer ends with
        one training_forward under no_grad, so what is written then is what gets saved.
        """
        if name not in self.extra:
            p = nn.Parameter(init().detach().clone())
            self.extra[name] = p
            if self.optimizer is not None:
                self.optimizer.add_param_group({"params": [p]})
        return self.extra[name]
