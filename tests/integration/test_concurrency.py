"""Runs sharing folders, with real `saebench run` processes: two and three runs of one matrix on a fresh
output folder, two matrices sharing a cache_dir, a lock holder killed with SIGKILL, and SIGTERM/SIGINT
in the middle of a stage. Each must end with every process exiting cleanly (no traceback), the
leaderboard of a sequential run, every cell computed by exactly one run and a sound database."""

import csv
import io
import os
import re
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml

import saebench
from saebench.results.leaderboard import render
from saebench.testing.fakellm import FakeLLMServer, prompt_text
from tiny import firing_sae

SAEBENCH = Path(sys.executable).parent / "saebench"
N_CELLS = 3 * 4  # SAEs x (three intrinsic scorers + detection); the explain cell makes it 3 x 5 in the store


def answer(body):
    return "[EXPLANATION]: letters and spaces" if "[EXPLANATION]" in prompt_text(body) else "Yes"


@pytest.fixture(scope="module")
def llm():
    # a judge slow enough that the latents stage lasts long enough to be interrupted
    with FakeLLMServer(answer=answer, delay_s=0.02) as server:
        yield server


def matrix(tiny_llama, tiny_corpus, url: str, *, output="out", cache_dir=None, saes=("path", "topk", "relu")) -> dict:
    entries = {
        "path": {"name": "path", "model": "tiny", "hookpoint": "layers.1", "path": "sae"},
        "topk": {"name": "topk", "model": "tiny", "hookpoint": "layers.1",
                 "train": {"arch": "topk", "d_sae": 48, "k": 4, "tokens": 16384, "batch_size": 256}},
        "relu": {"name": "relu", "model": "tiny", "hookpoint": "layers.1",
                 "train": {"arch": "relu", "d_sae": 48, "l1": 1.0, "tokens": 16384, "batch_size": 256}},
    }
    m = {
        "name": "concurrency", "output": output,
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 2048, "context_length": 32},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": [entries[s] for s in saes],
        "llms": {"judge": {"client": "openai", "base_url": url, "model": "fake", "max_concurrency": 2,
                           "backoff_s": 0.0}},
        "explainers": [{"name": "llm", "llm": "judge"}],
        "scorers": ["sparsity", "reconstruction", {"name": "downstream", "options": {"tokens": 256}},
                    {"name": "detection", "options": {"examples_per_prompt": 1, "n_activating": 2, "n_negatives": 2}}],
        "interp": {"latents": 12, "seed": 0, "window": 16, "n_train": 3, "n_test": 2, "n_negatives": 2,
                   "min_activating": 2},
    }
    if cache_dir:
        m["cache_dir"] = cache_dir
    return m


def folder_with(path: Path, *matrices: tuple[str, dict]) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    saebench.save_sae(firing_sae(), path / "sae")
    for name, m in matrices:
        (path / name).write_text(yaml.safe_dump(m, sort_keys=False))
    return path


def start(folder: Path, name="matrix.yaml") -> subprocess.Popen:
    return subprocess.Popen([str(SAEBENCH), "run", name], cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, "OPENAI_API_KEY": "sk-x"})


def finish(procs: list[subprocess.Popen]) -> list[tuple[int, str]]:
    errs = [p.communicate(timeout=600)[1] for p in procs]
    return [(p.returncode, err) for p, err in zip(procs, errs)]


def board(output: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(render(output, "csv"))))


def query(output: Path, sql: str) -> list[tuple]:
    db = sqlite3.connect(output / "results.sqlite")
    try:
        return db.execute(sql).fetchall()
    finally:
        db.close()


def computed(stderr: str) -> int:
    return int(re.search(r"(\d+) cell\(s\) computed", stderr).group(1))


def leftovers(folder: Path) -> list[str]:
    """Lock markers and private temporary files left behind (a finished or interrupted run leaves none)."""
    return [str(p.relative_to(folder)) for p in folder.rglob("*") if p.name.endswith((".lock", ".tmp"))]


@pytest.fixture(scope="module")
def sequential(tmp_path_factory, tiny_llama, tiny_corpus, llm) -> list[dict]:
    folder = folder_with(tmp_path_factory.mktemp("sequential"), ("matrix.yaml", matrix(tiny_llama, tiny_corpus, llm.openai_url)))
    [(rc, err)] = finish([start(folder)])
    assert rc == 0, err[-3000:]
    return board(folder / "out")


