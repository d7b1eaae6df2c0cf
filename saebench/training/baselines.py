"""Baseline SAEs, so that every number has a floor: an SAE entry's ``baseline:`` block instead of ``path:``/``train:``.

- ``{kind: random, d_sae: N, k: K, seed: S}``: N random unit decoder directions (float64 normal, seeded,
  normalised), W_enc = W_dec.T, no biases, TopK(K).
- ``{kind: pca, d_sae: N, k: K}``: the top N principal directions of the hook point's **evaluation**
  activations (mean-centred: b_dec is the mean and encoding subtracts it). A TopK SAE keeps only positive
  values, so each direction is two latents, +v and -v (the SAE's d_sae is 2N): with N = d_in and K = d_in
  it reconstructs every activation exactly. N defaults to d_in and may not exceed it.
- ``{kind: neurons, k: K}``: the model's MLP neurons (hook point ``layers.{i}.mlp.hidden``) as latents,
  W_enc = W_dec = identity, no biases, TopK(K): each token keeps its K largest positive neurons.

A baseline is "built" where a ``train:`` SAE is trained (the train stage), saved in the native format in
the SAE's folder, and then loaded like any SAE; its config's metadata records the ``baseline`` block.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable
from typing import Any, Literal

import torch
from pydantic import BaseModel, ConfigDict, PositiveInt, ValidationError, model_validator
from torch import Tensor

from saebench.errors import ConfigError, validation_error
from saebench.loading import build_sae
from saebench.sae import SAE

KINDS = ("random", "pca", "neurons")
NEURON_HOOKPOINT = re.compile(r"layers\.\d+\.mlp\.hidden")


class BaselineConfig(BaseModel):
    """A ``baseline:`` block, checked."""

    model_config = ConfigDict(extra="forbid")

    kind: Literal["random", "pca", "neurons"]
    k: PositiveInt
    d_sae: PositiveInt | None = None
    seed: int | None = None

    @model_validator(mode="after")
    def _fits_kind(self) -> BaselineConfig:
        if self.kind == "random" and self.d_sae is None:
            raise ValueError("a random baseline needs 'd_sae'")
        if self.kind == "neurons" and self.d_sae is not None:
            raise ValueError("a neurons baseline has one latent per MLP neuron: give no 'd_sae'")
        if self.kind != "random" and self.seed is not None:
            raise ValueError(f"a {self.kind} baseline is not random: give no 'seed'")
        if self.kind == "random" and self.d_sae is not None and self.k > self.d_sae:
            raise ValueError(f"k={self.k} is larger than d_sae={self.d_sae}")
        return self

    @classmethod
    def from_mapping(cls, block: Any, where: str, hookpoint: str | None = None) -> BaselineConfig:
        """The block checked, problems as one-line ConfigErrors at ``where`` (``FILE: saes[i].baseline``)."""
        if not isinstance(block, dict):
            raise ConfigError("a baseline block is a mapping, e.g. {kind: random, d_sae: 4096, k: 32}", where)
        kind = block.get("kind")
        if kind not in KINDS:
            raise ConfigError(f"unknown baseline kind {kind!r}; kinds: {', '.join(KINDS)}", where)
        if "k" not in block:
            raise ConfigError("a baseline block needs 'k' (latents kept per token)", where)
        try:
            cfg = cls.model_validate(block)
        except ValidationError as exc:
            raise validation_error(exc, where) from None
        if kind == "neurons" and hookpoint is not None and not NEURON_HOOKPOINT.fullmatch(hookpoint):
            raise ConfigError(f"a neurons baseline needs hook point layers.{{i}}.mlp.hidden, not {hookpoint!r}", where)
        return cfg

    def d_sae_for(self, d_in: int) -> int:
        """The SAE's number of latents at a hook point of width ``d_in``."""
        if self.kind == "random":
            assert self.d_sae is not None
            return self.d_sae
        if self.kind == "pca":
            return 2 * (self.d_sae or d_in)
        return d_in

    def check_width(self, d_in: int, where: str) -> None:
        """What only the hook point's width can tell: a PCA with more directions than dimensions, a k too large."""
        if self.kind == "pca" and self.d_sae is not None and self.d_sae > d_in:
            raise ConfigError(f"a pca baseline has at most d_in={d_in} directions, not d_sae={self.d_sae}", where)
        if self.kind != "random" and self.k > self.d_sae_for(d_in):
            raise ConfigError(f"k={self.k} is larger than the baseline's {self.d_sae_for(d_in)} latents", where)


