"""The runner's interpretability stage with test-only plugins: cells and columns, per-latent storage,
LLM failures retried alone, resume after an interruption, and configuration errors.

The plugins here are deliberately trivial (an explainer that echoes an LLM answer, a scorer that
parses a number) so that every count the runner reports is known; the real explainers and scorers
have their own tests.
"""

import csv
import io
import sqlite3
import types

import pytest
import yaml

import saebench
import saebench.testing
from matrices import edit, run
from saebench import hookimpl
from saebench.interfaces import Explainer, InterpScorer
from saebench.interp.llm import LLMClient, LLMError, LLMRequest, LLMResponse
from saebench.interp.types import Explanation, LatentScore
from saebench.results.leaderboard import render
from tiny import firing_sae

D_MODEL = 32
class Crash(BaseException):
    """Stands in for the process dying mid-stage (not an Exception: nothing may catch it as a latent failure)."""


#: what the "tape" client does, per test: latents whose calls fail, calls seen, an interrupt after N calls
TAPE = {"fail": set(), "calls": [], "interrupt_after": None}


class TapeLLM(LLMClient):
    """Answers 'value V' where V is the latent number found in the prompt; fails for chosen latents."""

    name = "tape"

    async def _send(self, request: LLMRequest) -> LLMResponse:
        text = request.messages[-1]["content"]
        latent = int(text.split("latent ")[1].split()[0])
        TAPE["calls"].append((text.split()[0], latent))
        if TAPE["interrupt_after"] is not None and len(TAPE["calls"]) > TAPE["interrupt_after"]:
            raise Crash
        if latent in TAPE["fail"]:
            raise LLMError("HTTP 400: bad request", self.name)
        return LLMResponse(text=f"value {latent % 7}", prompt_tokens=10, completion_tokens=2)


class EchoExplainer(Explainer):
    """Echo: the LLM's answer is the explanation."""

    name = "echo"

    async def explain(self, record):
        r = await self.llm.complete(LLMRequest(messages=({"role": "user", "content": f"explain latent {record.latent}"},)))
        return Explanation(latent=record.latent, explainer=self.name, text=r.text, prompt_tokens=r.prompt_tokens,
                           completion_tokens=r.completion_tokens)


class ValueScorer(InterpScorer):
    """Value: the number the judge answers for the latent."""

    name = "value"

    async def score_latent(self, record, explanation, ctx):
        r = await ctx.llm.complete(LLMRequest(messages=({"role": "user", "content": f"score latent {record.latent} "
                                                                                     f"{explanation.text}"},)))
        value = float(r.text.split()[-1])
        return LatentScore(latent=record.latent, metrics={"value": value}, prompt_tokens=r.prompt_tokens,
                           completion_tokens=r.completion_tokens)


plugin = types.SimpleNamespace(
    register_llm_clients=hookimpl(lambda register: register(TapeLLM)),
    register_explainers=hookimpl(lambda register: register(EchoExplainer)),
    register_scorers=hookimpl(lambda register: register(ValueScorer)),
)


@pytest.fixture
def workdir(tmp_path, tiny_llama, tiny_corpus, monkeypatch):
    monkeypatch.chdir(tmp_path)
    saebench.testing.register_plugin(plugin, "interp-test-plugin")
    TAPE.update(fail=set(), calls=[], interrupt_after=None)
    saebench.save_sae(firing_sae(d_in=D_MODEL), tmp_path / "sae")
    matrix = {
        "name": "interp",
        "output": "runs/interp",
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 2048, "context_length": 64},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": [{"name": "relu", "model": "tiny", "hookpoint": "layers.1", "path": "sae"}],
        "llms": {"judge": {"client": "tape", "model": "t", "backoff_s": 0.0}},
        "explainers": [{"name": "echo", "llm": "judge"}],
        "scorers": ["sparsity", "value"],
        "interp": {"latents": 12, "seed": 0, "window": 16, "n_train": 4, "n_test": 4, "n_negatives": 4,
                   "min_activating": 2},
    }
    (tmp_path / "matrix.yaml").write_text(yaml.safe_dump(matrix, sort_keys=False))
    yield tmp_path
    saebench.testing.unregister_plugin("interp-test-plugin")


