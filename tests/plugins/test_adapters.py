"""The hf-causal-lm adapter against transformers' own forward, on tiny offline models (and Gemma, slow)."""

from __future__ import annotations

import time

import pytest
import torch

import saebench
from saebench import plugin_manager
from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter
from saebench.plugins.data_sources.python_stdlib import PythonStdlibSource
from saebench.run.data import make_contexts
from saebench.testing.tiny_model import make_tiny_gemma3, make_tiny_model


@pytest.fixture(scope="module")
def llama_dir(tmp_path_factory):
    return make_tiny_model(tmp_path_factory.mktemp("llama"), "llama", n_layers=3, d_model=32)


@pytest.fixture(scope="module")
def llama(llama_dir):
    return HFCausalLMAdapter(str(llama_dir))


@pytest.fixture(scope="module")
def gemma3(tmp_path_factory):
    """A tiny Gemma 3 (its blocks norm the attention's and the MLP's outputs), with the tiny Llama's tokenizer;
    4 heads of dimension 16, so o_proj's input (64) is wider than the residual stream (32)."""
    folder = make_tiny_gemma3(tmp_path_factory.mktemp("gemma3"), n_layers=3, head_dim=16)
    return HFCausalLMAdapter(str(folder))


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
    return HFCausalLMAdapter(str(make_tiny_model(tmp_path_factory.mktemp("gpt2"), "gpt2", n_layers=3, d_model=32)))


def _tokens(adapter, batch=2, seq=12, seed=0):
    g = torch.Generator().manual_seed(seed)
    t = torch.randint(3, adapter.model.config.vocab_size, (batch, seq), generator=g)
    t[:, 0] = adapter.bos_token_id
    return t


def _record(module):
    """A plain forward hook that keeps the module's output (element 0 of a tuple) and counts calls."""
    seen = []

    def hook(mod, args, output):
        seen.append((output[0] if isinstance(output, tuple) else output).detach().clone())

    return seen, module.register_forward_hook(hook)


def test_registered_as_a_model_adapter():
    assert plugin_manager.get("model_adapter", "hf-causal-lm") is HFCausalLMAdapter


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_hookpoints_are_found_generically(which, request):
    adapter = request.getfixturevalue(which)
    hps = adapter.hookpoints()
    sites = ("", ".attn", ".attn.z", ".attn_out", ".mlp_in", ".mlp", ".mlp.hidden", ".mlp_out")
    assert hps == [f"layers.{i}{s}" for i in range(3) for s in sites]
    assert all(adapter.d_model(hp) == 32 for hp in hps if not hp.endswith(".hidden"))  # z: 4 heads x 8
    cfg = adapter.model.config  # the MLP's neurons: its intermediate size (GPT-2's n_inner, default 4 x n_embd)
    width = cfg.intermediate_size if which == "llama" else cfg.n_inner or 4 * 32
    assert all(adapter.d_model(hp) == width for hp in hps if hp.endswith(".hidden"))
    assert (adapter.bos_token_id, adapter.eos_token_id, adapter.pad_token_id) == (2, 1, 0)


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_capture_equals_hidden_states_of_a_full_forward(which, request):
    adapter = request.getfixturevalue(which)
    tokens = _tokens(adapter)
    with torch.no_grad():
        hs = adapter.model(tokens, output_hidden_states=True).hidden_states
    got = adapter.capture(tokens, ["layers.0", "layers.1"])
    assert list(got) == ["layers.0", "layers.1"]
    for i in (0, 1):
        a = got[f"layers.{i}"]
        assert a.dtype == torch.float32 and a.device.type == "cpu" and a.shape == (2, 12, 32)
        torch.testing.assert_close(a, hs[i + 1], rtol=1e-5, atol=1e-6)
    a.mul_(2)  # a normal tensor, not an inference tensor: callers may work on it in place


