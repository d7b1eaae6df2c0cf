"""Peak extra resident memory of one encode call, measured in a fresh process.

Usage: python peak_memory.py IMPL D_IN D_SAE TOKENS K  ->  prints the extra MiB.
The kernel's packed weights are built before the measurement; the peak is reset
through /proc/self/clear_refs so set-up temporaries do not count.
"""

import sys

import torch

import saebench


def status(field: str) -> float:
    with open("/proc/self/status") as f:
        return next(int(ln.split()[1]) for ln in f if ln.startswith(field)) / 1024


def main() -> None:
    impl, d_in, d_sae, tokens, k = sys.argv[1], *map(int, sys.argv[2:])
    torch.manual_seed(0)
    w = {
        "W_enc": torch.randn(d_in, d_sae).div_(d_in**0.5),
        "W_dec": torch.randn(d_sae, d_in).div_(d_sae**0.5),
        "b_enc": torch.zeros(d_sae),
        "b_dec": torch.zeros(d_in),
    }
    x = torch.randn(tokens, d_in)
    sae = saebench.build_sae("topk", w, k=k)
    if impl.startswith("sae-lens"):
        from sae_lens.saes.topk_sae import TopKSAE, TopKSAEConfig

        peer = TopKSAE(
            TopKSAEConfig(d_in=d_in, d_sae=d_sae, k=k, apply_b_dec_to_input=False, dtype="float32", device="cpu")
        )
        peer.load_state_dict(w)
        peer.requires_grad_(False)
        fn = lambda: peer.encode(x)  # noqa: E731
    elif impl == "naive-dense":

        def fn():
            h = x @ w["W_enc"] + w["b_enc"]
            v, i = h.topk(k, dim=-1, sorted=False)
            return torch.zeros_like(h).scatter(-1, i, v.relu())
    elif impl == "saebench-dense":
        fn = lambda: sae.encode(x)  # noqa: E731
    elif impl == "saebench-sparse":
        fn = lambda: sae.encode_sparse(x)  # noqa: E731
    else:
        raise SystemExit(f"unknown impl {impl}")
    sae.encode_sparse(x[:4])  # build the packed weights now
    with torch.no_grad():
        base = status("VmRSS")
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        out = fn()
        peak = status("VmHWM")
    del out
    print(f"{peak - base:.1f}")


if __name__ == "__main__":
    main()
