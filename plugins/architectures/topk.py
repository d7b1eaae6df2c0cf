"""TopK SAE (Gao et al. 2024): keep the k largest pre-activations per token, then ReLU.

A trained TopK SAE can be exported as a JumpReLU with one global threshold θ for every latent
(:meth:`TopKSAE.to_jumprelu`, θ from :func:`topk_threshold`): same weights, f = h·1[h > θ], so
tokens keep a variable number of latents, k on average over the calibration activations.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import Tensor

import saebench
from saebench.errors import CheckpointError

if TYPE_CHECKING:
    from saebench.plugins.architectures.jumprelu import JumpReLUSAE
    from saebench.training import TrainingOutput, TrainState

#: tokens per calibration batch of :func:`topk_threshold` (the trainer's default batch size)
CALIBRATION_BATCH = 4096


def auxk_loss(residual: Tensor, x: Tensor, aux_values: Tensor, aux_indices: Tensor, W_dec: Tensor) -> Tensor:
    """Gao et al.'s AuxK term (before its coefficient), in the units of the trainer's ``mse``.

    ê = Σ_j ReLU(aux_values_j)·W_dec[aux_indices_j] (no b_dec) tries to reconstruct the residual
    e = x − x̂ (detached). OpenAI normalises it as Σ‖e − ê‖² / Σ‖e − ē‖², next to a main loss
    normalised the same way; multiplying by Σ‖x − x̄‖²/tokens puts it in the units of our mse term, so
    the weight α = 1/32 balances the two as in OpenAI's training code.
    """
    e_hat = F.embedding_bag(aux_indices, W_dec, per_sample_weights=aux_values.relu(), mode="sum")
    fvu = (e_hat - residual).pow(2).sum() / (residual - residual.mean(0)).pow(2).sum().clamp_min(1e-30)
    return fvu * ((x - x.mean(0)).pow(2).sum() / x.shape[0]).detach()


def topk_threshold(sae: saebench.SAE, x: Tensor, batch_tokens: int = CALIBRATION_BATCH) -> float:
    """The global θ that makes a JumpReLU with the TopK SAE's weights keep k latents per token on average.

    Bussmann, Leask and Nanda (2024, arXiv:2412.06410, section 3)'s inference threshold for BatchTopK,
    θ = E_B[min{f_ij : f_ij > 0}], with f = BatchTopK_k(h) of each batch B: the k·|B| largest ReLU'd
    pre-activations h = x'·W_enc + b_enc of the batch, all positive ones if fewer. That is, per batch,
    its (k·|B|)-th largest positive h; θ is the mean over the batches. x [..., d_in] (raw activations,
    as ``encode`` takes them) is cut into consecutive batches of ``batch_tokens`` tokens; a final
    shorter batch is left out unless it is the only one. Each batch is a dense [batch_tokens, d_sae]
    tensor. Batches with no positive pre-activation say nothing about θ and are skipped.
    """
    k = sae.cfg.k
    if k is None:
        raise saebench.ConfigError(f"a {sae.arch} SAE has no k to calibrate a threshold for")
    if batch_tokens < 1:
        raise saebench.ConfigError(f"batch_tokens must be positive, got {batch_tokens}")
    flat = sae._check_input(x).reshape(-1, sae.cfg.d_in)
    if flat.shape[0] == 0:
        raise saebench.DataError("topk_threshold needs at least one calibration token")
    batches = list(flat.split(batch_tokens))
    if len(batches) > 1 and batches[-1].shape[0] < batch_tokens:
        batches.pop()
    minima = []
    with torch.no_grad():
        for xb in batches:
            acts = sae.pre_acts(xb).relu().reshape(-1)
            kept = acts.topk(min(k * xb.shape[0], acts.numel()), sorted=False).values
            kept = kept[kept > 0]
            if kept.numel():
                minima.append(float(kept.min().double()))
    if not minima:
        raise saebench.DataError("no pre-activation of the calibration tokens is positive: θ is undefined")
    return sum(minima) / len(minima)


class TopKSAE(saebench.SAE):
    """TopK SAE: f = scatter(ReLU(top-k of h)), as SAELens defines it."""

    arch = "topk"
    topk_per_token = True
    latent_blocks = True

    def validate_config(self, cfg: saebench.SAEConfig) -> None:
        if cfg.k is None:
            raise CheckpointError("a topk SAE needs k (latents kept per token)")
        if cfg.k > cfg.d_sae:
            raise CheckpointError(f"k={cfg.k} is larger than d_sae={cfg.d_sae}")

    def activation(self, h: Tensor) -> Tensor:
        values, indices = h.topk(self.cfg.k, dim=-1)
        return torch.zeros_like(h).scatter(-1, indices, values.relu())

    def to_jumprelu(self, x: Tensor, *, batch_tokens: int = CALIBRATION_BATCH) -> JumpReLUSAE:
        """A JumpReLU SAE with these weights and θ = :func:`topk_threshold` (x, ``batch_tokens``) for every latent.

        It keeps h·1[h > θ] instead of each token's top k: on the calibration tokens k per token on
        average (less the one activation equal to θ per batch, the comparison being strict), more
        for tokens with many large pre-activations, fewer for the others. Where both are active
        the values agree (both are h). The config is this SAE's with arch ``jumprelu`` and no k;
        ``metadata["topk_export"]`` records k, θ and the calibration.
        """
        from saebench.plugins.architectures.jumprelu import JumpReLUSAE

        theta = topk_threshold(self, x, batch_tokens)
        tokens = int(self._check_input(x).reshape(-1, self.cfg.d_in).shape[0])
        export = {"k": self.cfg.k, "threshold": theta, "calibration_tokens": tokens, "batch_tokens": batch_tokens}
        data = {**self.cfg.model_dump(), "arch": JumpReLUSAE.arch, "k": None}
        data["metadata"] = {**self.cfg.metadata, "topk_export": export}
        weights = {**self.weights(), "threshold": torch.full_like(self.b_enc, theta)}
        sae = JumpReLUSAE.from_weights(weights, saebench.SAEConfig(**data))
        assert isinstance(sae, JumpReLUSAE)
        return sae.to(self.W_enc.device)

    def training_forward(self, x: Tensor, state: TrainState) -> TrainingOutput:
        """MSE + aux_coefficient·AuxK (+ Multi-TopK's weight·MSE at multiplier·k, if on). Sparse throughout:
        the kernel's GEMM picks the latents (no grad), :class:`~saebench.training.GatherPreacts` gives their
        values gradients, and decoding is an embedding_bag.

        Multi-TopK (Gao et al. 2024, arXiv:2406.04093, section 5.3: L(k) + L(4k)/8) selects each token's top multiplier·k
        latents once, in decreasing order; the first k of them are the SAE's own encoding. The term is
        ``multi_topk.weight · mse(x̂_{multiplier·k}, x)``, in the units of ``mse``: Gao et al.'s L is the
        normalised MSE, and both terms share the normaliser, so the ratio of the two is the paper's. AuxK
        still reconstructs the residual of the top-k reconstruction, and only the top k count as fired
        (dead latents, l0): the SAE is the TopK(k) one, the second term only trains it for larger k.
        """
        from saebench.training import GatherPreacts, TrainingOutput, mse

        cfg = state.cfg
        k, k_multi = self.cfg.k, cfg.multi_topk_k
        dead = state.dead.nonzero().squeeze(1) if state.dead is not None and cfg.aux_coefficient > 0 else None
        aux_k = min(cfg.aux_k_for(self.cfg.d_in), len(dead)) if dead is not None else 0
        with torch.no_grad():
            values, indices, aux_values, aux_indices = self._select(x, dead if aux_k else None, aux_k, k_multi or k)
            if k_multi:
                values, order = values.sort(dim=1, descending=True)
                indices = indices.gather(1, order)
        x_in = self.prepare_input(x)
        values = GatherPreacts.apply(x_in, self.W_enc, self.b_enc, indices, values).relu()
        if k_multi:
            x_hat_multi = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec
            values, indices = values[:, :k].contiguous(), indices[:, :k].contiguous()
        x_hat = F.embedding_bag(indices, self.W_dec, per_sample_weights=values, mode="sum") + self.b_dec
        losses = {"mse": mse(x_hat, x)}
        if k_multi:
            assert cfg.multi_topk is not None
            losses["multi_topk"] = cfg.multi_topk.weight * mse(x_hat_multi, x)
        if aux_k:  # AuxK trains the dead latents' encoder columns and decoder rows, not b_dec
            aux_values = GatherPreacts.apply(x_in.detach(), self.W_enc, self.b_enc, aux_indices, aux_values)
            aux = auxk_loss((x - x_hat).detach(), x, aux_values, aux_indices, self.W_dec)
            losses["auxk"] = cfg.aux_coefficient * aux
        else:
            losses["auxk"] = x_hat.new_zeros(())
        active = values.detach() > 0
        fired = torch.zeros(self.cfg.d_sae, dtype=torch.bool, device=x.device)
        fired[indices[active]] = True
        return TrainingOutput(x_hat, losses, l0=active.sum(-1).float().mean(), fired=fired)

    def _select(
        self, x: Tensor, dead: Tensor | None, aux_k: int, k: int
    ) -> tuple[Tensor, Tensor, Tensor | None, Tensor | None]:
        """Pre-activations and indices of each token's top k latents (unordered) and, if ``dead`` is given, of
        its top ``aux_k`` dead latents: one pass of the kernel's chunked GEMM, no dense [tokens, d_sae] tensor."""
        from saebench import kernel

        plan = kernel.plan_for(self)
        n = x.shape[0]
        local = [] if dead is None else [dead[(dead >= b.lo) & (dead < b.hi)] - b.lo for b in plan.blocks]
        out: list[tuple[Tensor, ...]] = []
        for s in range(0, n, plan.chunk):
            xs = x[s : s + plan.chunk]
            cand_v, cand_i, dead_v = [], [], []
            for j, b in enumerate(plan.blocks):
                g = plan.linear(xs, b)
                v, i = g.topk(min(k, b.hi - b.lo), dim=1, sorted=False)
                cand_v.append(v)
                cand_i.append(i + b.lo)
                if dead is not None:
                    dead_v.append(g[:, local[j]])
            v, i = cand_v[0], cand_i[0]
            if len(cand_v) > 1:
                v, pos = torch.cat(cand_v, 1).topk(k, dim=1, sorted=False)
                i = torch.cat(cand_i, 1).gather(1, pos)
            if dead is None:
                out.append((v, i))
            else:
                av, pos = torch.cat(dead_v, 1).topk(aux_k, dim=1, sorted=False)
                out.append((v, i, av, dead[pos]))
        cols = [torch.cat(c) for c in zip(*out)]
        return (*cols, None, None) if dead is None else tuple(cols)


@saebench.hookimpl
def register_architectures(register):
    register(TopKSAE)
