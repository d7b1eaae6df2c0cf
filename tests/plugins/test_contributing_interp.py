"""The interpretability plugin example in CONTRIBUTING.md runs as printed (a doc that cannot rot)."""

import asyncio

from docs import snippet_module
from saebench import plugin_manager
from saebench.interfaces import InterpContext
from saebench.interp.types import Example, Explanation, LatentRecord
from saebench.testing import register_plugin, unregister_plugin


def test_the_contributing_example_registers_and_runs():
    m = snippet_module("## Writing an explainer, an interpretability scorer or an LLM client", "contributing_snippet")
    register_plugin(m, "contributing-snippet")
    try:
        explainer = plugin_manager.get("explainer", "first-words")(n=2)
        assert plugin_manager.describe(type(explainer)).startswith("First words")
    finally:
        unregister_plugin("contributing-snippet")
    record = LatentRecord(latent=7, n_activating=2, density=0.1, max_activation=3.0, train=[
        Example(tokens=["a", " cat", " sat"], activations=[0, 3, 1], window=0),
        Example(tokens=["the", " dog"], activations=[2, 0], window=1)])
    explanation = asyncio.run(explainer.explain(record))
    assert explanation.text == "cat, the"
    scorer, client = m.LengthScorer(), m.EchoClient(model="echo")
    ctx = InterpContext(sae=None, hookpoint="x", llm=client)
    garbage = asyncio.run(scorer.score_latent(record, explanation, ctx))  # the echo is not a number
    assert garbage.metrics == {"value": None} and garbage.parse_failures == 1
    number = asyncio.run(scorer.score_latent(record, Explanation(latent=7, explainer="x", text="about 12"), ctx))
    assert number.metrics == {"value": 12.0} and number.parse_failures == 0