def board(folder, latents=False):
    return list(csv.DictReader(io.StringIO(render(folder / "runs" / "interp", "csv", latents=latents))))


def latent_rows(folder):
    db = sqlite3.connect(folder / "runs" / "interp" / "results.sqlite")
    try:
        return db.execute("SELECT scorer, latent, status FROM latents ORDER BY scorer, latent").fetchall()
    finally:
        db.close()


def test_explain_and_score_cells_with_columns_and_per_latent_rows(workdir):
    report = run(workdir)
    assert report.exit_code == 0 and not report.failed
    [row] = board(workdir)
    n = int(float(row["explain[echo].latents"]))
    assert n + int(float(row["explain[echo].skipped_latents"])) == 12
    assert float(row["explain[echo].explained"]) == n > 0
    assert float(row["explain[echo].prompt_tokens"]) == 10 * n and float(row["explain[echo].completion_tokens"]) == 2 * n
    latents = sorted({latent for scorer, latent, status in latent_rows(workdir) if scorer == "value"})
    assert len(latents) == n
    assert float(row["value.value"]) == pytest.approx(sum(latent % 7 for latent in latents) / n)
    assert float(row["value.latents_scored"]) == n and float(row["value.failed_latents"]) == 0
    assert "sparsity.l0" in row  # intrinsic cells still run beside the interp ones
    per_latent = board(workdir, latents=True)
    assert [int(r["latent"]) for r in per_latent] == latents
    assert all(r["explain[echo]"] == f"value {int(r['latent']) % 7}" for r in per_latent)
    assert all(float(r["value.value"]) == int(r["latent"]) % 7 for r in per_latent)


def test_two_explainers_get_bracketed_columns(workdir):
    edit(workdir, explainers=[{"name": "echo", "llm": "judge"}, "top-tokens"])
    assert run(workdir).exit_code == 0
    [row] = board(workdir)
    assert "value[echo].value" in row and "value[top-tokens].value" in row and "explain[top-tokens].explained" in row
    assert float(row["explain[top-tokens].prompt_tokens"]) == 0  # the baseline calls no LLM


def test_failed_latents_are_counted_and_only_they_are_retried(workdir):
    run(workdir)  # to learn which latents are explained
    latents = sorted({latent for scorer, latent, _ in latent_rows(workdir) if scorer == "value"})
    (workdir / "runs").rename(workdir / "first")
    TAPE.update(fail={latents[0], latents[1]}, calls=[])
    report = run(workdir)
    assert report.exit_code == 1 and report.failed_latents >= 2
    [row] = board(workdir)
    assert float(row["explain[echo].failed_latents"]) == 2
    assert float(row["value.failed_latents"]) == 2  # their scores are unfinished too
    assert float(row["value.latents_scored"]) == len(latents) - 2
    assert {(s, l): st for s, l, st in latent_rows(workdir)}[("explain[echo]", latents[0])] == "failed"
    TAPE.update(fail=set(), calls=[])
    assert run(workdir).exit_code == 0
    assert sorted(TAPE["calls"]) == sorted([("explain", latents[0]), ("explain", latents[1]),
                                            ("score", latents[0]), ("score", latents[1])])
    [row] = board(workdir)
    assert float(row["value.failed_latents"]) == 0 and float(row["value.latents_scored"]) == len(latents)


