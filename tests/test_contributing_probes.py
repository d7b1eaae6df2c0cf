"""The probe-task and probe-scorer example in CONTRIBUTING.md runs as printed."""

import re
import types
from pathlib import Path

import torch

import saebench
from tiny import firing_sae
from saebench import plugin_manager
from saebench.interfaces import EvalInputs
from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter
from saebench.probing import build_probe_data

DOC = Path(__file__).resolve().parents[1] / "CONTRIBUTING.md"


def snippet_module():
    text = DOC.read_text()
    section = text[text.index("## Writing a probe task or a probe scorer"):]
    code = re.search(r"```python\n(.*?)```", section, re.S).group(1)
    module = types.ModuleType("contributing_probe_snippet")
    exec(compile(code, str(DOC), "exec"), module.__dict__)
    return module


def test_the_contributing_probe_example_registers_and_runs(tiny_llama):
    m = snippet_module()
    plugin = types.SimpleNamespace(register_probe_tasks=m.register_probe_tasks,
                                   register_scorers=saebench.hookimpl(lambda register: register(m.TopLatentScorer)))
    plugin_manager.register_plugin(plugin, "contributing-probe-snippet")
    try:
        task = plugin_manager.get("probe_task", "vowels")()
        adapter = HFCausalLMAdapter(str(tiny_llama))
        [data] = build_probe_data(adapter, task, ["layers.1"]).values()
        assert data.classes == ["consonant", "vowel"] and data.stats["texts"] == 24
        # byte-level tokens: one row per letter, labelled as the span says
        assert int((data.labels == 1).sum()) == 4 * sum(c in "aeiou" for c in "bananakiwiapplecherryorangeplum")
        sae = firing_sae("relu", 64)
        inputs = EvalInputs(hookpoint="layers.1", activations=lambda bt: iter(()), tokens=torch.zeros(0, 0, dtype=torch.long),
                            probe_data=lambda t, **kw: data)
        result = plugin_manager.get("scorer", "top-latent")().score(sae, inputs)
        assert 0 <= result.metrics["accuracy"] <= 1 and 0 <= result.details["latent"] < 64
    finally:
        plugin_manager.unregister_plugin("contributing-probe-snippet")
