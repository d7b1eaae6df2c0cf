"""Shared set-up for the benchmarks and the side-by-side summary printed at the end of a run.

SAEBENCH_BENCH_SMALL=1 shrinks every shape so the test command can smoke-run the
benchmarks in seconds (with --benchmark-disable); the figures in RESULTS.md come
from a full run (scripts/bench.sh). SAEBENCH_BENCH_REPORT=FILE also writes the
summary there as markdown.
"""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass, field

import pytest
import torch

SMALL = os.environ.get("SAEBENCH_BENCH_SMALL") == "1"
SHAPES = [(64, 512)] if SMALL else [(768, 24576), (2304, 16384)]
TOKENS = 256 if SMALL else 4096
K = 8 if SMALL else 32
ROUNDS = 1 if SMALL else 5


@dataclass
class Row:
    group: str
    name: str
    median_s: float
    flops: float
    tokens: int
    role: str = ""  # "ceiling", "naive", "peer" or "" (ours)
    extra: dict = field(default_factory=dict)


ROWS: list[Row] = []
NOTES: dict[str, str] = {}


def subject_model(root) -> tuple[str, int, str, int]:
    """(model path, width, hook point, evaluation tokens) of the whole-run benchmarks: the tiny Llama for the
    smoke pass, the embedded Gemma 3 270M at layer 6 for the figures."""
    if SMALL:
        from saebench.testing.tiny_model import make_tiny_model

        return str(make_tiny_model(root / "tiny", n_layers=2, d_model=32)), 32, "layers.1", 2048
    return "embedded:gemma-3-270m", 640, "layers.6", 20000


def record(benchmark, group: str, name: str, flops: float, tokens: int, role: str = "") -> None:
    stats = getattr(benchmark, "stats", None)
    if stats is None:  # --benchmark-disable: the function ran once as a smoke test
        return
    ROWS.append(Row(group, name, stats.stats.median, flops, tokens, role))


def run(benchmark, fn):
    return benchmark.pedantic(fn, rounds=ROUNDS, iterations=1, warmup_rounds=1)


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            names = [ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")]
        cpu = names[0] if names else cpu
    except OSError:
        pass
    thp = os.environ.get("THP_MEM_ALLOC_ENABLE", "0")
    return (
        f"{cpu}, {os.cpu_count()} cores, torch {torch.__version__}, {torch.get_num_threads()} threads, "
        f"THP_MEM_ALLOC_ENABLE={thp} (transparent huge pages for torch's large allocations: {'on' if thp == '1' else 'off'})"
    )


def summary_markdown() -> str:
    lines = [f"Machine: {machine()}", ""]
    groups = list(dict.fromkeys(r.group for r in ROWS))
    for g in groups:
        rows = [r for r in ROWS if r.group == g]
        tag = g.split()[-1]  # the shape: every group is compared with the GEMM ceiling of its shape
        ceiling = [r for r in ROWS if r.role == "ceiling" and r.group.split()[-1] == tag]
        best = max((r.flops / r.median_s for r in ceiling), default=None)
        naive = next((r for r in rows if r.role == "naive"), None)
        peer = next((r for r in rows if r.role == "peer"), None)
        lines += [
            f"### {g}",
            "",
            "| implementation | median ms | GFLOP/s | tokens/s | % of best GEMM | × naive | × peer |",
            "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
        ]
        for r in rows:
            gf = r.flops / r.median_s / 1e9 if r.flops else float("nan")
            pct = f"{100 * r.flops / r.median_s / best:.0f}%" if best and r.flops else ""
            xn = f"{naive.median_s / r.median_s:.2f}" if naive else ""
            xp = f"{peer.median_s / r.median_s:.2f}" if peer else ""
            lines.append(
                f"| {r.name} | {r.median_s * 1e3:.1f} | {gf:.0f} | {r.tokens / r.median_s:,.0f} | {pct} | {xn} | {xp} |"
            )
        lines.append("")
    for title, text in NOTES.items():
        lines += [f"### {title}", "", text, ""]
    return "\n".join(lines)


def pytest_terminal_summary(terminalreporter):
    if not ROWS and not NOTES:
        return
    text = summary_markdown()
    terminalreporter.write_sep("=", "saebench side-by-side summary")
    terminalreporter.write_line(text)
    out = os.environ.get("SAEBENCH_BENCH_REPORT")
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


@pytest.fixture(scope="session", autouse=True)
def _threads():
    torch.manual_seed(0)
    yield
