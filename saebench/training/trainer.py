"""Training SAEs on cached activations (``saebench train``, a matrix ``train:`` block).

The trainer is architecture-agnostic; each architecture plugin implements
:meth:`saebench.SAE.training_forward` (its forward pass and loss terms) and the
trainer does everything else:

- **Units.** With ``normalize`` (default), inputs are multiplied by
  s = √d_in / E‖x‖ (E over the first ~16k tokens), so a token's squared norm is
  about d_in and the coefficients (``l1``, ``l0``, ``bandwidth``,
  ``initial_threshold``) mean the same at any model scale. Training happens in
  that space; the returned SAE carries ``act_scale = s`` and so works on raw
  activations. Every SAE is trained with ``apply_b_dec_to_input`` (x' = s·x − b_dec).
- **Loss.** The sum of the architecture's terms; ``mse`` is the mean over tokens
  of ‖x − x̂‖² summed over d_in (normalised units), as in Anthropic's and
  SAELens's losses.
- **Initialisation.** Decoder rows random unit vectors, W_enc = W_decᵀ,
  b_enc = 0, b_dec = the geometric median of the first tokens.
- **Decoder norms.** Rows of W_dec are kept at unit norm for every architecture:
  the radial part of each row's gradient is removed before the Adam step and the
  rows are renormalised after it (Bricken et al., Gao et al.). Sparsity
  penalties are therefore plain (ReLU's L1 equals the decoder-norm-weighted L1).
- **Schedule.** Adam (β 0.9/0.999); linear warm-up over the first ``warmup``
  fraction of steps, linear decay to 0 over the last ``decay`` fraction.
- **Dead latents.** The trainer counts tokens since each latent last fired; a
  latent is dead once that reaches ``dead_tokens``. TopK's AuxK loss uses this.
- **Data.** ``batches()`` yields float32 [n, d_in] chunks of any size; they are
  re-cut into ``batch_size`` batches, shuffled within buffers of
  ``shuffle_batches`` batches (seeded), and the data is repeated as often as
  ``tokens`` needs. Training runs on the CPU, in float32.

The straight-through estimators (JumpReLU) and the AuxK loss live in their
architecture plugins; :class:`GatherPreacts` (sparse encoder gradients) is here
for any TopK-like architecture.
"""

from __future__ import annotations

import itertools
import math
import time
from collections.abc import Callable, Iterator

import torch
import torch.nn.functional as F
from torch import Tensor

from saebench import kernel, plugin_manager
from saebench.errors import SaebenchError, ShapeError
from saebench.sae import SAE, SAEConfig
from saebench.training.config import HistoryEntry, TrainConfig, TrainingOutput, TrainingStats, TrainState

#: tokens used to estimate E‖x‖ and b_dec's initial geometric median
ESTIMATE_TOKENS = 16384
#: the progress callback is called every this many steps (and at the last one)
PROGRESS_EVERY = 10


# -- helpers for architectures -------------------------------------------------------------------
def mse(x_hat: Tensor, x: Tensor) -> Tensor:
    """Mean over tokens of ‖x − x̂‖² (summed over d_in)."""
    return (x_hat - x).pow(2).sum(-1).mean()


def latent_sum(indices: Tensor, weights: Tensor, rows: Tensor, d_sae: int) -> Tensor:
    """out[l] = Σ over (b, j) with indices[b, j] = l of weights[b, j] · rows[b]: [d_sae, d]. Sparse, no [b, k, d] temporary."""
    flat = indices.reshape(-1)
    order = flat.argsort(stable=True)
    counts = torch.bincount(flat, minlength=d_sae)
    offsets = counts.cumsum(0) - counts
    return F.embedding_bag(
        order // indices.shape[1], rows, offsets, per_sample_weights=weights.reshape(-1)[order], mode="sum"
    )


class GatherPreacts(torch.autograd.Function):
    """values = (x'·W_enc + b_enc) gathered at ``indices`` [b, K], with gradients that never touch the other latents.

    ``values`` are computed by the caller (without grad, e.g. by the kernel); this function only gives
    them their gradients: ∂/∂x' = Σ_j g_j W_enc[:, i_j], ∂/∂W_enc[:, l] = Σ g x', ∂/∂b_enc[l] = Σ g — O(b·K·d_in)
    instead of the dense O(b·d_sae·d_in).
    """

    @staticmethod
    def forward(ctx, x: Tensor, W_enc: Tensor, b_enc: Tensor, indices: Tensor, values: Tensor) -> Tensor:
        ctx.save_for_backward(x, W_enc, indices)
        return values.clone()

    @staticmethod
    def backward(ctx, g: Tensor):
        x, W_enc, indices = ctx.saved_tensors
        g = g.contiguous()
        d_sae = W_enc.shape[1]
        grad_x = grad_W = grad_b = None
        if ctx.needs_input_grad[0]:
            grad_x = F.embedding_bag(indices, W_enc.t().contiguous(), per_sample_weights=g, mode="sum")
        if ctx.needs_input_grad[1]:
            grad_W = latent_sum(indices, g, x, d_sae).t()
        if ctx.needs_input_grad[2]:
            grad_b = torch.zeros(d_sae, dtype=g.dtype, device=g.device).index_add_(
                0, indices.reshape(-1), g.reshape(-1)
            )
        return grad_x, grad_W, grad_b, None, None


