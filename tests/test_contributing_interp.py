"""The interpretability plugin example in CONTRIBUTING.md runs as printed (a doc that cannot rot)."""

import asyncio
import re
import types
from pathlib import Path

from saebench import plugin_manager
from saebench.interfaces import Example, Explanation, InterpContext, LatentRecord

DOC = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def snippet_module():
    text = DOC.read_text()
    section = text[text.index("## Writing an explainer, an interpretability scorer or an LLM client"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("contributing_snippet")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


def test_the_contributing_example_registers_and_runs():
    m = snippet_module()
    plugin_manager.register_plugin(m, "contributing-snippet")
    try:
        explainer = plugin_manager.get("explainer", "first-words")(n=2)
        assert plugin_manager.describe(type(explainer)).startswith("First words")
    finally:
        plugin_manager.unregister_plugin("contributing-snippet")
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
