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
- TopK keeps a per-chunk top-k, so its extra memory is one chunk.
Any other device (CUDA) uses the same chunking with plain torch ops.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

if TYPE_CHECKING:
    from saebench.sae import SAE

#: chunk outputs of about this many floats (~24 MiB) stay in a 32 MiB last-level cache
_CHUNK_ELEMENTS = 6 * 2**20
_GPU_CHUNK_TOKENS = 16384


def onednn_available(dtype: torch.dtype = torch.float32) -> bool:
    """Whether this torch build can run oneDNN's packed linear for ``dtype`` on this CPU."""
    if not torch.backends.mkldnn.is_available() or not hasattr(torch.ops.mkldnn, "_linear_pointwise"):
        return False
    if dtype == torch.bfloat16:
        return bool(torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return dtype == torch.float32


@dataclass
class EncoderPlan:
    """Weights prepared for one (SAE parameters, device, compute dtype): folded bias, packed weight."""

    weight: Tensor  # oneDNN-packed [d_sae, d_in] on CPU, else [d_in, d_sae]
    bias: Tensor  # [d_sae]
    post: str  # "relu" or "none"
    backend: str  # "onednn" or "torch"
    chunk: int  # tokens per chunk
    dtype: torch.dtype

    def linear(self, x: Tensor) -> Tensor:
        x = x.to(self.dtype)
        if self.backend == "onednn":
            return torch.ops.mkldnn._linear_pointwise(x, self.weight, self.bias, self.post, [], "")
        g = torch.addmm(self.bias, x, self.weight)
        return g.relu_() if self.post == "relu" else g


def plan_for(sae: "SAE", compute_dtype: torch.dtype | None = None) -> EncoderPlan:
    """The cached plan for ``sae``, rebuilt whenever a parameter is modified or moved."""
    dtype = compute_dtype or torch.float32
    params = [getattr(sae, n) for n in sae.weight_shapes]
    key = (dtype, sae.chunk_tokens, tuple((p.device, p.data_ptr(), p._version) for p in params))
    plan = sae._plans.get(dtype)
    if plan is not None and plan[0] == key:
        return plan[1]
    with torch.no_grad():
        built = _build_plan(sae, dtype)
    sae._plans[dtype] = (key, built)
    return built


def _build_plan(sae: "SAE", dtype: torch.dtype) -> EncoderPlan:
    cfg = sae.cfg
    bias, post = sae._epilogue()
    W = sae.W_enc.float()
    bias = bias.float()
    if cfg.apply_b_dec_to_input:  # (s·x - b_dec)·W + b = x·(s·W) + (b - b_dec·W)
        bias = bias - sae.b_dec.float() @ W
    if cfg.act_scale != 1.0:
        W = W * cfg.act_scale
    device = W.device
    if device.type == "cpu" and onednn_available(dtype):
        chunk = sae.chunk_tokens or max(64, min(1024, (_CHUNK_ELEMENTS // cfg.d_sae) // 64 * 64))
        Wt = W.t().contiguous().to(dtype)
        packed = torch.ops.mkldnn._reorder_linear_weight(Wt, chunk)
        return EncoderPlan(packed, bias.to(dtype), post, "onednn", chunk, dtype)
    chunk = sae.chunk_tokens or (_GPU_CHUNK_TOKENS if device.type != "cpu" else 256)
    return EncoderPlan(W.to(dtype).contiguous(), bias.to(dtype), post, "torch", chunk, dtype)


def _chunks(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def encode_dense(sae: "SAE", x: Tensor, out: Tensor | None = None, compute_dtype: torch.dtype | None = None) -> Tensor:
    """Dense latents [N, d_sae] of x [N, d_in], written chunk by chunk into ``out``."""
    plan = plan_for(sae, compute_dtype)
    n, d_sae = x.shape[0], sae.cfg.d_sae
    dtype = sae.W_enc.dtype
    if out is None:
        out = torch.empty(n, d_sae, dtype=dtype, device=x.device)
    elif out.shape != (n, d_sae) or not out.is_contiguous():
        from saebench.errors import ShapeError

        raise ShapeError(f"out must be a contiguous [{n}, {d_sae}] tensor, got {list(out.shape)}")
    k = sae.cfg.k if sae.topk_per_token else None
    for s in _chunks(n, plan.chunk):
        g = plan.linear(x[s])
        if k is not None:
            values, indices = torch.topk(g, k, dim=-1, sorted=False)
            out[s].zero_().scatter_(1, indices, values.relu_().to(dtype))
        else:
            out[s] = sae._finish_dense(g)
    return out


def encode_sparse(
    sae: "SAE", x: Tensor, k_max: int | None = None, compute_dtype: torch.dtype | None = None
) -> tuple[Tensor, Tensor]:
    """(values, indices) [N, K] of x [N, d_in]; see :meth:`saebench.SAE.encode_sparse` for K and padding."""
    plan = plan_for(sae, compute_dtype)
    n = x.shape[0]
    dtype = sae.W_enc.dtype
    if sae.topk_per_token:
        k = sae.cfg.k
        values = torch.empty(n, k, dtype=plan.dtype, device=x.device)
        indices = torch.empty(n, k, dtype=torch.long, device=x.device)
        for s in _chunks(n, plan.chunk):
            torch.topk(plan.linear(x[s]), k, dim=-1, sorted=False, out=(values[s], indices[s]))
        return values.relu_().to(dtype), indices
    parts = []
    for s in _chunks(n, plan.chunk):
        g = plan.linear(x[s])
        if not sae.sparse_from_relu:
            g = sae._finish_dense(g)
        parts.append(_pack_chunk(sae, g, k_max))
    width = max((p[0].shape[1] for p in parts), default=0)
    values = torch.zeros(n, width, dtype=dtype, device=x.device)
    indices = torch.zeros(n, width, dtype=torch.long, device=x.device)
    for s, (v, i) in zip(_chunks(n, plan.chunk), parts):
        values[s, : v.shape[1]] = v
        indices[s, : i.shape[1]] = i
    return values, indices


def _pack_chunk(sae: "SAE", g: Tensor, k_max: int | None) -> tuple[Tensor, Tensor]:
    """Pack the non-zeros of one chunk into rows of (values, indices), left-aligned, zero-padded."""
    finish = sae._finish_sparse if sae.sparse_from_relu else None
    return pack_nonzero(g, k_max, finish, sae.W_enc.dtype)


def pack_nonzero(g: Tensor, k_max: int | None = None, finish=None, dtype: torch.dtype | None = None) -> tuple[Tensor, Tensor]:
    """Rows of (values, indices) holding the non-zeros of g [N, d_sae] in ascending latent order.

    Rows with fewer non-zeros than the widest are padded with value 0 at index 0. With ``k_max``,
    rows keep their ``k_max`` largest-magnitude entries. ``finish(values, latents)`` maps the
    raw non-zero values to latent values (the fused JumpReLU adds θ back).
    """
    rows, cols = (g != 0).nonzero(as_tuple=True)  # row-major: each row's latents ascending
    vals = g[rows, cols]
    if finish is not None:
        vals = finish(vals, cols)
    counts = torch.bincount(rows, minlength=g.shape[0])
    width = int(counts.max()) if counts.numel() else 0
    slot = torch.arange(rows.numel(), device=g.device) - (torch.cumsum(counts, 0) - counts)[rows]
    values = torch.zeros(g.shape[0], width, dtype=dtype or g.dtype, device=g.device)
    indices = torch.zeros(g.shape[0], width, dtype=torch.long, device=g.device)
    values[rows, slot] = vals.to(values.dtype)
    indices[rows, slot] = cols
    if k_max is not None and width > k_max:
        top = values.abs().topk(k_max, dim=-1).indices.sort(dim=-1).values
        values, indices = values.gather(1, top), indices.gather(1, top)
        indices = torch.where(values != 0, indices, torch.zeros_like(indices))
    return values, indices


def decode_sparse(sae: "SAE", values: Tensor, indices: Tensor) -> Tensor:
    """x̂ [N, d_in] from (values, indices) [N, K]: a weighted gather-sum of decoder rows (embedding_bag)."""
    W_dec = sae.W_dec
    if indices.numel() and (int(indices.min()) < 0 or int(indices.max()) >= sae.cfg.d_sae):
        from saebench.errors import ShapeError

        raise ShapeError(f"latent indices must lie in [0, {sae.cfg.d_sae}), got [{int(indices.min())}, {int(indices.max())}]")
    n = values.shape[0]
    if values.shape[1] == 0:
        x_hat = sae.b_dec.expand(n, -1).clone()
    else:
        x_hat = F.embedding_bag(
            indices.to(W_dec.device), W_dec, per_sample_weights=values.to(W_dec.dtype).to(W_dec.device), mode="sum"
        )
        x_hat += sae.b_dec
    return x_hat / sae.cfg.act_scale if sae.cfg.act_scale != 1.0 else x_hat
