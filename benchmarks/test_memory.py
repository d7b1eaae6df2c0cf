"""Peak extra memory of a TopK encode: sparse output vs the dense-output implementations."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import conftest
import pytest

SCRIPT = Path(__file__).with_name("peak_memory.py")
IMPLS = ["naive-dense", "saebench-dense", "saebench-sparse"]
if importlib.util.find_spec("sae_lens") is not None:
    IMPLS.append("sae-lens")


CASES = [(d_in, d_sae, conftest.TOKENS) for d_in, d_sae in conftest.SHAPES]
CASES.append((64, 4096, 128) if conftest.SMALL else (768, 131072, 1024))  # a wide dictionary: latent blocks


def extra_mib(impl: str, d_in: int, d_sae: int, tokens: int) -> float:
    out = subprocess.run(
        [sys.executable, str(SCRIPT), impl, str(d_in), str(d_sae), str(tokens), str(conftest.K)],
        capture_output=True,
        text=True,
        check=True,
    )
    return float(out.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("case", CASES, ids=[f"{a}x{b}x{n}" for a, b, n in CASES])
def test_peak_memory_topk(case):
    d_in, d_sae, tokens = case
    if not Path("/proc/self/clear_refs").exists():
        pytest.skip("needs Linux /proc to measure peak RSS")
    figures = {impl: extra_mib(impl, d_in, d_sae, tokens) for impl in IMPLS}
    dense_out = tokens * d_sae * 4 / 2**20
    rows = "\n".join(f"| {impl} | {mib:.0f} | {mib / figures['naive-dense']:.2f} |" for impl, mib in figures.items())
    conftest.NOTES[f"peak memory, TopK k={conftest.K}, {d_in}x{d_sae}, {tokens} tokens"] = (
        f"One dense [{tokens}, {d_sae}] fp32 tensor is {dense_out:.0f} MiB.\n\n"
        "| implementation | peak extra MiB | ratio to naive dense |\n| --- | ---: | ---: |\n" + rows
    )
    if not conftest.SMALL:
        assert figures["saebench-sparse"] < figures["naive-dense"]
