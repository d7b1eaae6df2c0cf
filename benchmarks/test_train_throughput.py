"""TopK training throughput: saebench's train_sae against a naive torch training loop.

Both run the same number of Adam steps on the same batches. The naive loop is what a
straightforward TopK trainer does: dense x·W_enc + b, top-k, a dense scatter into [batch, d_sae],
a dense decode, MSE, backward through all of it, Adam. train_sae's figure is the whole call
(normalisation estimate, initialisation, the steps with decoder renormalisation and dead-latent
bookkeeping, and the final statistics pass), with AuxK idle (no latent reaches dead_tokens)
and no shuffling, so that the two do the same work per step.
"""

from __future__ import annotations

import torch
from conftest import SMALL, record, run

from saebench.training import TrainConfig, train_sae

D_IN, D_SAE, K, BATCH, STEPS = (64, 512, 8, 256, 3) if SMALL else (640, 4096, 32, 4096, 6)
GROUP = f"train topk k={K} {D_IN}x{D_SAE}"
#: the dense step's FLOPs (encode and decode GEMMs, three backward GEMMs): the same yardstick for both rows
FLOPS = 10.0 * BATCH * D_IN * D_SAE * STEPS
TOKENS = BATCH * STEPS


def _data() -> torch.Tensor:
    g = torch.Generator().manual_seed(0)
    return torch.randn(BATCH * STEPS, D_IN, generator=g) * 3 + torch.randn(D_IN, generator=g)


def test_train_topk_naive(benchmark):
    x_all = _data()
    g = torch.Generator().manual_seed(0)

    def train():
        W_dec = torch.randn(D_SAE, D_IN, generator=g)
        W_dec /= W_dec.norm(dim=1, keepdim=True)
        W_enc = W_dec.t().clone().requires_grad_(True)
        W_dec.requires_grad_(True)
        b_enc = torch.zeros(D_SAE, requires_grad=True)
        b_dec = x_all[:BATCH].mean(0).clone().requires_grad_(True)
        opt = torch.optim.Adam([W_enc, W_dec, b_enc, b_dec], lr=4e-4)
        for x in x_all.split(BATCH):
            h = torch.addmm(b_enc, x - b_dec, W_enc)
            values, indices = h.topk(K, dim=-1, sorted=False)
            f = torch.zeros_like(h).scatter(-1, indices, values.relu())
            x_hat = f @ W_dec + b_dec
            loss = (x_hat - x).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()

    run(benchmark, train)
    record(benchmark, GROUP, f"naive torch TopK training, {STEPS} steps", FLOPS, TOKENS, "naive")


def test_train_topk_saebench(benchmark):
    x_all = _data()
    cfg = TrainConfig(
        arch="topk", d_sae=D_SAE, k=K, batch_size=BATCH, tokens=TOKENS, dead_tokens=10**9, shuffle_batches=0
    )
    result = {}

    def train():
        result["sae"], result["stats"] = train_sae(cfg, lambda: iter(x_all.split(BATCH)), D_IN)

    run(benchmark, train)
    record(benchmark, GROUP, f"saebench train_sae (topk), {STEPS} steps", FLOPS, TOKENS)
    assert result["stats"].steps == STEPS
