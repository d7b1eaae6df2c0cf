"""Activation collection at one hook point: the adapter's capture (forward stopped after the hooked
block) against a full forward with output_hidden_states, on the same model object and tokens.

Full size: embedded Gemma 3 270M (18 blocks), layers.6, 8 x 128 tokens of python-stdlib text; the
first run converts the embedded model into the cache (~35 s, outside the timings). With
SAEBENCH_BENCH_SMALL=1: a tiny random Llama of the same depth, in seconds. A third row runs the
decoder stack without the LM head, to separate the two savings (later blocks, the 262k-vocab head).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import SMALL, record, run

from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter
from saebench.plugins.data_sources.python_stdlib import PythonStdlibSource
from saebench.run.data import make_contexts
from saebench.testing.tiny_model import make_tiny_model

HOOK, LAYER = "layers.6", 6
BATCH, SEQ = (2, 32) if SMALL else (8, 128)


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    if SMALL:
        adapter = HFCausalLMAdapter(str(make_tiny_model(tmp_path_factory.mktemp("tiny"), "llama", n_layers=18)))
        label = "tiny llama (18 blocks, d 32)"
    else:
        adapter = HFCausalLMAdapter("embedded:gemma-3-270m")
        label = "gemma-3-270m"
    tokens = make_contexts(adapter, PythonStdlibSource(), context_length=SEQ, n_tokens=BATCH * SEQ)
    return SimpleNamespace(adapter=adapter, tokens=tokens, group=f"activations {label} {HOOK} {BATCH}x{SEQ}")


def _hidden_states(model, tokens):
    """What a user without early stopping writes: every block, the final norm and the LM head."""
    with torch.inference_mode():
        out = model(
            input_ids=tokens, attention_mask=torch.ones_like(tokens), output_hidden_states=True, use_cache=False
        )
        return out.hidden_states[LAYER + 1].float()


def test_activations_full_forward(benchmark, case):
    out = run(benchmark, lambda: _hidden_states(case.adapter.model, case.tokens))
    assert out.shape == (BATCH, SEQ, case.adapter.d_model(HOOK))
    record(benchmark, case.group, "full forward, output_hidden_states (all blocks + LM head)", 0, BATCH * SEQ, "naive")


def test_activations_body_forward(benchmark, case):
    """The decoder stack alone (all 18 blocks and the final norm, no LM head): isolates what the early stop saves."""
    body = case.adapter.model.model

    def forward():
        with torch.inference_mode():
            return body(
                input_ids=case.tokens,
                attention_mask=torch.ones_like(case.tokens),
                output_hidden_states=True,
                use_cache=False,
            ).hidden_states[LAYER + 1]

    run(benchmark, forward)
    record(benchmark, case.group, "decoder stack only, output_hidden_states (all blocks, no LM head)", 0, BATCH * SEQ)


def test_activations_capture_early_stop(benchmark, case):
    out = run(benchmark, lambda: case.adapter.capture(case.tokens, [HOOK])[HOOK])
    torch.testing.assert_close(out, _hidden_states(case.adapter.model, case.tokens), rtol=1e-4, atol=1e-3)
    record(benchmark, case.group, f"saebench capture, stopped after {HOOK}", 0, BATCH * SEQ)
