"""Write a random JumpReLU SAE in Gemma Scope 2's layout, for measuring how wide dictionaries fit in memory.

Usage: python benchmarks/wide/make.py CACHE OUT WIDTH [WIDTH ...]

CACHE is an activation cache folder of layer 6 of Gemma 3 270M (d_in 640), e.g. the quickstart's
``runs/quickstart/cache/gemma3-270m-layers.6-eval-*``; OUT gets
``<width>/resid_post/layer_6_width_<width>_l0_medium/params.safetensors`` (w_enc [d_in, d_sae],
w_dec [d_sae, d_in], b_enc, b_dec, threshold), which the gemmascope loader reads with the hook point
taken from the folder name. Decoder rows are unit-norm random directions and w_enc = w_decᵀ; one
threshold θ for every latent is the (1 − 60/d_sae) quantile of x·w_enc over 512 cached tokens, so
the mean L0 is about 60. A single θ is the stress case: high-norm tokens fire thousands of latents.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import torch
from safetensors.torch import save_file

from saebench.run.activations import ActivationCache

TARGET_L0 = 60
SAMPLE_TOKENS = 512
QUANTILE_SAMPLE = 10_000_000  # torch.quantile takes at most 2**24 values


def label(width: int) -> str:
    """Gemma Scope 2's width label, in thousands (decimal): 16384 -> 16k, 262144 -> 262k, 1048576 -> 1m."""
    return f"{width // 10**6}m" if width >= 10**6 else f"{width // 1000}k"


def write(cache: ActivationCache, out: Path, width: int) -> Path:
    gen = torch.Generator().manual_seed(0)
    x = next(cache.batches(cache.n_tokens)).float()
    x = x[torch.randperm(x.shape[0], generator=gen)[:SAMPLE_TOKENS]]
    w_dec = torch.randn(width, cache.d, generator=gen)
    w_dec /= w_dec.norm(dim=1, keepdim=True)
    w_enc = w_dec.T.contiguous()
    h = (x @ w_enc).flatten()
    sample = h[torch.randint(h.numel(), (min(QUANTILE_SAMPLE, h.numel()),), generator=gen)]
    theta = float(torch.quantile(sample, 1 - TARGET_L0 / width))
    del h, sample
    folder = out / label(width) / "resid_post" / f"layer_6_width_{label(width)}_l0_medium"
    folder.mkdir(parents=True, exist_ok=True)
    tensors = {
        "w_enc": w_enc,
        "w_dec": w_dec,
        "b_enc": torch.zeros(width),
        "b_dec": torch.zeros(cache.d),
        "threshold": torch.full((width,), theta),
    }
    save_file(tensors, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "jump_relu", "width": width}))
    print(folder, f"threshold {theta:.4f}")
    return folder


def main() -> None:
    if len(sys.argv) < 4:
        raise SystemExit(__doc__.split("\n\n")[1])
    cache, out = ActivationCache(Path(sys.argv[1])), Path(sys.argv[2])
    for width in map(int, sys.argv[3:]):
        write(cache, out, width)


if __name__ == "__main__":
    main()
