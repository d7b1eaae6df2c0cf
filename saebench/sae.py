"""The SAE interface: a plain torch module with SAELens-named weights and a pydantic config.

Notation (../shared/PEERS.md): x [..., d_in]; x' = s·x − b_dec when
``apply_b_dec_to_input`` else s·x (s = ``act_scale``, 1 unless the SAE was
trained on rescaled inputs); pre-activations h = x'·W_enc + b_enc; latents
f = activation(h); reconstruction x̂ = (f·W_dec + b_dec) / s.

Transcoders (``cfg.d_out`` set) read one hook point and write another: the same encoder, W_dec
[d_sae, d_out], b_dec [d_out]; a skip transcoder (``cfg.skip``) adds x·W_skip, W_skip [d_in, d_out]
(Gemma Scope 2's ``affine_skip_connection``; SAELens keeps its transpose): y = f·W_dec + b_dec + x·W_skip
is :meth:`SAE.transcode`, :meth:`SAE.decode` the part without the skip. No pre-encoder bias (b_dec
is in the output space) and no ``act_scale`` (one scale cannot fit two hook points).

Architectures subclass :class:`SAE`, set ``arch`` and implement
:meth:`activation` (the float64-checkable definition). The fast paths in
:mod:`saebench.kernel` use three optional hooks an architecture may override
to fuse its activation into the GEMM: :meth:`fused_epilogue`, :meth:`finish_dense`
and :meth:`finish_sparse` (the kernel's ``Fusable`` protocol). Leaving them alone
is always correct.
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Mapping
from typing import Any, ClassVar, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, PositiveInt, field_validator, model_serializer, model_validator
from torch import Tensor, nn

from saebench import kernel
from saebench.errors import CheckpointError, ConfigError, ShapeError

DTYPES = {"float32": torch.float32, "float64": torch.float64, "bfloat16": torch.bfloat16, "float16": torch.float16}
#: transcoders' fields, left out of a dumped config at their defaults: an SAE's dump is what it always was
TRANSCODER_FIELDS = {"d_out": None, "skip": False, "hook_name_out": None}


class SAEConfig(BaseModel):
    """What an SAE is: enough to rebuild it from its weights and to know where it applies."""

    model_config = ConfigDict(extra="forbid")

    arch: str
    d_in: PositiveInt
    d_sae: PositiveInt
    k: PositiveInt | None = Field(None, description="latents kept per token (TopK-style architectures)")
    apply_b_dec_to_input: bool = Field(False, description="encode x - b_dec instead of x (SAELens, OpenAI pre-bias)")
    act_scale: float = Field(1.0, gt=0, description="inputs are multiplied by this before encoding; outputs divided")
    hook_name: str | None = Field(None, description="hook point the SAE was trained on, if known")
    model_name: str | None = Field(None, description="model the SAE was trained on, if known")
    dtype: Literal["float32", "float64", "bfloat16", "float16"] = "float32"
    metadata: dict[str, Any] = Field(
        default_factory=dict, description="provenance: source format, path, training stats"
    )
    d_out: PositiveInt | None = Field(None, description="transcoders: width of the output; None for an SAE")
    skip: bool = Field(False, description="skip transcoders: the output adds x·W_skip, W_skip [d_in, d_out]")
    hook_name_out: str | None = Field(None, description="transcoders: hook point the output was trained on, if known")

    @model_validator(mode="after")
    def _transcoder(self) -> SAEConfig:
        if self.d_out is None and (self.skip or self.hook_name_out is not None):
            raise ValueError("d_out: a transcoder (skip or hook_name_out given) needs its output width")
        if self.d_out is not None and (self.apply_b_dec_to_input or self.act_scale != 1.0):
            raise ValueError("a transcoder has no apply_b_dec_to_input and no act_scale (see saebench.sae)")
        return self

    @model_serializer(mode="wrap")
    def _omit_transcoder_defaults(self, handler: Any) -> Any:
        data = handler(self)
        return {k: v for k, v in data.items() if k not in TRANSCODER_FIELDS or v != TRANSCODER_FIELDS[k]}

    @field_validator("metadata")
    @classmethod
    def _json_metadata(cls, v: dict[str, Any]) -> dict[str, Any]:
        try:
            json.dumps(v)
        except (TypeError, ValueError) as exc:
            raise ValueError(f"metadata must be JSON-serialisable ({exc})") from None
        return v

    @field_validator("act_scale")
    @classmethod
    def _finite_scale(cls, v: float) -> float:
        if v != v or v in (float("inf"), float("-inf")):
            raise ValueError("act_scale must be finite")
        return v


class SAE(nn.Module):
    """Base class of every SAE architecture. Subclasses set ``arch`` and implement :meth:`activation`."""

    arch: ClassVar[str] = ""
    #: weight name -> shape in terms of the config ("d_in", "d_sae", "d_out": d_in for an SAE); subclasses
    #: extend it. An architecture whose W_dec is not [d_sae, d_out] has no transcoders.
    weight_shapes: ClassVar[dict[str, tuple[str, ...]]] = {
        "W_enc": ("d_in", "d_sae"),
        "W_dec": ("d_sae", "d_out"),
        "b_enc": ("d_sae",),
        "b_dec": ("d_out",),
    }
    # the weights named in weight_shapes, registered as parameters in __init__ (declared for type checkers)
    W_enc: Tensor
    W_dec: Tensor
    b_enc: Tensor
    b_dec: Tensor
    W_skip: Tensor  # skip transcoders only
    #: True when latent i is active exactly where the fused GEMM output is > 0 (see fused_epilogue)
    sparse_from_relu: ClassVar[bool] = False
    #: True when every token keeps exactly ``cfg.k`` latents (TopK); then the kernel runs a per-chunk
    #: top-k. Other uses of ``k`` (BatchTopK's training statistic) leave this False.
    topk_per_token: ClassVar[bool] = False
    #: True when fused_epilogue/finish_dense work on any slice of latents, so the kernel may split
    #: very wide dictionaries into latent blocks. Leave False if activation() needs all latents.
    latent_blocks: ClassVar[bool] = False

    def __init__(self, cfg: SAEConfig):
        super().__init__()
        if cfg.arch != self.arch:
            raise CheckpointError(f"config says arch {cfg.arch!r} but {type(self).__name__} is {self.arch!r}")
        self.cfg = cfg
        if cfg.d_out is not None and self.weight_shapes.get("W_dec") != ("d_sae", "d_out"):
            raise CheckpointError(f"a {self.arch} SAE cannot be a transcoder (its W_dec is not [d_sae, d_out])")
        self.validate_config(cfg)
        dtype = DTYPES[cfg.dtype]
        for name, dims in self.shapes(cfg).items():
            shape = tuple(_size(cfg, d) for d in dims)
            self.register_parameter(name, nn.Parameter(torch.zeros(shape, dtype=dtype), requires_grad=False))
        #: tokens per chunk for the CPU kernel; None picks one from d_sae
        self.chunk_tokens: int | None = None

    # -- construction -------------------------------------------------------------------------
    @classmethod
    def shapes(cls, cfg: SAEConfig) -> dict[str, tuple[str, ...]]:
        """The weights an SAE of this config has: ``weight_shapes``, and W_skip [d_in, d_out] for a skip transcoder."""
        return {**cls.weight_shapes, "W_skip": ("d_in", "d_out")} if cfg.skip else dict(cls.weight_shapes)

    def validate_config(self, cfg: SAEConfig) -> None:
        """Reject configs this architecture cannot run (e.g. TopK without k). Raise CheckpointError."""

    @classmethod
    def from_weights(
        cls, weights: Mapping[str, Any], cfg: SAEConfig, where: str | None = None, *, take: bool = False
    ) -> SAE:
        """Build from a mapping of SAELens-named tensors, checking names, shapes and finiteness. ``take``: the
        tensors are the caller's to give away (a loader's, just read from a file), so the SAE keeps them instead
        of copying them into weights of its own: one copy of a wide dictionary in memory, not two."""
        where = where or "weights"
        shapes = cls.shapes(cfg)
        for name, dims in shapes.items():  # before cls(cfg) allocates d_in x d_sae: a config's absurd
            value = weights.get(name)  # d_sae must be a shape error, not a failed (or huge) allocation
            expected = tuple(_size(cfg, d) for d in dims)
            if isinstance(value, (Tensor, np.ndarray)) and tuple(value.shape) != expected:
                want = _want(cfg, dims)
                raise CheckpointError(f"tensor {name} has shape {list(value.shape)}, expected {want}", where)
        with torch.device("meta") if take else contextlib.nullcontext():  # no placeholder weights to overwrite
            sae = cls(cfg)  # config problems carry no file: the caller knows which file holds the config
        missing = [n for n in shapes if n not in weights]
        if missing:
            raise CheckpointError(f"missing tensor(s) {', '.join(missing)} for a {cls.arch} SAE", where)
        with torch.no_grad():
            for name, dims in shapes.items():
                value = weights[name]
                if not isinstance(value, (Tensor, np.ndarray)):
                    raise CheckpointError(f"{name} is a {type(value).__name__}, expected a tensor", where)
                value = torch.as_tensor(value)
                expected = tuple(_size(cfg, d) for d in dims)
                if tuple(value.shape) != expected:
                    got = list(value.shape)
                    want = _want(cfg, dims)
                    raise CheckpointError(f"tensor {name} has shape {got}, expected {want}", where)
                if not value.is_floating_point():
                    raise CheckpointError(f"tensor {name} has dtype {value.dtype}, expected a float", where)
                if not torch.isfinite(value).all():
                    bad = int((~torch.isfinite(value)).sum())
                    raise CheckpointError(f"tensor {name} has {bad} NaN/Inf value(s)", where)
                if take:
                    dtype = DTYPES[cfg.dtype]
                    setattr(sae, name, nn.Parameter(value.to(dtype).contiguous(), requires_grad=False))
                else:
                    getattr(sae, name).copy_(value)
        return sae

    def weights(self) -> dict[str, Tensor]:
        """The SAELens-named tensors (what :func:`saebench.build_sae` takes back); W_skip for a skip transcoder."""
        return {n: getattr(self, n).detach() for n in self.shapes(self.cfg)}

    # -- transcoders ----------------------------------------------------------------------------
    @property
    def is_transcoder(self) -> bool:
        """Whether it writes another hook point than it reads (``cfg.d_out`` is set)."""
        return self.cfg.d_out is not None

    @property
    def d_out(self) -> int:
        """Width of :meth:`decode`'s and :meth:`transcode`'s output: ``cfg.d_out``, d_in for an SAE."""
        return self.cfg.d_out or self.cfg.d_in

    def skip_connection(self, x: Tensor) -> Tensor | None:
        """x·W_skip [..., d_out] of a skip transcoder's input x [..., d_in]; None when there is no skip."""
        if not self.cfg.skip:
            return None
        return self._check_input(x).to(self.W_skip.dtype) @ self.W_skip

    def transcode(self, x: Tensor) -> Tensor:
        """y [..., d_out] = f·W_dec + b_dec (+ x·W_skip) of x [..., d_in]: what replaces the activations of the hook
        point a transcoder writes, x read where it reads in the same forward; for an SAE, ``sae(x)``."""
        return self.forward(x)

    # -- the definition (reference path, differentiable) ---------------------------------------
    def activation(self, h: Tensor) -> Tensor:
        """Dense latents from pre-activations h [..., d_sae]. The architecture's definition."""
        raise NotImplementedError

    def prepare_input(self, x: Tensor) -> Tensor:
        """x' = s·x − b_dec (or s·x): what the encoder multiplies by W_enc."""
        x = x.to(self.W_enc.dtype)
        if self.cfg.act_scale != 1.0:
            x = x * self.cfg.act_scale
        if self.cfg.apply_b_dec_to_input:
            x = x - self.b_dec
        return x

    def pre_acts(self, x: Tensor) -> Tensor:
        return self.prepare_input(x) @ self.W_enc + self.b_enc

    def encode_reference(self, x: Tensor) -> Tensor:
        """Dense latents through plain torch ops (autograd works); the kernel must agree with this."""
        return self.activation(self.pre_acts(x))

    # -- fusion hooks for the kernel ----------------------------------------------------------
    def fused_epilogue(self) -> tuple[Tensor, str]:
        """(bias added to x'·W_enc, post-op "relu" or "none") for the fused GEMM. Default: h itself."""
        return self.b_enc, "none"

    def finish_dense(self, g: Tensor, latents: slice) -> Tensor:
        """Dense latents from the fused GEMM output g of one tile, columns ``latents`` (may work in place).

        ``latents`` is the whole range unless the architecture sets ``latent_blocks``.
        """
        return self.activation(g)

    def finish_sparse(self, values: Tensor, latents: Tensor) -> Tensor:
        """Latent values from g's non-zero entries (only used when ``sparse_from_relu``).

        ``values`` and ``latents`` are flat and aligned: entry j is g's value at latent ``latents[j]``
        (so a per-latent parameter is indexed by ``latents``, a scalar one is simply broadcast).
        """
        return values

    # -- public API ---------------------------------------------------------------------------
    def _needs_grad(self, x: Tensor) -> bool:
        return torch.is_grad_enabled() and (x.requires_grad or any(p.requires_grad for p in self.parameters()))

    def _check_input(self, x: Tensor) -> Tensor:
        if x.ndim == 0 or x.shape[-1] != self.cfg.d_in:
            raise ShapeError(f"{self.arch} SAE expects inputs [..., {self.cfg.d_in}], got {list(x.shape)}")
        return x.to(self.W_enc.device)

    def encode(self, x: Tensor, *, out: Tensor | None = None, compute_dtype: torch.dtype | None = None) -> Tensor:
        """Dense latents [..., d_sae]. ``out`` (2-D, [tokens, d_sae]) reuses a buffer; ``compute_dtype=torch.bfloat16`` trades accuracy for speed."""
        x = self._check_input(x)
        if self._needs_grad(x):
            return self.encode_reference(x)
        flat = kernel.encode_dense(self, x.reshape(-1, self.cfg.d_in), out=out, compute_dtype=compute_dtype)
        return flat.view(*x.shape[:-1], self.cfg.d_sae)

    def encode_sparse(
        self, x: Tensor, *, k_max: int | None = None, compute_dtype: torch.dtype | None = None
    ) -> tuple[Tensor, Tensor]:
        """Active latents as (values, indices), each [..., K], never building a dense [tokens, d_sae] tensor.

        TopK-style SAEs: K = k, every row has exactly k entries (some values may be 0 after the ReLU).
        Threshold SAEs (ReLU, JumpReLU): K = the largest number of active latents of any token in ``x``
        (or ``k_max`` if given, keeping each token's largest values); rows with fewer are padded with
        value 0 at index 0, which :meth:`decode_sparse` and any sum over values ignore. A latent
        is active where its value is non-zero. Indices are int64, values float32 (the SAE's dtype).
        """
        x = self._check_input(x)
        if self._needs_grad(x):
            dense = self.encode_reference(x).reshape(-1, self.cfg.d_sae)
            if self.topk_per_token and self.cfg.k is not None:
                values, indices = dense.topk(self.cfg.k, dim=-1)
            else:
                values, indices = kernel.pack_nonzero(dense, k_max)
        else:
            values, indices = kernel.encode_sparse(
                self, x.reshape(-1, self.cfg.d_in), k_max=k_max, compute_dtype=compute_dtype
            )
        lead = x.shape[:-1]
        return values.view(*lead, values.shape[-1]), indices.view(*lead, indices.shape[-1])

    def decode(self, f: Tensor) -> Tensor:
        """Reconstruction [..., d_out] from dense latents f [..., d_sae] (a transcoder's output without its skip)."""
        if f.shape[-1] != self.cfg.d_sae:
            raise ShapeError(f"{self.arch} SAE decodes latents [..., {self.cfg.d_sae}], got {list(f.shape)}")
        x_hat = f.to(self.W_dec.dtype) @ self.W_dec + self.b_dec
        return x_hat / self.cfg.act_scale if self.cfg.act_scale != 1.0 else x_hat

    def decode_sparse(self, values: Tensor, indices: Tensor) -> Tensor:
        """Reconstruction [..., d_out] from (values, indices) [..., K] as returned by :meth:`encode_sparse`."""
        if values.shape != indices.shape:
            raise ShapeError(f"values {list(values.shape)} and indices {list(indices.shape)} differ in shape")
        lead = values.shape[:-1]
        n, k = math.prod(lead), values.shape[-1]  # explicit sizes: K may be 0 (no latent active anywhere)
        flat = kernel.decode_sparse(self, values.reshape(n, k), indices.reshape(n, k))
        return flat.view(*lead, self.d_out)

    def forward(self, x: Tensor) -> Tensor:
        """Reconstruction x̂ of x [..., d_in]; a transcoder's output, skip included (see :meth:`transcode`)."""
        if self._needs_grad(x):
            out = self.decode(self.encode_reference(self._check_input(x)))
        else:  # decoded part by part: one token firing many latents pads only its own part (kernel)
            flat = self._check_input(x).reshape(-1, self.cfg.d_in)
            parts = [(rows, kernel.decode_sparse(self, v, i)) for rows, v, i in kernel.encode_sparse_parts(self, flat)]
            out = torch.cat([p for _, p in parts]) if parts else flat.new_empty(0, self.d_out)
            out = out.view(*x.shape[:-1], self.d_out)
        skip = self.skip_connection(x)
        return out if skip is None else out + skip.to(out.device)

    # -- training (saebench.training) ---------------------------------------------------------
    def training_forward(self, x: Tensor, state: Any) -> Any:
        """One training step's forward on normalised inputs x [batch, d_in]: a ``saebench.training.TrainingOutput``."""
        raise ConfigError(f"architecture {self.arch!r} cannot be trained by saebench")

    def extra_repr(self) -> str:
        k = f", k={self.cfg.k}" if self.cfg.k else ""
        out = f", d_out={self.cfg.d_out}" + (", skip" if self.cfg.skip else "") if self.is_transcoder else ""
        return f"arch={self.arch}, d_in={self.cfg.d_in}, d_sae={self.cfg.d_sae}{out}{k}"


def _size(cfg: SAEConfig, dim: str) -> int:
    """A weight dimension's size: a config field, "d_out" being d_in for an SAE."""
    return int(cfg.d_out or cfg.d_in) if dim == "d_out" else int(getattr(cfg, dim))


def _want(cfg: SAEConfig, dims: tuple[str, ...]) -> str:
    """A shape as errors name it ("[d_sae=64, d_in=32]"): an SAE's output width is its d_in."""
    label = {"d_out": "d_out" if cfg.d_out is not None else "d_in"}
    return "[" + ", ".join(f"{label.get(d, d)}={_size(cfg, d)}" for d in dims) + "]"
