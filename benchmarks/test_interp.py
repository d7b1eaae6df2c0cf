"""Auto-interpretability cost and throughput.

1. Prompt tokens per latent for each explainer and LLM-backed scorer at their defaults (and at
   delphi's example counts), counted with the SmolLM2 tokenizer by an OpenAI-compatible server,
   next to delphi's published figures (explanation ~963, detection/fuzzing ~778, simulation ~24k).
2. Latents per minute through the runner's own concurrency code (for_each_latent) and the
   openai client, against a local server that answers every request after a fixed delay, at
   client concurrency 1, 8 and 64: the scaling is the point, the server stands in for any API.
"""

from __future__ import annotations

import asyncio
import random
import re
import time

import conftest
import pytest

from saebench import plugin_manager
from saebench.interfaces import InterpContext
from saebench.interp.types import Example, LatentRecord
from saebench.run.latents import for_each_latent
from saebench.run.progress import NO_BAR
from saebench.testing.fakellm import FakeLLMServer, prompt_text

N_LATENTS = 4 if conftest.SMALL else 32
DELAY_S = 0.05
DELPHI = {"explain[llm]": 963, "detection": 778, "fuzzing": 778, "simulation": 24075}
TOKENS: dict[str, dict[str, float]] = {}
THROUGHPUT: dict[int, float] = {}


@pytest.fixture(scope="module")
def tokenizer():
    from transformers import AutoTokenizer

    from saebench.models.embedded import resolve

    return AutoTokenizer.from_pretrained(str(resolve("smollm2-135m-instruct")))


@pytest.fixture(scope="module")
def windows(tokenizer):
    """32-token windows of real text (the standard library's docs and code), as token strings."""
    from saebench.plugins.data_sources.python_stdlib import PythonStdlibSource

    ids: list[int] = []
    for doc in PythonStdlibSource().documents():
        ids += tokenizer(doc, add_special_tokens=False)["input_ids"]
        if len(ids) > 32 * 400:
            break
    out = []
    for start in range(0, len(ids) - 32, 32):
        chunk = ids[start : start + 32]
        text = [tokenizer.decode(chunk[: i + 1]) for i in range(len(chunk))]
        out.append([t[len(p) :] for p, t in zip([""] + text[:-1], text)])
    return out


def record(latent: int, windows, n_train=40, n_test=50, n_neg=50, n_train_neg=20) -> LatentRecord:
    rng = random.Random(latent)
    picked = rng.sample(range(len(windows)), n_train + n_test + n_neg + n_train_neg)

    def ex(w: int, kind: str, q: int | None) -> Example:
        acts = [0.0] * len(windows[w])
        if kind == "activating":
            for i in rng.sample(range(len(acts)), 3):
                acts[i] = rng.uniform(0.5, 5.0)
        return Example(tokens=windows[w], activations=acts, window=w, kind=kind, quantile=q)

    a, b, c = n_train, n_train + n_test, n_train + n_test + n_neg
    return LatentRecord(
        latent=latent,
        n_activating=n_train + n_test,
        density=0.01,
        max_activation=5.0,
        train=[ex(w, "activating", i % 10) for i, w in enumerate(picked[:a])],
        test=[ex(w, "activating", i % 10) for i, w in enumerate(picked[a:b])],
        test_negatives=[ex(w, "random", None) for w in picked[b:c]],
        train_negatives=[ex(w, "random", None) for w in picked[c:]],
    )


def answer(body: dict) -> str:
    """Well-formed answers for every prompt format, so each latent costs its full number of calls."""
    text = prompt_text(body)
    if "[EXPLANATION]" in text:
        return "[EXPLANATION]: names and punctuation in Python code"
    n = re.search(r"exactly (\d+) numbers", text)
    if n:
        return "[" + ", ".join(str(i % 2) for i in range(int(n.group(1)))) + "]"
    if "Yes or No" in text:
        return "Yes"
    return "[" + ", ".join("1" for _ in range(32)) + "]"


def client(server: FakeLLMServer, concurrency: int):
    return plugin_manager.get("llm_client", "openai")(
        base_url=server.openai_url, model="fake", max_concurrency=concurrency, backoff_s=0.0
    )


def run_pipeline(llm, records, explainer, scorers) -> None:
    async def go():
        stored = lambda *a: None  # noqa: E731
        explainer.llm = llm
        explanations: dict = {}
        jobs = {r.latent: (lambda r=r: explainer.explain(r)) for r in records}
        failed = await for_each_latent(jobs, explanations, stored, NO_BAR, len(records))
        assert not failed
        ctx = InterpContext(sae=None, hookpoint="x", llm=llm)

        def scored(s):  # the runner's way: every latent with an explanation text, its results kept per latent
            jobs = {
                r.latent: (lambda r=r: s.score_latent(r, explanations[r.latent], ctx))
                for r in records
                if explanations[r.latent].text is not None
            }
            return for_each_latent(jobs, {}, stored, NO_BAR, len(records))

        await asyncio.gather(*(scored(s) for s in scorers))

    asyncio.run(go())


