"""A matrix of 3 SAEs on one hook point costs one activation pass: 3 SAEs vs 1, whole runs from a cold cache."""

from __future__ import annotations

import tempfile
from pathlib import Path

import conftest
import pytest
import torch
from conftest import record

import saebench
from saebench.run.execute import execute
from saebench.run.matrix import parse_matrix
from saebench.run.progress import Progress

TIMES: dict[int, float] = {}


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("sharing")
    model, d, hookpoint, tokens = conftest.subject_model(root)
    g = torch.Generator().manual_seed(0)
    paths = []
    for arch in ("relu", "topk", "jumprelu"):
        w = {
            "W_enc": torch.randn(d, 4096, generator=g) / d**0.5,
            "W_dec": torch.randn(4096, d, generator=g) / 64,
            "b_enc": torch.zeros(4096),
            "b_dec": torch.zeros(d),
        }
        if arch == "jumprelu":
            w["threshold"] = torch.full((4096,), 0.5)
        sae = saebench.build_sae(arch, w, k=32) if arch == "topk" else saebench.build_sae(arch, w)
        paths.append(str(saebench.save_sae(sae, root / arch)))
    return model, hookpoint, tokens, paths


def run_matrix(setup, n_saes: int) -> None:
    model, hookpoint, tokens, paths = setup
    with tempfile.TemporaryDirectory() as out:  # a cold cache every round: the activation pass is included
        m = parse_matrix(
            {
                "name": "sharing",
                "output": out,
                "data": {"source": "python-stdlib", "tokens": tokens, "context_length": 128},
                "models": [{"name": "m", "path": model, "hookpoints": [hookpoint]}],
                "saes": [
                    {"name": Path(p).name, "model": "m", "hookpoint": hookpoint, "path": p} for p in paths[:n_saes]
                ],
                "scorers": ["sparsity", "reconstruction"],
            },
            "benchmark",
        )
        report = execute(m, progress=Progress(False))
        assert report.done == 2 * n_saes and not report.failed


@pytest.mark.parametrize("n_saes", [1, 3])
def test_matrix_sharing(benchmark, setup, n_saes):
    benchmark.pedantic(
        run_matrix, args=(setup, n_saes), rounds=1 if conftest.SMALL else 3, iterations=1, warmup_rounds=0
    )
    _, _, tokens, _ = setup
    record(
        benchmark,
        "matrix: sparsity + reconstruction, one hook point, cold cache",
        f"{n_saes} SAE(s), whole run",
        0,
        tokens,
        "naive" if n_saes == 1 else "",
    )
    if getattr(benchmark, "stats", None) is not None:
        TIMES[n_saes] = benchmark.stats.stats.median
        if len(TIMES) == 2:
            conftest.NOTES["matrix sharing"] = (
                f"3 SAEs take {TIMES[3] / TIMES[1]:.2f}× the time of 1 ({TIMES[3]:.1f} s vs {TIMES[1]:.1f} s, "
                f"{tokens} evaluation tokens, model load and activation pass included once per run)."
            )
