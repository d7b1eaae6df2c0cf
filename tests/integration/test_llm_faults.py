"""The reliability suite's LLM faults: a matrix whose LLM fails 30% of its calls in assorted ways
(429, 500, timeouts, malformed and truncated answers, dropped connections) still completes; every
latent is either scored or counted as failed in its cell; re-running retries only what failed.

The real pieces run: the OpenAI client against the fake server over HTTP, the `llm` explainer and
the `detection` scorer (one excerpt per prompt, Yes/No)."""

import sqlite3

import pytest

import saebench
from matrices import run
from saebench.testing.fakellm import FakeLLMServer, prompt_text
from tiny import firing_sae

FAULTS = ("429", "500", "timeout", "malformed", "truncated", "disconnect")


def answer(body):
    text = prompt_text(body)
    return "[EXPLANATION]: the letters a and e" if "[EXPLANATION]" in text else "Yes"


def write_matrix(folder, tiny_llama, tiny_corpus, url):
    import yaml

    saebench.save_sae(firing_sae(), folder / "sae")
    matrix = {
        "name": "faults", "output": "runs/faults",
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 2048, "context_length": 64},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": [{"name": "relu", "model": "tiny", "hookpoint": "layers.1", "path": "sae"}],
        # one retry only, so that a fair share of latents give up and must be retried by the next run
        "llms": {"judge": {"client": "openai", "base_url": url, "model": "fake", "max_retries": 1,
                           "backoff_s": 0.0, "timeout_s": 0.5, "max_concurrency": 8}},
        "explainers": [{"name": "llm", "llm": "judge"}],
        "scorers": [{"name": "detection", "options": {"examples_per_prompt": 1, "n_activating": 3, "n_negatives": 3}}],
        "interp": {"latents": 16, "seed": 0, "window": 16, "n_train": 4, "n_test": 3, "n_negatives": 3,
                   "min_activating": 2},
    }
    (folder / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))


def latent_status(folder):
    db = sqlite3.connect(folder / "runs" / "faults" / "results.sqlite")
    try:
        return {(s, latent): status for s, latent, status in db.execute("SELECT scorer, latent, status FROM latents")}
    finally:
        db.close()


def cell_metric(folder, scorer, metric):
    db = sqlite3.connect(folder / "runs" / "faults" / "results.sqlite")
    try:
        [(value,)] = db.execute("SELECT value FROM metrics WHERE scorer=? AND metric=?", (scorer, metric)).fetchall()
        return value
    finally:
        db.close()


@pytest.mark.slow
def test_thirty_percent_faults_complete_count_and_retry_only_failures(tmp_path, tiny_llama, tiny_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test")
    with FakeLLMServer(answer=answer, fault_rate=0.3, fault_kinds=FAULTS, hang_s=2.0, seed=3) as server:
        write_matrix(tmp_path, tiny_llama, tiny_corpus, server.openai_url)
        first = run(tmp_path)
        faults = [r.fault for r in server.generation_requests()]
        assert not first.failed  # no cell crashed: faults are per latent
        injected = {f for f in faults if f}
        assert len(injected) >= 4 and 0.12 < sum(f is not None for f in faults) / len(faults) < 0.5  # 30% ± 3σ
        status = latent_status(tmp_path)
        failed = {k for k, s in status.items() if s == "failed"}
        assert failed, "with one retry some latents must give up"
        # every failure is counted in its cell, and the run says so (exit 1)
        explain_failed = {latent for scorer, latent in failed if scorer == "explain[llm]"}
        detection_done = {latent for (scorer, latent), s in status.items() if scorer == "detection" and s == "done"}
        assert first.failed_latents > 0 and first.exit_code == 1
        assert cell_metric(tmp_path, "explain[llm]", "failed_latents") == len(explain_failed)
        # a latent whose explanation gave up is unfinished for its scorer too
        assert cell_metric(tmp_path, "detection", "failed_latents") == len(
            {latent for s, latent in failed if s == "detection"} | explain_failed)

        server.fault_rate = 0.0  # the API recovers; same endpoint, so every finished cell and latent stands
        server.reset()
        second = run(tmp_path)
        asked = [prompt_text(r.body) for r in server.generation_requests()]
    assert second.exit_code == 0 and second.failed_latents == 0 and not second.failed
    status = latent_status(tmp_path)
    assert all(s == "done" for s in status.values())
    explained = {latent for scorer, latent in status if scorer == "explain[llm]"}
    # only what failed is asked again: one explanation call per latent whose explanation gave up,
    # and judge calls only for latents not scored yet (6 excerpts each at most; the response cache
    # answers the excerpts that had succeeded)
    assert sum("[EXPLANATION]" in t for t in asked) == len(explain_failed)
    needing = explained - detection_done
    judged = sum("[EXPLANATION]" not in t for t in asked)
    assert len(needing) <= judged <= 6 * len(needing)