def _topk(W_dec: Tensor, k: int, b_dec: Tensor | None = None, **config: Any) -> SAE:
    W = W_dec.to(torch.float32)
    d_sae, d_in = W.shape
    weights = {
        "W_enc": W.T.contiguous(),
        "W_dec": W.contiguous(),
        "b_enc": torch.zeros(d_sae),
        "b_dec": torch.zeros(d_in) if b_dec is None else b_dec.to(torch.float32),
    }
    return build_sae("topk", weights, k=k, apply_b_dec_to_input=b_dec is not None, **config)


def random_baseline(d_in: int, d_sae: int, k: int, seed: int = 0, **config: Any) -> SAE:
    """TopK SAE of ``d_sae`` random unit decoder rows (float64 normal, seeded, normalised); W_enc = W_dec.T."""
    gen = torch.Generator().manual_seed(seed)
    W = torch.randn(d_sae, d_in, dtype=torch.float64, generator=gen)
    return _topk(W / W.norm(dim=1, keepdim=True), k, **config)


def principal_directions(batches: Iterable[Tensor], n: int | None = None) -> tuple[Tensor, Tensor, Tensor]:
    """(mean [d], top-n eigenvalues [n] descending, their unit eigenvectors as rows [n, d]) of the activations'
    covariance, accumulated in float64 chunk by chunk (torch.linalg.eigh)."""
    total: Tensor | None = None
    outer: Tensor | None = None
    count = 0
    for batch in batches:
        x = batch.to(torch.float64).reshape(-1, batch.shape[-1])
        total = x.sum(0) if total is None else total + x.sum(0)
        outer = x.T @ x if outer is None else outer + x.T @ x
        count += x.shape[0]
    if total is None or outer is None or count < 2:
        raise ValueError("principal directions need at least two activations")
    mean = total / count
    cov = (outer - count * torch.outer(mean, mean)) / (count - 1)
    values, vectors = torch.linalg.eigh(cov)  # ascending
    order = torch.argsort(values, descending=True)[: n or len(values)]
    return mean, values[order], vectors[:, order].T


def pca_baseline(batches: Iterable[Tensor], k: int, n: int | None = None, **config: Any) -> SAE:
    """TopK SAE of the top ``n`` principal directions, each as two latents (+v, -v); b_dec = the mean."""
    mean, _, directions = principal_directions(batches, n)
    signed = torch.stack([directions, -directions], dim=1).reshape(-1, directions.shape[1])
    return _topk(signed, k, b_dec=mean, **config)


def neuron_baseline(width: int, k: int, **config: Any) -> SAE:
    """TopK SAE whose latents are the hook point's own units: W_enc = W_dec = identity, no biases."""
    return _topk(torch.eye(width), k, **config)


def build_baseline(
    cfg: BaselineConfig, d_in: int, activations: Callable[[], Iterable[Tensor]], seed: int, **config: Any
) -> SAE:
    """The baseline SAE of ``cfg`` at a hook point of width ``d_in``; ``activations`` are the evaluation
    activations (read only by PCA); ``seed`` is the run's, for a random baseline that names none."""
    config["metadata"] = {"baseline": cfg.model_dump(exclude_none=True)}
    if cfg.kind == "random":
        assert cfg.d_sae is not None
        seed = cfg.seed if cfg.seed is not None else seed
        config["metadata"]["baseline"]["seed"] = seed
        return random_baseline(d_in, cfg.d_sae, cfg.k, seed, **config)
    if cfg.kind == "pca":
        config["metadata"]["baseline"]["fit_on"] = "evaluation activations"
        return pca_baseline(activations(), cfg.k, cfg.d_sae, **config)
    return neuron_baseline(d_in, cfg.k, **config)
