"""N2G explanations at SAE scale: latents per second for the n2g explainer and scorer on one CPU core.

Neither calls an LLM or a model, so the question is only whether every latent of a 16k SAE fits in a run. The
records are synthetic but shaped like the runner's defaults (``interp:`` 40 training and 50 test activating
windows, 50 test and 20 training negatives, 32 tokens each): tokens drawn from a Zipf-like vocabulary of 5,000
strings, each latent firing on one to three tokens, a third of them only after a given context token, with 2 %
of other tokens firing at random. Both steps run through the runner's own per-latent code (``for_each_latent``),
explain first, then score every latent's explanation.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import time

import conftest
from conftest import NOTES

from saebench import plugin_manager
from saebench.interfaces import InterpContext
from saebench.interp.types import Example, LatentRecord
from saebench.run.latents import for_each_latent
from saebench.run.progress import NO_BAR

N_LATENTS = 20 if conftest.SMALL else 400
WIDTH = 16384
WINDOW = 32
VOCAB = [f" w{i}" for i in range(5000)]
WEIGHTS = [1.0 / (i + 10) for i in range(len(VOCAB))]


def synthetic_record(latent: int) -> LatentRecord:
    rng = random.Random(latent)
    targets = set(rng.sample(VOCAB[:2000], rng.randint(1, 3)))
    context = rng.choice(VOCAB[:200]) if latent % 3 == 0 else None

    def fires(toks: list[str], i: int) -> bool:
        return toks[i] in targets and (context is None or (i > 0 and toks[i - 1] == context))

    def window(activating: bool) -> list[str]:
        toks = rng.choices(VOCAB, WEIGHTS, k=WINDOW)
        if activating:
            for _ in range(rng.randint(1, 3)):
                i = rng.randrange(1, WINDOW)
                toks[i] = rng.choice(sorted(targets))
                if context is not None:
                    toks[i - 1] = context
        return toks

    def example(activating: bool, w: int) -> Example:
        while True:
            toks = window(activating)
            acts = [rng.uniform(0.5, 5.0) if fires(toks, i) or (activating and rng.random() < 0.02) else 0.0
                    for i in range(WINDOW)]  # fmt: skip
            if any(acts) == activating:
                kind = "activating" if activating else "random"
                return Example(
                    tokens=toks, activations=acts, window=w, kind=kind, quantile=w % 10 if activating else None
                )

    w = iter(range(10**6))
    return LatentRecord(
        latent=latent,
        n_activating=90,
        density=0.001,
        max_activation=5.0,
        train=[example(True, next(w)) for _ in range(40)],
        test=[example(True, next(w)) for _ in range(50)],
        train_negatives=[example(False, next(w)) for _ in range(20)],
        test_negatives=[example(False, next(w)) for _ in range(50)],
    )


def pipeline(records: list[LatentRecord], timings: dict[str, list[float]]) -> dict:
    explainer = plugin_manager.get("explainer", "n2g")()
    scorer = plugin_manager.get("scorer", "n2g")()
    ctx = InterpContext(sae=None, hookpoint="x")
    stored = lambda *a: None  # noqa: E731

    async def go():
        explanations: dict = {}
        start = time.perf_counter()
        failed = await for_each_latent(
            {r.latent: (lambda r=r: explainer.explain(r)) for r in records}, explanations, stored, NO_BAR, len(records)
        )
        mid = time.perf_counter()
        scores: dict = {}
        failed |= await for_each_latent(
            {r.latent: (lambda r=r: scorer.score_latent(r, explanations[r.latent], ctx)) for r in records},
            scores,
            stored,
            NO_BAR,
            len(records),
        )
        end = time.perf_counter()
        assert not failed
        timings["explain"].append(mid - start)
        timings["score"].append(end - mid)
        timings["both"].append(end - start)
        return {"explanations": explanations, "aggregate": scorer.aggregate([scores[k] for k in sorted(scores)])}

    return asyncio.run(go())


def test_n2g_latents_per_second(benchmark):
    records = [synthetic_record(i) for i in range(N_LATENTS)]
    timings: dict[str, list[float]] = {"explain": [], "score": [], "both": []}
    out = conftest.run(benchmark, lambda: pipeline(records, timings))
    agg = out["aggregate"]
    assert agg["latents_scored"] == N_LATENTS and agg["parse_failures"] == 0
    assert agg["recall"] > 0.5 and agg["precision"] > 0.5  # the planted rules are found
    rate = {k: N_LATENTS / statistics.median(v[-conftest.ROUNDS :]) for k, v in timings.items()}
    lines = [
        f"{N_LATENTS} synthetic latents (40 + 50 activating windows, 20 + 50 negatives, {WINDOW} tokens), "
        f"median of {min(len(timings['both']), conftest.ROUNDS)} round(s), one process:",
        "",
        "| step | latents / s | a 16k SAE (16,384 latents) |",
        "| --- | ---: | ---: |",
    ]
    for step, label in (("explain", "explain[n2g]"), ("score", "n2g scorer"), ("both", "explain + score")):
        lines.append(f"| {label} | {rate[step]:,.0f} | {WIDTH / rate[step]:,.0f} s |")
    lines += [
        "",
        f"Mean over these latents: precision {agg['precision']:.3f}, recall {agg['recall']:.3f}, f1 {agg['f1']:.3f} "
        "(planted rules: one to three tokens, a third after a context token, 2 % random firing).",
    ]
    NOTES["interp: n2g explain + score throughput"] = "\n".join(lines)
