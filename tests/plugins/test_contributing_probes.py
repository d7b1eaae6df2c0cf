"""The probe-task and probe-scorer example in CONTRIBUTING.md runs as printed."""

import types

import pytest
import torch

import saebench
from docs import snippet_module
from saebench import plugin_manager
from saebench.interfaces import EvalInputs
from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter
from saebench.probes.tasks import build_probe_data
from saebench.testing import register_plugin, unregister_plugin
from tiny import firing_sae


def test_the_contributing_probe_example_registers_and_runs(tiny_llama):
    m = snippet_module("## Writing a probe task or a probe scorer", "contributing_probe_snippet")
    plugin = types.SimpleNamespace(
        register_probe_tasks=m.register_probe_tasks,
        register_scorers=saebench.hookimpl(lambda register: register(m.TopLatentScorer)),
    )
    register_plugin(plugin, "contributing-probe-snippet")
    try:
        task = plugin_manager.get("probe_task", "vowels")()
        adapter = HFCausalLMAdapter(str(tiny_llama))
        [data] = build_probe_data(adapter, task, ["layers.1"]).values()
        assert data.classes == ["consonant", "vowel"] and data.stats["texts"] == 24
        # byte-level tokens: one row per letter, labelled as the span says
        assert int((data.labels == 1).sum()) == 4 * sum(c in "aeiou" for c in "bananakiwiapplecherryorangeplum")
        sae = firing_sae("relu", 64)
        inputs = EvalInputs(
            hookpoint="layers.1",
            activations=lambda bt: iter(()),
            tokens=torch.zeros(0, 0, dtype=torch.long),
            probe_data=lambda t, **kw: data,
        )
        result = plugin_manager.get("scorer", "top-latent")().score(sae, inputs)
        assert 0 <= result.metrics["accuracy"] <= 1 and 0 <= result.details["latent"] < 64
        assert result.units.value("accuracy") == pytest.approx(result.metrics["accuracy"])  # what --ci resamples
        assert result.units.n == int((~data.train).sum())
    finally:
        unregister_plugin("contributing-probe-snippet")
