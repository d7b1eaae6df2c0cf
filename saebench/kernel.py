"""The batched encoder kernel: chunked GEMM with the activation fused in, sparse output, sparse decode.

Why it is shaped this way (measurements in benchmarks/RESULTS.md):
- On x86 CPUs torch's default fp32 matmul (MKL) reaches about half of what
  oneDNN does with a pre-packed weight, so the CPU path calls oneDNN's linear
  with the weight reordered once per SAE and cached.
- Tokens are processed in chunks whose [chunk, d_sae] output fits in the
  last-level cache; the activation then runs on cache-resident data, and a
  dense [N, d_sae] tensor exists only when the caller asks for dense output.
- Bias and the pre-encoder bias (x - b_dec) are folded into one bias vector;
  ``act_scale`` into the packed weight. ReLU is oneDNN's post-op; JumpReLU
  becomes ReLU(x·W + b_enc - θ) followed by adding θ back to the survivors.
- Large dictionaries are split into latent blocks as well (tokens × latents
  tiles), each with its own packed weight; TopK keeps a running top-k across
  the blocks, threshold SAEs merge each block's non-zeros. Extra memory is one
  tile plus the sparse output, whatever d_sae is; that output is padded to its
  widest row, or per row range (encode_sparse_parts) so one busy token stays cheap.
Any other device (CUDA) uses the same tiling with plain torch ops.

The kernel knows an SAE only through :class:`Fusable`, the part of :class:`saebench.SAE` it
uses; prepared weights are cached here per SAE object, and rebuilt when a weight changes.
"""

from __future__ import annotations

import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor

from saebench.errors import ShapeError


class Fusable(Protocol):
    """What the kernel needs of an SAE: its weights, config and the fusion hooks of :class:`saebench.SAE`."""

    cfg: Any
    W_enc: Tensor
    W_dec: Tensor
    b_dec: Tensor
    weight_shapes: ClassVar[dict[str, tuple[str, ...]]]
    sparse_from_relu: ClassVar[bool]
    topk_per_token: ClassVar[bool]
    latent_blocks: ClassVar[bool]
    chunk_tokens: int | None

    def fused_epilogue(self) -> tuple[Tensor, str]: ...

    def finish_dense(self, g: Tensor, latents: slice) -> Tensor: ...

    def finish_sparse(self, values: Tensor, latents: Tensor) -> Tensor: ...


#: a tile's output of about this many floats (~24 MiB) stays in a 32 MiB last-level cache
_TILE_ELEMENTS = 6 * 2**20
#: wider dictionaries are split into latent blocks of this many latents (architectures that allow it)
MAX_BLOCK_LATENTS = 32768
#: on GPUs a tile may be much larger (~1 GiB of fp32)
_GPU_TILE_ELEMENTS = 2**28
#: a part of encode_sparse_parts may pad to this many slots (3 MiB of values and indices) beyond 2 × its non-zeros
PART_SLOTS = 1 << 18


def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build can run oneDNN's packed linear for ``dtype`` on this CPU."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


@dataclass
class Block:
    """One slice of latents [lo, hi) with its prepared weight and bias."""

    lo: int
    hi: int
    weight: Tensor  # oneDNN-packed [hi - lo, d_in] on CPU, else a [d_in, hi - lo] view
    bias: Tensor  # [hi - lo]


@dataclass
class EncoderPlan:
    """Weights prepared for one (SAE parameters, device, compute dtype): folded bias, packed weights."""

    blocks: list[Block]
    post: str  # "relu" or "none"
    backend: str  # "onednn" or "torch"
    chunk: int  # tokens per tile
    dtype: torch.dtype

    def linear(self, x: Tensor, block: Block) -> Tensor:
        """The fused GEMM output g [tokens, hi - lo] of one tile."""
        x = x.to(self.dtype)
        if self.backend == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, block.weight, block.bias, self.post, [], "")
        g = torch.addmm(block.bias, x, block.weight)
        return g.relu_() if self.post == "relu" else g


#: per SAE object and compute dtype: (what the plan was built from, the plan); dropped with the SAE
_PLANS: weakref.WeakKeyDictionary[Any, dict[torch.dtype, tuple[tuple, EncoderPlan]]] = weakref.WeakKeyDictionary()


