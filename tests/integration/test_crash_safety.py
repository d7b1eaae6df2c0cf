"""The reliability suite's crash safety: `saebench run` killed with SIGKILL again and again, at moments
spread over every stage (activations, training, intrinsic cells, explanations and per-latent
judgements from an HTTP LLM, probe cells), then re-run, ends with the same leaderboard as a run
never interrupted; the database passes SQLite's integrity check after every kill; and no cell or
latent that was finished before a kill is computed again."""

import csv
import io
import os
import random
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
KILLS = 24


def answer(body):
    return "[EXPLANATION]: letters and spaces" if "[EXPLANATION]" in prompt_text(body) else "Yes"


def make_folder(folder: Path, tiny_llama, tiny_corpus, url: str) -> Path:
    folder.mkdir(parents=True)
    saebench.save_sae(firing_sae(), folder / "sae")
    matrix = {
        "name": "crash", "output": "runs/crash",
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 2048, "context_length": 32},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": [
            {"name": "relu", "model": "tiny", "hookpoint": "layers.1", "path": "sae"},
            {"name": "topk", "model": "tiny", "hookpoint": "layers.1",
             "train": {"arch": "topk", "d_sae": 48, "k": 4, "tokens": 8192, "batch_size": 256}},
        ],
        "llms": {"judge": {"client": "openai", "base_url": url, "model": "fake", "max_concurrency": 2,
                           "backoff_s": 0.0}},
        "explainers": [{"name": "llm", "llm": "judge"}],
        "scorers": ["sparsity", "reconstruction",
                    {"name": "downstream", "options": {"tokens": 256}},
                    {"name": "detection", "options": {"examples_per_prompt": 1, "n_activating": 2, "n_negatives": 2}},
                    {"name": "sparse_probing", "options": {"tasks": ["python_string_comment"], "ks": [1, 4],
                                                           "max_rows": 1024}}],
        "interp": {"latents": 8, "seed": 0, "window": 16, "n_train": 3, "n_test": 2, "n_negatives": 2,
                   "min_activating": 2},
    }
    (folder / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    return folder


def start(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([str(SAEBENCH), "run", "matrix.yaml", "--quiet"], cwd=folder, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True, env={**os.environ, "OPENAI_API_KEY": "sk-x"})


def finished(folder: Path) -> dict[tuple, float]:
    """Every finished cell and latent with the time it was written."""
    path = folder / "runs" / "crash" / "results.sqlite"
    if not path.exists():
        return {}
    db = sqlite3.connect(path)
    try:
        cells = {("cell", *r[:4]): r[4] for r in db.execute("SELECT model, hookpoint, sae, scorer, finished FROM cells "
                                                            "WHERE status='done'")}
        latents = {("latent", *r[:5]): r[5] for r in db.execute("SELECT model, hookpoint, sae, scorer, latent, finished "
                                                                "FROM latents WHERE status='done'")}
        return cells | latents
    except sqlite3.OperationalError:  # polled while the run is creating the store: nothing finished yet
        return {}
    finally:
        db.close()


def integrity(folder: Path) -> str:
    path = folder / "runs" / "crash" / "results.sqlite"
    if not path.exists():
        return "ok"
    db = sqlite3.connect(path)
    try:
        return db.execute("PRAGMA integrity_check").fetchone()[0]
    finally:
        db.close()


def stage(new: set) -> str:
    """What a killed attempt had just finished when it was killed (the kill fell in the work after it)."""
    def rank(mark):
        return mark[-1] if isinstance(mark, tuple) else 0.0

    last = max(new, key=lambda m: (isinstance(m, tuple), rank(m)))  # the newest row, else a cache file
    if isinstance(last, str):
        names = {"trained.json": "SAE training", "records": "latent records", "probes": "probe-task activations",
                 "-eval-": "evaluation activations", "-train-": "training activations"}
        return "after " + next(name for key, name in names.items() if key in last)
    kind, scorer = last[0], last[4]
    return f"after a {kind} of {scorer}"


def board(folder: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(render(folder / "runs" / "crash", "csv"))))


def marks(folder: Path) -> set:
    """Everything a run has finished so far: cache folders, the trained SAE, cells, latents."""
    out = folder / "runs" / "crash"
    files = {str(p.relative_to(out)) for pattern in ("cache/**/manifest.json", "cache/**/meta.json", "cache/records/*",
                                                     "saes/*/trained.json") for p in out.glob(pattern)}
    return files | {(*k, t) for k, t in finished(folder).items()}


def attempt(folder: Path, rng: random.Random, kill: bool) -> subprocess.Popen:
    """One run; with ``kill``, SIGKILL it a moment after it finishes its next piece of work, so every
    attempt makes progress and the kills fall inside every stage in turn."""
    before = marks(folder)
    proc = start(folder)
    if kill:
        deadline = time.time() + 300
        while proc.poll() is None and time.time() < deadline:
            if marks(folder) - before:
                time.sleep(rng.uniform(0.0, 0.1))  # somewhere inside the work that follows
                if proc.poll() is None:
                    os.killpg(proc.pid, signal.SIGKILL)
                break
            time.sleep(0.02)
    proc.wait(timeout=600)
    return proc


@pytest.mark.slow
def test_sigkill_at_two_dozen_moments_loses_nothing_and_recomputes_nothing(tmp_path, tiny_llama, tiny_corpus):
    with FakeLLMServer(answer=answer, delay_s=0.05) as server:
        reference = make_folder(tmp_path / "reference", tiny_llama, tiny_corpus, server.openai_url)
        assert attempt(reference, random.Random(0), kill=False).returncode == 0
        expected = board(reference)

        folder = make_folder(tmp_path / "killed", tiny_llama, tiny_corpus, server.openai_url)
        rng = random.Random(0)
        stages: list[str] = []
        while True:
            before, before_marks = finished(folder), marks(folder)
            proc = attempt(folder, rng, kill=len(stages) < KILLS)
            assert integrity(folder) == "ok"
            after = finished(folder)
            changed = [k for k, t in before.items() if after.get(k) != t]
            assert not changed, f"finished work was recomputed or lost after kill {len(stages)}: {changed[:3]}"
            if proc.returncode == 0:
                break
            assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
            stages.append(stage(marks(folder) - before_marks))
    assert len(stages) >= KILLS, f"the run finished after {len(stages)} kills"
    assert len(set(stages)) >= 5, stages  # the kills landed in many stages, not all in one
    assert board(folder) == expected
    print(f"\n{len(stages)} kills; where: " + ", ".join(f"{s} {stages.count(s)}" for s in dict.fromkeys(stages)))