@pytest.mark.parametrize("n", [2, 3])
def test_concurrent_runs_of_one_matrix_compute_each_cell_once(n, tmp_path, tiny_llama, tiny_corpus, llm, sequential):
    folder = folder_with(tmp_path, ("matrix.yaml", matrix(tiny_llama, tiny_corpus, llm.openai_url)))
    procs = []
    for _ in range(n):
        procs.append(start(folder))
        time.sleep(0.5)  # the report: the second started while the first wrote the activation cache
    results = finish(procs)
    for rc, err in results:
        assert rc == 0, err[-3000:]
        assert "Traceback" not in err, err[-3000:]
    out = folder / "out"
    assert board(out) == sequential
    assert query(out, "PRAGMA integrity_check") == [("ok",)]
    # each cell once: the cells each run says it computed are the rows stored under its run id, and they add up
    per_run = sorted(c for (c,) in query(out, "SELECT COUNT(*) FROM cells WHERE status='done' GROUP BY run_id"))
    said = sorted(computed(err) for _, err in results if computed(err))
    assert per_run == said
    assert sum(said) == len(query(out, "SELECT * FROM cells")) == N_CELLS + 3
    # one activation pass and one training per SAE, whoever did them; the others waited and said for whom
    assert sum("activations tiny eval" in err for _, err in results) == 1
    assert sum(err.count("train topk (topk") > 0 for _, err in results) == 1
    assert any(re.search(r"waiting for .*: pid \d+ on \S+ is computing it", err) for _, err in results)
    assert leftovers(folder) == []


def test_two_matrices_sharing_a_cache_dir_share_one_activation_pass(tmp_path, tiny_llama, tiny_corpus, llm):
    a = matrix(tiny_llama, tiny_corpus, llm.openai_url, output="a", cache_dir="shared-cache", saes=("path", "topk"))
    b = matrix(tiny_llama, tiny_corpus, llm.openai_url, output="b", cache_dir="shared-cache", saes=("path", "relu"))
    b["scorers"] = ["sparsity", "reconstruction"]
    for key in ("llms", "explainers", "interp"):
        del b[key]
    folder = folder_with(tmp_path, ("a.yaml", a), ("b.yaml", b))
    pa = start(folder, "a.yaml")
    time.sleep(0.5)
    results = finish([pa, start(folder, "b.yaml")])
    for rc, err in results:
        assert rc == 0, err[-3000:]
        assert "Traceback" not in err
    assert sum("activations tiny eval" in err for _, err in results) == 1
    assert len(board(folder / "a")) == 2 and len(board(folder / "b")) == 2
    assert len(list((folder / "shared-cache").glob("tiny-layers.1-eval-*"))) == 1
    assert leftovers(folder) == []


def wait_for(what, timeout=120.0, poll=0.02):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if (value := what()):
            return value
        time.sleep(poll)
    raise AssertionError("timed out waiting")


def held_locks(folder: Path) -> list[Path]:
    return [p for p in folder.rglob("*.lock")]


def test_a_holder_killed_with_sigkill_is_taken_over(tmp_path, tiny_llama, tiny_corpus, llm, sequential):
    folder = folder_with(tmp_path, ("matrix.yaml", matrix(tiny_llama, tiny_corpus, llm.openai_url)))
    out = folder / "out"
    first = start(folder)
    # killed while it holds the claim on an SAE's cells, in the middle of its judgements: the marker stays, stale
    wait_for(lambda: any(p.name.startswith("cells-") for p in held_locks(out)) and _latents(out) >= 3)
    os.killpg(first.pid, signal.SIGKILL)
    first.wait()
    assert any(p.name.startswith("cells-") for p in held_locks(out)), "the dead holder's lock is gone already"
    start_s = time.time()
    [(rc, err)] = finish([start(folder)])
    assert rc == 0, err[-3000:]
    assert time.time() - start_s < 300
    assert board(folder / "out") == sequential
    assert query(folder / "out", "PRAGMA integrity_check") == [("ok",)]
    assert leftovers(folder) == []


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_sigterm_and_sigint_end_a_run_cleanly(sig, code, tmp_path, tiny_llama, tiny_corpus, llm, sequential):
    folder = folder_with(tmp_path, ("matrix.yaml", matrix(tiny_llama, tiny_corpus, llm.openai_url)))
    out = folder / "out"
    proc = start(folder)
    # in the middle of the latents stage: some judgements stored, LLM calls in flight
    wait_for(lambda: (out / "results.sqlite").exists() and _latents(out) >= 3)
    proc.send_signal(sig)
    stderr = proc.communicate(timeout=120)[1]
    assert proc.returncode == code, stderr[-3000:]
    assert "Traceback" not in stderr, stderr[-3000:]
    last = stderr.strip().splitlines()[-1]
    assert re.fullmatch(rf"saebench: interrupted by {signal.Signals(sig).name}: \d+ cell\(s\) computed and stored, "
                        r"\d+ failed, \d+ not started; run it again to resume", last), last
    assert leftovers(folder) == []  # locks released, temporary files removed
    assert query(out, "PRAGMA integrity_check") == [("ok",)]
    assert query(out, "SELECT status FROM runs") == [("interrupted",)]
    [(rc, err)] = finish([start(folder)])
    assert rc == 0, err[-3000:]
    assert board(out) == sequential


def _latents(out: Path) -> int:
    try:
        return query(out, "SELECT COUNT(*) FROM latents")[0][0]
    except sqlite3.OperationalError:
        return 0