@pytest.mark.parametrize("which,attn,mlp", [("llama", "self_attn", "mlp"), ("gpt2", "attn", "mlp")])
def test_sublayer_hookpoints_equal_plain_forward_hooks(which, attn, mlp, request):
    adapter = request.getfixturevalue(which)
    tokens = _tokens(adapter, seed=1)
    block = adapter._find_hookpoints()["layers.1"]
    seen_attn, h1 = _record(getattr(block, attn))
    seen_mlp, h2 = _record(getattr(block, mlp))
    with torch.no_grad():
        adapter.model(tokens)
    h1.remove(), h2.remove()
    got = adapter.capture(tokens, ["layers.1.mlp", "layers.1.attn"])
    torch.testing.assert_close(got["layers.1.attn"], seen_attn[0], rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(got["layers.1.mlp"], seen_mlp[0], rtol=1e-5, atol=1e-6)


def test_capture_stops_after_the_deepest_hookpoint(llama):
    layers = llama.model.model.layers
    hooks_before = {n: len(m._forward_hooks) for n, m in llama.model.named_modules()}
    probes = {"layers.2": layers[2], "layers.1.mlp": layers[1].mlp, "lm_head": llama.model.lm_head,
              "norm": llama.model.model.norm}
    recs = {k: _record(m) for k, m in probes.items()}
    try:
        llama.capture(_tokens(llama), ["layers.0.mlp", "layers.1.attn"])
        calls = {k: len(seen) for k, (seen, _) in recs.items()}
        assert calls == {"layers.2": 0, "layers.1.mlp": 0, "lm_head": 0, "norm": 0}
        llama.capture(_tokens(llama), ["layers.2"])  # the last block: still no final norm, no LM head
        assert len(recs["layers.2"][0]) == 1 and len(recs["lm_head"][0]) == 0 and len(recs["norm"][0]) == 0
    finally:
        for _, h in recs.values():
            h.remove()
    # no hook is left behind
    assert {n: len(m._forward_hooks) for n, m in llama.model.named_modules()} == hooks_before


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_logits_with_replacements(which, request):
    adapter = request.getfixturevalue(which)
    tokens = _tokens(adapter, seed=2)
    with torch.no_grad():
        clean = adapter.model(tokens).logits
    out = adapter.logits(tokens)
    assert out.shape == (2, 12, adapter.model.config.vocab_size) and out.dtype == torch.float32
    torch.testing.assert_close(out, clean, rtol=1e-5, atol=1e-6)

    received = []

    def identity(x):
        received.append((x.shape, x.dtype, x.device.type))
        return x

    torch.testing.assert_close(adapter.logits(tokens, replace={"layers.1": identity}), clean, rtol=1e-5, atol=1e-6)
    assert received == [((2, 12, 32), torch.float32, "cpu")]
    zeroed = adapter.logits(tokens, replace={"layers.1": torch.zeros_like})
    assert (zeroed - clean).abs().max() > 1e-4
    # zeroing the residual after block 1 = running block 2, the final norm and the head on zeros
    torch.testing.assert_close(zeroed, adapter.logits(tokens, replace={"layers.1": torch.zeros_like,
                                                                       "layers.0.mlp": lambda x: x * 3}))
    attn_zeroed = adapter.logits(tokens, replace={"layers.1.attn": torch.zeros_like})
    assert (attn_zeroed - clean).abs().max() > 1e-5
    with pytest.raises(saebench.ShapeError, match="layers.1"):
        adapter.logits(tokens, replace={"layers.1": lambda x: x[:, :1]})
    torch.testing.assert_close(adapter.logits(tokens), clean, rtol=1e-5, atol=1e-6)  # hooks removed after errors


@pytest.mark.parametrize("which", ["llama", "gpt2"])
def test_mlp_hidden_is_the_input_of_the_output_projection(which, request):
    adapter = request.getfixturevalue(which)
    tokens = _tokens(adapter, seed=3)
    mlp = adapter._find_hookpoints()["layers.1.mlp"]
    seen = []
    out = mlp.down_proj if which == "llama" else mlp.c_proj
    handle = out.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))
    with torch.no_grad():
        clean = adapter.model(tokens).logits
    handle.remove()
    got = adapter.capture(tokens, ["layers.1.mlp.hidden"])["layers.1.mlp.hidden"]
    torch.testing.assert_close(got, seen[0], rtol=1e-5, atol=1e-6)
    same = adapter.logits(tokens, replace={"layers.1.mlp.hidden": lambda x: x})
    torch.testing.assert_close(same, clean, rtol=1e-5, atol=1e-6)
    zeroed = adapter.logits(tokens, replace={"layers.1.mlp.hidden": torch.zeros_like})
    assert (zeroed - clean).abs().max() > 1e-5
    # zero neurons = a zero MLP output (no bias in Llama's down_proj)
    if which == "llama":
        torch.testing.assert_close(zeroed, adapter.logits(tokens, replace={"layers.1.mlp": torch.zeros_like}))
    assert not any(m._forward_pre_hooks for m in adapter.model.modules())  # no hook left behind