def test_an_interrupted_stage_resumes_at_the_next_unfinished_latent(workdir):
    # one call at a time: five answers come back before the sixth call "crashes"
    edit(workdir, llms={"judge": {"client": "tape", "model": "t", "backoff_s": 0.0, "max_concurrency": 1}})
    TAPE["interrupt_after"] = 5
    with pytest.raises(Crash):
        run(workdir)
    stored = {latent for scorer, latent, status in latent_rows(workdir) if status == "done"}
    assert len(stored) in (4, 5)  # the fifth may have been in flight
    TAPE.update(interrupt_after=None, calls=[])
    assert run(workdir).exit_code == 0
    [row] = board(workdir)
    n = int(float(row["explain[echo].latents"]))
    asked = [latent for stage, latent in TAPE["calls"] if stage == "explain"]
    assert not stored & set(asked)  # stored answers are not asked again...
    # ...and an answer that arrived but was not stored comes from the response cache, not a new call
    assert len(asked) == n - 5
    assert len([1 for stage, _ in TAPE["calls"] if stage == "score"]) == n


def test_rerun_of_a_finished_matrix_calls_no_llm(workdir):
    run(workdir)
    TAPE["calls"] = []
    report = run(workdir)
    assert TAPE["calls"] == [] and report.done == 0


@pytest.mark.parametrize("change, where", [
    ({"explainers": ["no-such-explainer"]}, "explainers[0].name"),
    ({"llms": {}}, "explainers[0]"),
    ({"explainers": [{"name": "echo", "llm": "nope"}]}, "explainers[0].llm"),
    ({"llms": {"judge": {"client": "no-such-client"}}}, "llms.judge.client"),
    ({"llms": {"judge": {"client": "tape", "model": "t", "max_concurrency": 0}}}, "llms.judge"),
    ({"interp": {"latents": "many"}}, "interp.latents"),
    ({"interp": {"latents": [10**6]}}, "interp.latents"),
    ({"scorers": ["sparsity"]}, "explainers"),
    ({"scorers": [{"name": "sparsity", "llm": "judge"}, "value"]}, "scorers[0].llm"),
])
def test_bad_interp_configuration_is_reported_before_any_work(workdir, change, where):
    edit(workdir, **change)
    with pytest.raises(saebench.ConfigError) as info:
        run(workdir)
    assert where in str(info.value), str(info.value)
    db = workdir / "runs" / "interp" / "results.sqlite"
    assert not db.exists() or sqlite3.connect(db).execute("SELECT COUNT(*) FROM cells").fetchone()[0] == 0


def test_api_key_is_used_but_never_written(workdir, monkeypatch, capfd):
    """A planted key reaches the server in the Authorization header and appears in no file the run writes."""
    from saebench.testing.fakellm import FakeLLMServer

    key = "sk-planted-4f9c2e1b7a"
    monkeypatch.setenv("SAEBENCH_TEST_KEY", key)
    with FakeLLMServer(answer=lambda body: "value 3", api_key=key) as server:
        edit(workdir, llms={"judge": {"client": "openai", "base_url": server.openai_url, "model": "fake",
                                      "api_key_env": "SAEBENCH_TEST_KEY"}})
        assert run(workdir).exit_code == 0
        assert server.generation_requests() and all(key in r.headers.get("authorization", "")
                                                    for r in server.generation_requests())
    [row] = board(workdir)
    assert float(row["value.value"]) == 3
    files = [p for p in (workdir / "runs").rglob("*") if p.is_file()]
    assert any(p.name == "llm-responses.sqlite" for p in files)  # the response cache was written...
    for p in files:
        assert key.encode() not in p.read_bytes(), p  # ...and neither it nor anything else holds the key
    assert key not in render(workdir / "runs" / "interp", "json") + render(workdir / "runs" / "interp", "json", latents=True)
    out, err = capfd.readouterr()
    assert key not in out + err


def test_missing_api_key_is_bad_input_naming_the_variable(workdir, monkeypatch):
    monkeypatch.delenv("SAEBENCH_NO_SUCH_KEY", raising=False)
    edit(workdir, llms={"judge": {"client": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m",
                                  "api_key_env": "SAEBENCH_NO_SUCH_KEY"}})
    with pytest.raises(saebench.ConfigError) as info:
        run(workdir)
    assert "SAEBENCH_NO_SUCH_KEY" in str(info.value) and "llms.judge" in str(info.value)
