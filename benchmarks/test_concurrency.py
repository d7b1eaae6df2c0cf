"""What sharing folders costs: an artifact lock against a hand-made lock file, and whole runs of one
matrix, alone, as two concurrent processes on one fresh output folder, and as a second run after the first."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path

import conftest
import pytest
import torch
import yaml
from conftest import record, run

import saebench
from saebench.files import ArtifactLock

SAEBENCH = Path(sys.executable).parent / "saebench"
TIMES: dict[str, float] = {}


def test_lock_uncontended(benchmark, tmp_path):
    lock = ArtifactLock(tmp_path / ".locks" / "a.lock", "a")

    def take():
        for _ in range(100):
            lock.acquire()
            lock.release()

    run(benchmark, take)
    record(
        benchmark, "lock: 100 × acquire + release, uncontended", "saebench.files.ArtifactLock (filelock lease)", 0, 100
    )


def test_lock_by_hand(benchmark, tmp_path):
    path = tmp_path / "b.lock"

    def take():  # what a hand-made lock file does: O_EXCL create, unlink
        for _ in range(100):
            os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            os.unlink(path)

    run(benchmark, take)
    record(
        benchmark,
        "lock: 100 × acquire + release, uncontended",
        "O_EXCL file + unlink (no staleness check)",
        0,
        100,
        "naive",
    )


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("concurrent")
    model, d, hookpoint, tokens = conftest.subject_model(root)
    g = torch.Generator().manual_seed(0)
    saes = []
    for i in range(4):
        w = {
            "W_enc": torch.randn(d, 2048, generator=g) / d**0.5,
            "W_dec": torch.randn(2048, d, generator=g) / 64,
            "b_enc": torch.zeros(2048),
            "b_dec": torch.zeros(d),
        }
        path = saebench.save_sae(saebench.build_sae("topk", w, k=32), root / f"sae{i}")
        saes.append({"name": f"sae{i}", "model": "m", "hookpoint": hookpoint, "path": str(path)})
    matrix = {
        "name": "concurrent",
        "output": "out",
        "data": {"source": "python-stdlib", "tokens": tokens, "context_length": 128},
        "models": [{"name": "m", "path": model, "hookpoints": [hookpoint]}],
        "saes": saes,
        "scorers": ["sparsity", "reconstruction", {"name": "downstream", "options": {"tokens": min(tokens, 4096)}}],
    }
    (root / "matrix.yaml").write_text(yaml.safe_dump(matrix))
    return root


def runs(folder: Path, n: int, *, together: bool) -> None:
    with tempfile.TemporaryDirectory(dir=folder) as work:  # a fresh output and cache folder every round
        (Path(work) / "matrix.yaml").write_text((folder / "matrix.yaml").read_text())
        procs = []
        for _ in range(n):
            procs.append(
                subprocess.Popen(
                    [str(SAEBENCH), "run", "matrix.yaml", "--quiet"],
                    cwd=work,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.PIPE,
                    text=True,
                )
            )
            if not together:
                procs[-1].wait()
        for p in procs:
            assert p.wait() == 0, p.stderr.read()[-2000:]


@pytest.mark.parametrize("how", ["one run", "two runs at once", "two runs, one after the other"])
def test_concurrent_runs(benchmark, folder, how):
    n, together = {"one run": (1, True), "two runs at once": (2, True), "two runs, one after the other": (2, False)}[
        how
    ]
    benchmark.pedantic(runs, args=(folder, n), kwargs={"together": together}, rounds=1, iterations=1, warmup_rounds=0)
    record(
        benchmark,
        "whole runs: 4 SAEs × sparsity, reconstruction, downstream",
        how,
        0,
        1,
        "naive" if how == "one run" else "",
    )
    if getattr(benchmark, "stats", None) is not None:
        TIMES[how] = benchmark.stats.stats.median
        if len(TIMES) == 3:
            conftest.NOTES["runs sharing a folder"] = (
                f"Two runs of one matrix started together on a fresh folder finish in {TIMES['two runs at once']:.1f} s, "
                f"{TIMES['two runs at once'] / TIMES['one run']:.2f}× one run alone ({TIMES['one run']:.1f} s); one after "
                f"the other they take {TIMES['two runs, one after the other']:.1f} s (the second finds every cell finished)."
            )
