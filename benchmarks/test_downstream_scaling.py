"""The downstream scorer on 1, 3 and 10 SAEs at one hook point: each SAE scored alone with full forwards
(what every SAE cost before ``score_many``: clean, zero-ablated and spliced passes of the whole model)
against all of them in one ``score_many`` (one clean pass, one zero-ablated pass resumed at the hook
point's block, one resumed spliced pass per SAE). Target: 10 SAEs ≤ 4× one.

Full size: embedded Gemma 3 270M, layers.6, 8 contexts × 128 tokens, random TopK SAEs (4096 latents,
k 32). SAEBENCH_BENCH_SMALL=1: a tiny Llama of the same depth.
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from conftest import SMALL, record

import saebench
from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter
from saebench.plugins.data_sources.python_stdlib import PythonStdlibSource
from saebench.plugins.scorers.downstream import DownstreamScorer
from saebench.run.data import make_contexts
from saebench.testing.tiny_model import make_tiny_model

HOOK = "layers.6"
CONTEXTS, SEQ = (2, 32) if SMALL else (8, 128)
D_SAE = 256 if SMALL else 4096


@pytest.fixture(scope="module")
def case(tmp_path_factory):
    if SMALL:
        adapter = HFCausalLMAdapter(str(make_tiny_model(tmp_path_factory.mktemp("tiny"), "llama", n_layers=18)))
    else:
        adapter = HFCausalLMAdapter("embedded:gemma-3-270m")
    tokens = make_contexts(adapter, PythonStdlibSource(), context_length=SEQ, n_tokens=CONTEXTS * SEQ)
    d = adapter.d_model(HOOK)
    g = torch.Generator().manual_seed(0)
    saes = []
    for _ in range(10):
        W_dec = torch.nn.functional.normalize(torch.randn(D_SAE, d, generator=g), dim=1)
        weights = {
            "W_enc": W_dec.t().contiguous(),
            "W_dec": W_dec,
            "b_enc": torch.zeros(D_SAE),
            "b_dec": torch.zeros(d),
        }
        saes.append(saebench.build_sae("topk", weights, k=32))
    inputs = saebench.EvalInputs(hookpoint=HOOK, activations=lambda bt: iter([]), tokens=tokens, adapter=adapter)
    return SimpleNamespace(adapter=adapter, saes=saes, inputs=inputs, label="tiny llama" if SMALL else "gemma-3-270m")


@pytest.mark.parametrize("n", [1, 3, 10])
@pytest.mark.parametrize("way", ["alone", "shared"])
def test_downstream_scaling(benchmark, case, n, way, monkeypatch):
    scorer = DownstreamScorer(tokens=CONTEXTS * SEQ, batch_contexts=CONTEXTS)
    saes = case.saes[:n]
    if way == "alone":
        monkeypatch.setattr(case.adapter, "resume_state", lambda tokens, hp: None)
        fn = lambda: [scorer.score(sae, case.inputs) for sae in saes]  # noqa: E731
    else:
        fn = lambda: scorer.score_many(saes, [case.inputs] * n)  # noqa: E731
    results = benchmark.pedantic(fn, rounds=1, iterations=1, warmup_rounds=0)
    assert len(results) == n and all(r.metrics["tokens"] > 0 for r in results)
    name = f"{n} SAE{'s' if n > 1 else ''}, " + (
        "each alone, full forwards" if way == "alone" else "score_many (shared clean + zero passes, resumed)"
    )
    record(benchmark, f"downstream {case.label} {HOOK} {CONTEXTS}x{SEQ}", name, 0, n * CONTEXTS * SEQ,
           "naive" if (way, n) == ("alone", 1) else "")  # fmt: skip