def test_special_mask_marks_bos_eos_pad(llama):
    tokens = torch.tensor([[2, 5, 1, 7, 0, 9], [2, 1, 1, 3, 4, 0]])
    expected = torch.tensor([[1, 0, 1, 0, 1, 0], [1, 1, 1, 0, 0, 1]], dtype=torch.bool)
    assert torch.equal(llama.special_mask(tokens), expected)


def test_tokenize_adds_no_special_tokens(llama):
    ids = llama.tokenize("def f(x):\n    return x")
    assert ids and not set(ids) & {0, 1, 2}
    assert llama.tokenizer.decode(ids) == "def f(x):\n    return x"


def test_unknown_hookpoint_lists_valid_ones(llama):
    with pytest.raises(saebench.ConfigError, match=r"'layers\.7'.*layers\.0 \.\. layers\.2.*layers\.0\.attn"):
        llama.capture(_tokens(llama), ["layers.7"])
    with pytest.raises(saebench.ConfigError, match="resid_post"):
        llama.d_model("blocks.1.hook_resid_post")


def test_model_id_is_stable_and_follows_the_weights(llama_dir, llama, tmp_path):
    again = HFCausalLMAdapter(str(llama_dir))
    assert again.model_id == llama.model_id and str(llama_dir.resolve()) in llama.model_id
    other = HFCausalLMAdapter(str(make_tiny_model(tmp_path / "m", "llama", seed=1)))
    assert other.model_id.split("@")[1] != llama.model_id.split("@")[1]
    bf16 = HFCausalLMAdapter(str(llama_dir), dtype="bfloat16")
    assert bf16.model_id == llama.model_id + "#bfloat16"
    acts = bf16.capture(_tokens(bf16), ["layers.1"])["layers.1"]
    assert acts.dtype == torch.float32
    assert bf16.logits(_tokens(bf16)).dtype == torch.float32


def test_bad_paths_and_options(tmp_path, llama_dir):
    with pytest.raises(saebench.ConfigError, match="does not exist") as e:
        HFCausalLMAdapter(str(tmp_path / "nope"))
    assert str(tmp_path / "nope") in str(e.value)
    with pytest.raises(saebench.ConfigError, match=str(tmp_path / "x.gguf")):
        HFCausalLMAdapter(str(tmp_path / "x.gguf"))
    with pytest.raises(saebench.ConfigError, match="embedded:gemma-3-270m"):
        HFCausalLMAdapter("embedded:llama-9000")
    with pytest.raises(saebench.ConfigError, match="'revision'"):
        HFCausalLMAdapter(str(llama_dir), revision="main")
    with pytest.raises(saebench.ConfigError, match="dtype"):
        HFCausalLMAdapter(str(llama_dir), dtype="float8")
    with pytest.raises(saebench.ConfigError, match="cannot load"):
        HFCausalLMAdapter(str(tmp_path))  # a folder without a model
    with pytest.raises(saebench.ConfigError, match="gguf_file"):
        HFCausalLMAdapter(str(llama_dir), gguf_file="missing.gguf")


def test_a_gguf_path_is_split_into_folder_and_file(tmp_path):
    f = tmp_path / "model.gguf"
    f.write_bytes(b"GGUF")
    folder, name, model_id = HFCausalLMAdapter._locate(object.__new__(HFCausalLMAdapter), str(f), None)
    assert (folder, name) == (str(tmp_path), "model.gguf") and model_id.startswith(str(f.resolve()) + "@")


def test_make_contexts_on_the_tiny_model(llama):
    ctx = make_contexts(llama, PythonStdlibSource(), context_length=16, n_tokens=100)
    assert ctx.shape == (7, 16) and (ctx[:, 0] == 2).all()
    acts = llama.capture(ctx, ["layers.2"])["layers.2"]
    assert acts.shape == (7, 16, 32) and torch.isfinite(acts).all()