# -- the trainer -----------------------------------------------------------------------------------
def train_sae(
    cfg: TrainConfig,
    batches: Callable[[], Iterator[Tensor]],
    d_in: int,
    *,
    hook_name: str | None = None,
    model_name: str | None = None,
    progress: Callable[[int, int, dict[str, float]], None] | None = None,
) -> tuple[SAE, TrainingStats]:
    """Train an SAE on activations [n, d_in] from ``batches()`` (a fresh iterator per call; repeated as needed).

    Returns the SAE (``act_scale`` set, so it applies to raw activations; ``requires_grad`` off) and
    its :class:`TrainingStats`. ``progress(step, total_steps, metrics)`` is called every few steps.
    """
    cls = plugin_manager.get("architecture", cfg.arch)
    cfg = cfg.model_copy(update={"aux_k": cfg.aux_k_for(d_in)})  # record the default that applies
    gen = torch.Generator().manual_seed(cfg.seed)
    stream = _rebatch(batches, cfg.batch_size, d_in, cfg.shuffle_batches, gen)
    first = [next(stream) for _ in range(max(1, min(cfg.steps, -(-ESTIMATE_TOKENS // cfg.batch_size))))]
    sample = torch.cat(first)
    scale = math.sqrt(d_in) / float(sample.norm(dim=1).mean()) if cfg.normalize else 1.0
    if not math.isfinite(scale) or scale <= 0:
        raise SaebenchError("the training activations are all zero; cannot normalise them")

    sae = cls(SAEConfig(arch=cfg.arch, d_in=d_in, d_sae=cfg.d_sae, k=cfg.k, apply_b_dec_to_input=True))
    _initialise(sae, sample * scale, cfg, gen)
    params = list(sae.parameters())
    for p in params:
        p.requires_grad_(True)
    optimizer = torch.optim.Adam(params, lr=cfg.lr_at(0), betas=(0.9, 0.999), foreach=True)
    state = TrainState(cfg=cfg, optimizer=optimizer, dead=torch.zeros(cfg.d_sae, dtype=torch.bool))
    since_fired = torch.zeros(cfg.d_sae, dtype=torch.long)
    history: list[HistoryEntry] = []
    t0 = time.perf_counter()
    for step, x in zip(range(cfg.steps), itertools.chain(first, stream)):
        state.step = step
        out, loss = _step(sae, optimizer, state, x * scale if scale != 1.0 else x)
        since_fired += cfg.batch_size
        since_fired.masked_fill_(out.fired, 0)
        state.dead = since_fired >= cfg.dead_tokens
        _log(state, out, loss, history, progress)
    seconds = time.perf_counter() - t0
    return _finish(sae, state, x * scale if scale != 1.0 else x, scale, history, seconds, hook_name, model_name)


def _step(sae: SAE, optimizer: torch.optim.Optimizer, state: TrainState, xs: Tensor) -> tuple[TrainingOutput, Tensor]:
    """One optimiser step, decoder rows kept at unit norm."""
    for group in optimizer.param_groups:
        group["lr"] = state.cfg.lr_at(state.step)
    out = sae.training_forward(xs, state)
    loss = sum(out.losses.values())
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    with torch.no_grad():
        _project_radial(sae.W_dec)
        optimizer.step()
        sae.W_dec.div_(sae.W_dec.norm(dim=1, keepdim=True).clamp_min(1e-8))
    kernel.forget(sae)  # the kernel's packed weights are stale (fused optimisers leave _version alone)
    return out, loss


def _log(
    state: TrainState,
    out: TrainingOutput,
    loss: Tensor,
    history: list[HistoryEntry],
    progress: Callable[[int, int, dict[str, float]], None] | None,
) -> None:
    """A history entry every ``log_every`` steps, the progress callback every ``PROGRESS_EVERY``; stop on divergence."""
    cfg, step = state.cfg, state.step
    last = step == cfg.steps - 1
    log = step % cfg.log_every == 0 or last
    report = progress is not None and (step % PROGRESS_EVERY == 0 or last)
    if not (log or report):
        return
    metrics = {
        "loss": float(loss.detach()),
        **{n: float(v.detach()) for n, v in out.losses.items()},
        "l0": float(out.l0),
        "dead": float(state.dead.float().mean()),
        "lr": cfg.lr_at(step),
    }
    if not math.isfinite(metrics["loss"]):
        raise SaebenchError(f"training diverged at step {step} (loss {metrics['loss']}); lower lr")
    if log:
        history.append(
            HistoryEntry(
                step=step,
                tokens=(step + 1) * cfg.batch_size,
                loss=metrics["loss"],
                mse=metrics["mse"],
                l0=metrics["l0"],
                dead_fraction=metrics["dead"],
            )
        )
    if report:
        progress(step + 1, cfg.steps, metrics)


def _finish(
    sae: SAE,
    state: TrainState,
    xs: Tensor,
    scale: float,
    history: list[HistoryEntry],
    seconds: float,
    hook_name: str | None,
    model_name: str | None,
) -> tuple[SAE, TrainingStats]:
    """The trained SAE for raw activations (``act_scale``), and its stats measured with the final weights on
    the last batch (this final forward also syncs derived weights, e.g. JumpReLU's θ)."""
    cfg, steps, bs = state.cfg, state.cfg.steps, state.cfg.batch_size
    with torch.no_grad():
        out = sae.training_forward(xs, state)
        ev = 1 - float((xs - out.x_hat).pow(2).sum() / (xs - xs.mean(0)).pow(2).sum().clamp_min(1e-30))
    losses = {n: float(v) for n, v in out.losses.items()}
    losses["loss"] = sum(losses.values())
    stats = TrainingStats(
        arch=cfg.arch,
        steps=steps,
        tokens=steps * bs,
        seconds=seconds,
        tokens_per_s=steps * bs / max(seconds, 1e-9),
        act_scale=scale,
        losses=losses,
        l0=float(out.l0),
        explained_variance=ev,
        dead_fraction=float(state.dead.float().mean()),
        history=history,
    )
    metadata = {
        "training": {
            "config": cfg.model_dump(mode="json"),
            "steps": steps,
            "tokens": steps * bs,
            "final_losses": losses,
            "l0": stats.l0,
            "dead_fraction": stats.dead_fraction,
        }
    }
    weights = {n: w.detach().clone() for n, w in sae.weights().items()}
    cfg_out = SAEConfig(
        arch=cfg.arch,
        d_in=sae.cfg.d_in,
        d_sae=cfg.d_sae,
        k=cfg.k,
        apply_b_dec_to_input=True,
        act_scale=scale,
        hook_name=hook_name,
        model_name=model_name,
        metadata=metadata,
    )
    return type(sae).from_weights(weights, cfg_out), stats


def _rebatch(
    batches: Callable[[], Iterator[Tensor]], bs: int, d_in: int, shuffle: int, gen: torch.Generator
) -> Iterator[Tensor]:
    """Endless [bs, d_in] float32 batches: chunks of any size, re-cut, shuffled within buffers, epochs repeated."""
    pending: list[Tensor] = []
    n = 0
    buffer = max(1, shuffle) * bs
    while True:
        got = 0
        for i, chunk in enumerate(batches()):
            if not isinstance(chunk, Tensor) or chunk.ndim != 2 or chunk.shape[1] != d_in:
                shape = list(chunk.shape) if isinstance(chunk, Tensor) else type(chunk).__name__
                raise ShapeError(f"training batch {i} is {shape}, expected [n, {d_in}]")
            chunk = chunk.detach().to("cpu", torch.float32)
            if not torch.isfinite(chunk).all():
                raise SaebenchError(f"training batch {i} holds NaN or Inf values")
            pending.append(chunk)
            n += chunk.shape[0]
            got += chunk.shape[0]
            while n >= buffer:
                buf = torch.cat(pending)
                if shuffle:
                    buf = buf[torch.randperm(buf.shape[0], generator=gen)]
                full = buf.shape[0] // bs * bs
                yield from buf[:full].split(bs)
                pending, n = [buf[full:]], buf.shape[0] - full
        if got == 0:
            raise SaebenchError("the training data is empty")


def geometric_median(x: Tensor, iters: int = 30) -> Tensor:
    """The point minimising Σ‖x_i − m‖ (Weiszfeld's iterations from the mean)."""
    x = x.double()
    m = x.mean(0)
    for _ in range(iters):
        w = 1 / (x - m).norm(dim=1).clamp_min(1e-8)
        m = (w[:, None] * x).sum(0) / w.sum()
    return m.float()


def _initialise(sae: SAE, sample: Tensor, cfg: TrainConfig, gen: torch.Generator) -> None:
    d_in, d_sae = sae.cfg.d_in, sae.cfg.d_sae
    with torch.no_grad():
        W_dec = torch.randn(d_sae, d_in, generator=gen)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        sae.W_dec.copy_(W_dec)
        sae.W_enc.copy_(W_dec.t())
        sae.b_enc.zero_()
        sae.b_dec.copy_(geometric_median(sample[:4096]))
        if "threshold" in sae.weight_shapes:
            sae.threshold.fill_(cfg.initial_threshold)


def _project_radial(W_dec: Tensor) -> None:
    """Remove from each decoder row's gradient its component along the (unit-norm) row."""
    g = W_dec.grad
    if g is not None:
        g -= (g * W_dec).sum(1, keepdim=True) * W_dec