@pytest.mark.parametrize("setting", ["defaults", "delphi"])
def test_prompt_tokens_per_latent(tokenizer, windows, setting):
    count = lambda text: len(tokenizer(text, add_special_tokens=False)["input_ids"])  # noqa: E731
    records = [record(i, windows) for i in range(2)]
    get = lambda kind, name, **o: plugin_manager.get(kind, name)(**o)  # noqa: E731
    delphi = setting == "delphi"  # delphi's counts: 40 train examples shown, 5 per judge prompt
    parts = {
        "explain[llm]": get("explainer", "llm", **({"n_examples": 40} if delphi else {})),
        "detection": get("scorer", "detection"),
        "fuzzing": get("scorer", "fuzzing"),
        "simulation": get("scorer", "simulation"),
    }
    out = {}
    with FakeLLMServer(answer, count_tokens=count) as server:
        llm = client(server, 8)
        for name, part in parts.items():
            server.reset()
            if name.startswith("explain"):
                part.llm = llm
                asyncio.run(_explain(part, records))
            else:
                ctx = InterpContext(sae=None, hookpoint="x", llm=llm)
                asyncio.run(_score(part, records, ctx))
            reqs = server.generation_requests()
            out[name] = sum(count(prompt_text(r.body)) for r in reqs) / len(records)
            out[name + " calls"] = len(reqs) / len(records)
    TOKENS[setting] = out
    assert all(v > 0 for v in out.values())
    _note_tokens()


async def _explain(explainer, records):
    return await asyncio.gather(*(explainer.explain(r) for r in records))


async def _score(scorer, records, ctx):
    from saebench.interp.types import Explanation

    return await asyncio.gather(
        *(scorer.score_latent(r, Explanation(latent=r.latent, explainer="x", text="names"), ctx) for r in records)
    )


def _note_tokens() -> None:
    lines = [
        "Prompt tokens per latent (SmolLM2 tokenizer, message text without the chat template), "
        "synthetic records of real 32-token windows:",
        "",
        "| step | " + " | ".join(f"{s}: tokens (calls)" for s in TOKENS) + " | delphi (Llama-3 70B) |",
        "| --- | " + " | ".join("---:" for _ in TOKENS) + " | ---: |",
    ]
    for step, ref in DELPHI.items():
        cells = [f"{t[step]:,.0f} ({t[step + ' calls']:.0f})" for t in TOKENS.values()]
        lines.append(f"| {step} | " + " | ".join(cells) + f" | {ref:,} |")
    conftest.NOTES["interp: prompt tokens per latent"] = "\n".join(lines)


@pytest.mark.parametrize("concurrency", [1, 8, 64])
def test_interp_throughput(benchmark, windows, concurrency):
    records = [record(i, windows) for i in range(N_LATENTS)]
    explainer = plugin_manager.get("explainer", "llm")()
    detection = plugin_manager.get("scorer", "detection")(n_activating=10, n_negatives=10)
    with FakeLLMServer(answer, delay_s=DELAY_S) as server:
        llm = client(server, concurrency)
        llm.use_cache(None)
        start = time.perf_counter()
        benchmark.pedantic(run_pipeline, args=(llm, records, explainer, [detection]), rounds=1, iterations=1)
        seconds = time.perf_counter() - start
        calls = len(server.generation_requests())
        peak = server.max_in_flight
    THROUGHPUT[concurrency] = N_LATENTS / seconds * 60
    assert calls == N_LATENTS * 5  # one explanation and four detection prompts per latent
    assert peak <= concurrency
    lines = [
        f"{N_LATENTS} latents, each one explanation + detection on 10 activating and 10 non-activating "
        f"examples (5 per prompt): 5 calls per latent, server delay {DELAY_S * 1000:.0f} ms per call, "
        "openai client over HTTP:",
        "",
        "| concurrency | latents / minute | × concurrency 1 |",
        "| ---: | ---: | ---: |",
    ]
    for c, v in sorted(THROUGHPUT.items()):
        base = THROUGHPUT.get(1)
        lines.append(f"| {c} | {v:,.0f} | {v / base:.1f} |" if base else f"| {c} | {v:,.0f} | |")
    conftest.NOTES["interp: throughput against a fixed-delay server"] = "\n".join(lines)