@pytest.mark.slow
def test_embedded_gemma_converts_once_then_loads_the_cached_copy(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEBENCH_CACHE", str(tmp_path))
    t0 = time.perf_counter()
    first = HFCausalLMAdapter("embedded:gemma-3-270m")
    convert_s = time.perf_counter() - t0
    assert first.converted
    cached = tmp_path / "models" / "gemma-3-270m"
    assert (cached / "config.json").is_file() and (cached / "model.safetensors").is_file()
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == [".locks", "gemma-3-270m"]  # no staging folder
    assert list((tmp_path / "models" / ".locks").iterdir()) == []  # the conversion's lock was released
    model_id = first.model_id
    del first

    t0 = time.perf_counter()
    gemma = HFCausalLMAdapter("embedded:gemma-3-270m")
    reload_s = time.perf_counter() - t0
    print(f"\nembedded gemma-3-270m: convert {convert_s:.1f} s, reload {reload_s:.1f} s")
    assert not gemma.converted and reload_s < 15
    assert gemma.model_id == model_id and model_id.startswith("embedded:gemma-3-270m@")
    layers = [hp for hp in gemma.hookpoints() if hp.count(".") == 1]
    assert len(layers) == 18 and gemma.d_model("layers.6") == 640
    assert gemma.bos_token_id == 2

    ctx = make_contexts(gemma, PythonStdlibSource(), context_length=32, n_tokens=64)
    assert ctx.shape == (2, 32) and (ctx[:, 0] == gemma.bos_token_id).all()
    assert not gemma.special_mask(ctx)[:, 1:].all()
    acts = gemma.capture(ctx, ["layers.6"])["layers.6"]
    assert acts.shape == (2, 32, 640) and acts.dtype == torch.float32
    norms = acts.norm(dim=-1)
    body = norms[~gemma.special_mask(ctx)]
    assert 1000 < body.median() < 20000, body.median()  # residual norms in the thousands at layer 6
    assert (norms[:, 0] > 5 * body.median()).all()  # BOS is the known huge outlier


# -- the sites of published SAEs (Gemma Scope 2, TransformerLens) ---------------------------------
def _record_input(module):
    seen = []
    return seen, module.register_forward_pre_hook(lambda mod, args: seen.append(args[0].detach().clone()))


def test_gemma3_sites_are_its_norms_and_o_proj(gemma3):
    block = gemma3.model.model.layers[1]
    assert type(block).__name__ == "Gemma3DecoderLayer"
    probes = {"layers.1.mlp_out": _record(block.post_feedforward_layernorm),
              "layers.1.mlp_in": _record(block.pre_feedforward_layernorm),
              "layers.1.attn_out": _record(block.post_attention_layernorm),
              "layers.1.attn.z": _record_input(block.self_attn.o_proj),
              "layers.1.mlp": _record(block.mlp), "layers.1.attn": _record(block.self_attn)}
    tokens = _tokens(gemma3, seed=4)
    with torch.no_grad():
        gemma3.model(tokens)
    for _, handle in probes.values():
        handle.remove()
    got = gemma3.capture(tokens, list(probes))
    for hp, (seen, _) in probes.items():
        torch.testing.assert_close(got[hp], seen[0], rtol=1e-5, atol=1e-6, msg=hp)
    # the post-feedforward norm changes what the MLP adds: mlp_out is not the MLP module's output
    assert (got["layers.1.mlp_out"] - got["layers.1.mlp"]).abs().max() > 1e-3
    assert (got["layers.1.attn_out"] - got["layers.1.attn"]).abs().max() > 1e-3
    assert gemma3.d_model("layers.1.attn.z") == 64 and got["layers.1.attn.z"].shape == (2, 12, 64)
    assert all(gemma3.d_model(f"layers.1{s}") == 32 for s in (".mlp_out", ".mlp_in", ".attn_out"))
    assert not any(m._forward_pre_hooks or m._forward_hooks for m in gemma3.model.modules())


@pytest.mark.parametrize("site,same_as", [(".mlp_out", ".mlp"), (".mlp_in", ".mlp"), (".attn.z", ".attn"),
                                          (".attn_out", ".attn")])
def test_gemma3_sites_are_replaceable(gemma3, site, same_as):
    tokens = _tokens(gemma3, seed=5)
    with torch.no_grad():
        clean = gemma3.model(tokens).logits
    received = []
    same = gemma3.logits(tokens, replace={f"layers.1{site}": lambda x: received.append(x.shape) or x})
    torch.testing.assert_close(same, clean, rtol=1e-5, atol=1e-6)
    assert received == [(2, 12, gemma3.d_model(f"layers.1{site}"))]
    zeroed = gemma3.logits(tokens, replace={f"layers.1{site}": torch.zeros_like})
    assert (zeroed - clean).abs().max() > 1e-4
    # RMSNorm(0) = 0 and Gemma's projections have no bias: a zero site adds nothing, as a zero module output
    torch.testing.assert_close(zeroed, gemma3.logits(tokens, replace={f"layers.1{same_as}": torch.zeros_like}),
                               rtol=1e-5, atol=1e-5)


def test_gpt2_attn_z_is_the_input_of_c_proj_and_other_sites_are_the_modules(gpt2):
    block = gpt2._find_hookpoints()["layers.1"]
    seen, handle = _record_input(block.attn.c_proj)
    tokens = _tokens(gpt2, seed=6)
    with torch.no_grad():
        gpt2.model(tokens)
    handle.remove()
    got = gpt2.capture(tokens, ["layers.1.attn.z", "layers.1.attn", "layers.1.attn_out", "layers.1.mlp",
                                "layers.1.mlp_out"])
    torch.testing.assert_close(got["layers.1.attn.z"], seen[0], rtol=1e-5, atol=1e-6)
    assert torch.equal(got["layers.1.attn_out"], got["layers.1.attn"])  # no post-attention norm in GPT-2
    assert torch.equal(got["layers.1.mlp_out"], got["layers.1.mlp"])


@pytest.mark.parametrize("model", ["gemma3", "llama", "gpt2"])
@pytest.mark.parametrize("hookpoint", ["layers.1", "layers.2.mlp_out", "layers.2.attn.z"])
def test_resumed_logits_equal_the_full_forward_and_skip_the_earlier_blocks(model, hookpoint, request):
    adapter = request.getfixturevalue(model)
    if hookpoint not in adapter.hookpoints():
        pytest.skip(f"{model} has no {hookpoint}")
    tokens = _tokens(adapter, seed=8)
    hooks_before = [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in adapter.model.modules()]
    g = torch.Generator().manual_seed(1)
    noise = torch.randn(2, 12, adapter.d_model(hookpoint), generator=g)
    replace = {hookpoint: lambda x: x * 0.5 + noise}
    full = adapter.logits(tokens, replace=replace)
    state = adapter.resume_state(tokens, hookpoint)
    assert state.block == int(hookpoint.split(".")[1])
    calls = []
    first = adapter._find_hookpoints()["layers.0.mlp"]
    handle = first.register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        resumed = adapter.logits(tokens, replace=replace, resume=state)
        assert not calls  # block 0's MLP never ran
    finally:
        handle.remove()
    torch.testing.assert_close(resumed, full, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(adapter.logits(tokens, resume=state), adapter.logits(tokens), rtol=1e-5, atol=1e-5)
    assert not any("forward" in vars(b) for b in adapter._blocks)  # the skip is undone
    assert [len(m._forward_pre_hooks) + len(m._forward_hooks) for m in adapter.model.modules()] == hooks_before


def test_resume_state_errors_and_block_zero(gemma3):
    tokens = _tokens(gemma3, seed=9)
    assert gemma3.resume_state(tokens, "layers.0.mlp_out") is None  # nothing before block 0 to skip
    state = gemma3.resume_state(tokens, "layers.2")
    with pytest.raises(saebench.ShapeError, match="before the resumed block 2"):
        gemma3.logits(tokens, replace={"layers.1": torch.zeros_like}, resume=state)
    with pytest.raises(saebench.ShapeError, match="resume state of tokens"):
        gemma3.logits(tokens[:1], resume=state)
    with pytest.raises(saebench.ConfigError, match="unknown hook point"):
        gemma3.resume_state(tokens, "layers.9")


def test_downstream_over_several_saes_resumes_and_equals_full_forwards(gemma3, monkeypatch):
    from reference import random_weights
    from saebench.plugins.scorers.downstream import DownstreamScorer

    hookpoints = ["layers.1", "layers.1", "layers.2.mlp_out"]
    saes = [saebench.build_sae("relu", random_weights(32, 64, arch="relu", seed=s)) for s in range(3)]
    tokens = torch.cat([_tokens(gemma3, batch=3, seq=12, seed=s) for s in (10, 11)])
    inputs = [saebench.EvalInputs(hookpoint=hp, activations=lambda bt: iter([]), tokens=tokens, adapter=gemma3)
              for hp in hookpoints]  # fmt: skip
    scorer = DownstreamScorer(batch_contexts=4)
    resumed = []
    real = gemma3.resume_state
    monkeypatch.setattr(gemma3, "resume_state", lambda t, hp: resumed.append(hp) or real(t, hp))
    together = scorer.score_many(saes, inputs)
    assert resumed == ["layers.1", "layers.2.mlp_out"] * 2  # once per hook point and batch
    monkeypatch.setattr(gemma3, "resume_state", lambda t, hp: None)  # full forwards, one SAE at a time
    for sae, one, got in zip(saes, inputs, together):
        want = scorer.score(sae, one)
        assert got.metrics.keys() == want.metrics.keys()
        for k, v in want.metrics.items():
            assert got.metrics[k] == pytest.approx(v, rel=1e-5, abs=1e-6), k
    assert together[0].metrics["kl_sae"] != together[1].metrics["kl_sae"]
