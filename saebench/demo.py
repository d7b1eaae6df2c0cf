"""``saebench demo``: the main job until the matrix runner lands.

Builds a ReLU, a TopK and a JumpReLU SAE at trained-SAE sparsity, saves each in
the native format, loads it back through format auto-detection, checks the fast
kernel against the float64 reference path, and times it against the naive torch
encoder. Prints one table.
"""

from __future__ import annotations

import copy
import tempfile
import time
from pathlib import Path

import torch

from saebench.loading import build_sae, load_sae, save_sae

#: pre-activations are ~N(0, 1) here; this threshold leaves ~0.35% of latents active
_THRESHOLD = 2.7


def _weights(d_in: int, d_sae: int, arch: str, g: torch.Generator) -> dict[str, torch.Tensor]:
    w = {
        "W_enc": torch.randn(d_in, d_sae, generator=g).div_(d_in**0.5),
        "W_dec": torch.randn(d_sae, d_in, generator=g).div_(d_sae**0.5),
        "b_enc": torch.randn(d_sae, generator=g).mul_(0.1),
        "b_dec": torch.randn(d_in, generator=g).mul_(0.1),
    }
    if arch == "relu":
        w["b_enc"] -= _THRESHOLD
    if arch == "jumprelu":
        w["threshold"] = torch.full((d_sae,), _THRESHOLD)
    return w


def _naive(arch: str, x: torch.Tensor, w: dict[str, torch.Tensor], k: int) -> torch.Tensor:
    h = x @ w["W_enc"] + w["b_enc"]
    if arch == "relu":
        return h.relu()
    if arch == "jumprelu":
        return h.relu() * (h > w["threshold"])
    values, indices = h.topk(k, dim=-1, sorted=False)
    return torch.zeros_like(h).scatter(-1, indices, values.relu())


def _seconds(fn, repeats: int = 3) -> float:
    fn()
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - start)
    return best


def run_demo(tokens: int = 4096, d_in: int = 768, d_sae: int = 24576, k: int = 32, seed: int = 0) -> list[dict]:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(tokens, d_in, generator=g)
    print(f"saebench demo: {tokens} tokens, d_in {d_in}, d_sae {d_sae}, torch {torch.__version__}, {torch.get_num_threads()} threads")
    rows = []
    with tempfile.TemporaryDirectory() as tmp, torch.no_grad():
        for arch in ("relu", "topk", "jumprelu"):
            w = _weights(d_in, d_sae, arch, g)
            folder = save_sae(build_sae(arch, w, k=k) if arch == "topk" else build_sae(arch, w), Path(tmp) / arch)
            sae = load_sae(folder)  # format auto-detected
            probe = x[:256]
            exact = copy.deepcopy(sae).double().encode_reference(probe.double())
            err = (sae.encode(probe).double() - exact).abs().max().item()
            values, indices = sae.encode_sparse(x)
            l0 = (values != 0).sum(-1).float().mean().item()
            t_ours = _seconds(lambda: sae.encode_sparse(x))
            t_naive = _seconds(lambda: _naive(arch, x, w, k))
            t_decode = _seconds(lambda: sae.decode_sparse(values, indices))
            rows.append(dict(arch=arch, format=sae.cfg.metadata["format"], l0=l0, err=err, ours=tokens / t_ours, naive=tokens / t_naive, decode=tokens / t_decode))
            print(f"  {arch}: done", flush=True)
    header = ["arch", "loaded as", "L0", "max |kernel - float64|", "encode_sparse tok/s", "naive torch tok/s", "speed-up", "decode_sparse tok/s"]
    table = [header] + [[r["arch"], r["format"], f"{r['l0']:.1f}", f"{r['err']:.1e}", f"{r['ours']:,.0f}", f"{r['naive']:,.0f}",
                         f"{r['ours'] / r['naive']:.2f}x", f"{r['decode']:,.0f}"] for r in rows]
    widths = [max(len(row[c]) for row in table) for c in range(len(header))]
    print()
    for i, row in enumerate(table):
        print("  ".join(cell.rjust(widths[c]) if c >= 2 else cell.ljust(widths[c]) for c, cell in enumerate(row)))
        if i == 0:
            print("  ".join("-" * wd for wd in widths))
    return rows