def plan_for(sae: Fusable, compute_dtype: torch.dtype | None = None) -> EncoderPlan:
    """The cached plan for ``sae``, rebuilt whenever a parameter is modified or moved."""
    dtype = compute_dtype or torch.float32
    params = [getattr(sae, n) for n in sae.weight_shapes]
    key = (dtype, sae.chunk_tokens, MAX_BLOCK_LATENTS, tuple((p.device, p.data_ptr(), p._version) for p in params))
    plans = _PLANS.setdefault(sae, {})
    plan = plans.get(dtype)
    if plan is not None and plan[0] == key:
        return plan[1]
    plans.pop(dtype, None)  # free the stale packed weights before building new ones
    with torch.no_grad():
        built = _build_plan(sae, dtype)
    plans[dtype] = (key, built)
    return built


def forget(sae: Fusable) -> None:
    """Drop ``sae``'s prepared weights (a trainer's fused optimiser changes weights without bumping their version)."""
    _PLANS.pop(sae, None)


def _build_plan(sae: Fusable, dtype: torch.dtype) -> EncoderPlan:
    cfg = sae.cfg
    bias, post = sae.fused_epilogue()
    W = sae.W_enc.float()
    bias = bias.float()
    if cfg.apply_b_dec_to_input:  # (s·x - b_dec)·W + b = x·(s·W) + (b - b_dec·W)
        bias = bias - sae.b_dec.float() @ W
    if cfg.act_scale != 1.0:
        W = W * cfg.act_scale
    width = cfg.d_sae
    if sae.latent_blocks and cfg.d_sae > MAX_BLOCK_LATENTS:
        width = max(MAX_BLOCK_LATENTS, cfg.k or 0)
    onednn = W.device.type == "cpu" and onednn_available(dtype)
    tile = _TILE_ELEMENTS if W.device.type == "cpu" else _GPU_TILE_ELEMENTS
    chunk = sae.chunk_tokens or max(64, min(1024 if onednn else 65536, (tile // width) // 64 * 64))
    blocks = []
    for lo in range(0, cfg.d_sae, width):
        hi = min(lo + width, cfg.d_sae)
        b = bias[lo:hi].to(dtype).contiguous()
        if onednn:
            packed = torch.ops.mkldnn._reorder_linear_weight(W[:, lo:hi].t().contiguous().to(dtype), chunk)
            blocks.append(Block(lo, hi, packed, b))
        else:
            blocks.append(Block(lo, hi, W.to(dtype)[:, lo:hi], b))
    return EncoderPlan(blocks, post, "onednn" if onednn else "torch", chunk, dtype)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def encode_dense(
    sae: Fusable, x: Tensor, out: Tensor | None = None, compute_dtype: torch.dtype | None = None
) -> Tensor:
    """Dense latents [N, d_sae] of x [N, d_in], written tile by tile into ``out``."""
    plan = plan_for(sae, compute_dtype)
    n, d_sae = x.shape[0], sae.cfg.d_sae
    dtype = sae.W_enc.dtype
    if out is None:
        out = torch.empty(n, d_sae, dtype=dtype, device=x.device)
    elif out.shape != (n, d_sae) or not out.is_contiguous():
        raise ShapeError(f"out must be a contiguous [{n}, {d_sae}] tensor, got {list(out.shape)}")
    for s in _chunks(n, plan.chunk):
        if sae.topk_per_token:
            values, indices = _topk_tile_row(plan, x[s], sae.cfg.k)
            out[s].zero_().scatter_(1, indices, values.to(dtype))
            continue
        for b in plan.blocks:
            out[s, b.lo : b.hi] = sae.finish_dense(plan.linear(x[s], b), slice(b.lo, b.hi))
    return out


def _topk_tile_row(plan: EncoderPlan, x: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """ReLU(top-k) of one chunk of tokens across all latent blocks: a running top-k (k <= d_sae)."""
    first, *rest = plan.blocks
    values, indices = torch.topk(plan.linear(x, first), min(k, first.hi - first.lo), dim=-1, sorted=False)
    for b in rest:
        v, i = torch.topk(plan.linear(x, b), min(k, b.hi - b.lo), dim=-1, sorted=False)
        both = torch.cat([values, v], 1)
        values, pos = torch.topk(both, min(k, both.shape[1]), dim=-1, sorted=False)
        indices = torch.cat([indices, i + b.lo], 1).gather(1, pos)
    return values.relu_(), indices


def encode_topk(
    sae: Fusable, x: Tensor, k: int, *, sorted: bool = False, compute_dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """(values, indices) [N, k] of a TopK-style SAE (``topk_per_token``) encoding x [N, d_in] with top-``k``
    instead of its ``cfg.k``: ReLU of each token's k largest pre-activations (Gao et al. 2024, section 5.3,
    swap TopK(k) for TopK(k') after training). With ``sorted``, each row is in decreasing order, so its
    first k' columns are the top-k' encoding for every k' <= k. The SAE's own encoding is ``k = cfg.k``.
    """
    if not sae.topk_per_token:
        raise ShapeError("encode_topk needs a TopK-style SAE (topk_per_token), whose latents are a per-token top-k")
    if not 1 <= k <= sae.cfg.d_sae:
        raise ShapeError(f"top-k with k={k} needs 1 <= k <= d_sae={sae.cfg.d_sae}")
    plan = plan_for(sae, compute_dtype)
    n = x.shape[0]
    dtype = sae.W_enc.dtype
    values = torch.empty(n, k, dtype=dtype, device=x.device)
    indices = torch.empty(n, k, dtype=torch.long, device=x.device)
    for s in _chunks(n, plan.chunk):
        v, i = _topk_tile_row(plan, x[s], k)
        if sorted:
            v, order = v.sort(dim=1, descending=True)
            i = i.gather(1, order)
        values[s], indices[s] = v, i
    return values, indices


def encode_sparse(
    sae: Fusable, x: Tensor, k_max: int | None = None, compute_dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """(values, indices) [N, K] of x [N, d_in]; see :meth:`saebench.SAE.encode_sparse` for K and padding."""
    if sae.topk_per_token:
        return encode_topk(sae, x, sae.cfg.k, compute_dtype=compute_dtype)
    plan = plan_for(sae, compute_dtype)
    n = x.shape[0]
    dtype = sae.W_enc.dtype
    parts = [_pack(*_nonzeros(sae, plan, x[s]), s.stop - s.start, k_max, dtype) for s in _chunks(n, plan.chunk)]
    width = max((p[0].shape[1] for p in parts), default=0)
    values = torch.zeros(n, width, dtype=dtype, device=x.device)
    indices = torch.zeros(n, width, dtype=torch.long, device=x.device)
    for s, (v, i) in zip(_chunks(n, plan.chunk), parts):
        values[s, : v.shape[1]] = v
        indices[s, : i.shape[1]] = i
    return values, indices


def encode_sparse_parts(
    sae: Fusable, x: Tensor, slots: int | None = None, compute_dtype: torch.dtype | None = None
) -> Iterator[tuple[slice, Tensor, Tensor]]:
    """:func:`encode_sparse` of x [N, d_in] as (rows, values, indices) of consecutive row ranges covering x,
    each padded to its own widest row with at most max(``slots`` or PART_SLOTS, 2 × its non-zeros) entries
    (:func:`split_rows`): a token firing many latents widens only its own part, so memory follows a chunk's
    non-zeros, not N × the largest K. Rows equal encode_sparse's bit for bit, less padding. TopK: one part."""
    if sae.topk_per_token:
        yield slice(0, x.shape[0]), *encode_topk(sae, x, sae.cfg.k, compute_dtype=compute_dtype)
        return
    plan = plan_for(sae, compute_dtype)
    for s in _chunks(x.shape[0], plan.chunk):
        rows, latents, vals = _nonzeros(sae, plan, x[s])
        counts = torch.bincount(rows, minlength=s.stop - s.start)
        ends = [0, *torch.cumsum(counts, 0).tolist()]
        for a, b in split_rows(counts.tolist(), slots or PART_SLOTS):
            e = slice(ends[a], ends[b])
            values, indices = _pack(rows[e] - a, latents[e], vals[e], b - a, None, sae.W_enc.dtype)
            yield slice(s.start + a, s.start + b), values, indices


def split_rows(counts: list[int], slots: int) -> list[tuple[int, int]]:
    """Consecutive row ranges [a, b) covering rows with ``counts`` non-zeros, greedily as long as possible
    with (b − a)·max(counts[a:b]) ≤ max(slots, 2·sum(counts[a:b])): padded size within twice the
    non-zeros (or ``slots``). A range of one row always qualifies."""
    ranges, start, width, total = [], 0, 0, 0
    for i, c in enumerate(counts):
        w, t = max(width, c), total + c
        if i > start and (i + 1 - start) * w > max(slots, 2 * t):
            ranges.append((start, i))
            start, w, t = i, c, c
        width, total = w, t
    return ranges + [(start, len(counts))] if counts else ranges


def _nonzeros(sae: Fusable, plan: EncoderPlan, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(row, latent, value) of every active latent of one chunk x, by row, each row's latents ascending."""
    found = []
    for b in plan.blocks:
        g = plan.linear(x, b)
        if not sae.sparse_from_relu:
            g = sae.finish_dense(g, slice(b.lo, b.hi))
        rows, cols = (g != 0).nonzero(as_tuple=True)  # row-major: each row's latents ascending
        vals, cols = g[rows, cols], cols + b.lo
        if sae.sparse_from_relu:
            vals = sae.finish_sparse(vals, cols)
        found.append((rows, cols, vals.to(sae.W_enc.dtype)))
    if len(found) == 1:
        return found[0]
    rows, cols, vals = (torch.cat(t) for t in zip(*found))
    keep = (vals != 0).nonzero().squeeze(1)  # across blocks a value finished (or rounded) to 0 is dropped
    keep = keep[torch.argsort(rows[keep], stable=True)]  # blocks ascend, so a stable sort keeps latents ascending
    return rows[keep], cols[keep], vals[keep]


def pack_nonzero(g: Tensor, k_max: int | None = None) -> tuple[Tensor, Tensor]:
    """Rows of (values, indices) holding the non-zeros of g [N, width] in ascending latent order.

    Rows with fewer non-zeros than the widest are padded with value 0 at index 0. With ``k_max``,
    rows keep their ``k_max`` largest-magnitude entries.
    """
    rows, cols = (g != 0).nonzero(as_tuple=True)
    return _pack(rows, cols, g[rows, cols], g.shape[0], k_max, g.dtype)


def _pack(rows: Tensor, latents: Tensor, vals: Tensor, n_rows: int, k_max: int | None, dtype: torch.dtype):
    counts = torch.bincount(rows, minlength=n_rows)
    width = int(counts.max()) if counts.numel() else 0
    slot = torch.arange(rows.numel(), device=rows.device) - (torch.cumsum(counts, 0) - counts)[rows]
    values = torch.zeros(n_rows, width, dtype=dtype, device=rows.device)
    indices = torch.zeros(n_rows, width, dtype=torch.long, device=rows.device)
    values[rows, slot] = vals.to(dtype)
    indices[rows, slot] = latents
    if k_max is not None and width > k_max:
        top = values.abs().topk(k_max, dim=-1).indices.sort(dim=-1).values
        values, indices = values.gather(1, top), indices.gather(1, top)
        indices = torch.where(values != 0, indices, torch.zeros_like(indices))
    return values, indices


def decode_sparse(sae: Fusable, values: Tensor, indices: Tensor) -> Tensor:
    """x̂ [N, d_in] from (values, indices) [N, K]: a weighted gather-sum of decoder rows (embedding_bag)."""
    W_dec = sae.W_dec
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= sae.cfg.d_sae):
        raise ShapeError(
            f"latent indices must lie in [0, {sae.cfg.d_sae}), got [{int(indices.min())}, {int(indices.max())}]"
        )
    n = values.shape[0]
    if values.shape[1] == 0:
        x_hat = sae.b_dec.expand(n, -1).clone()
    else:
        x_hat = F.embedding_bag(
            indices.to(W_dec.device), W_dec, per_sample_weights=values.to(W_dec.dtype).to(W_dec.device), mode="sum"
        )
        x_hat += sae.b_dec
    return x_hat / sae.cfg.act_scale if sae.cfg.act_scale != 1.0 else x_hat
