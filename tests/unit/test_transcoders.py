"""Transcoders: a Gemma Scope 2 skip transcoder in the release's own layout, loaded and checked against its formula in
float64; saebench's own checkpoint of one; the reconstruction scorer against the activations it writes; a run on a
tiny Gemma 3 from ``layers.1.mlp_in`` to ``layers.1.mlp_out``, its explained variance recomputed in float64 from the
run's activation caches; and the one-line errors of a matrix that gets one wrong."""

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import saebench
from saebench import cli
from saebench.errors import CheckpointError, ConfigError, ShapeError
from saebench.models.hooknames import checkpoint_hook_name, checkpoint_hook_name_out, to_hookpoint
from saebench.plugins.scorers.reconstruction import ReconstructionScorer
from saebench.plugins.scorers.sparsity import SparsityScorer
from saebench.run.activations import ActivationCache
from saebench.run.components import build_components
from saebench.run.execute import execute
from saebench.run.matrix import parse_matrix
from saebench.run.plan import make_plan
from saebench.run.progress import Progress
from saebench.run.store import ResultsStore
from saebench.testing.tiny_model import make_tiny_gemma3

D_MODEL, D_SAE = 32, 64
FOLDER = "transcoder_all/layer_1_width_64_l0_small_affine"
HF_IN, HF_OUT = "model.layers.1.pre_feedforward_layernorm.output", "model.layers.1.post_feedforward_layernorm.output"


def gemma_scope_2_transcoder(folder, d_in=D_MODEL, d_out=D_MODEL, seed=0, config=True, **given):
    """A Gemma Scope 2 skip transcoder as the release lays it out: params.safetensors with lower-case w_enc [d_in, d_sae],
    w_dec [d_sae, d_out], b_enc, b_dec [d_out], threshold (some below 0) and affine_skip_connection [d_in, d_out], and
    its config.json. Random tensors, but those ``given``. Returns the tensors."""
    gen = torch.Generator().manual_seed(seed)
    params = {"w_enc": torch.randn(d_in, D_SAE, generator=gen) * 0.3,
              "w_dec": torch.randn(D_SAE, d_out, generator=gen) * 0.1,
              "b_enc": torch.randn(D_SAE, generator=gen) * 0.1, "b_dec": torch.randn(d_out, generator=gen) * 0.1,
              "threshold": torch.rand(D_SAE, generator=gen) * 0.5 - 0.1,
              "affine_skip_connection": torch.randn(d_in, d_out, generator=gen) * 0.1} | given  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    save_file(params, str(folder / "params.safetensors"))
    if config:
        (folder / "config.json").write_text(json.dumps({
            "architecture": "jump_relu", "type": "transcoder", "affine_connection": True, "width": D_SAE, "l0": 20,
            "hf_hook_point_in": HF_IN, "hf_hook_point_out": HF_OUT, "model_name": "google/gemma-3-270m-pt"}))
    return params


def reference(x, p):
    """Gemma Scope 2's JumpReLU transcoder in float64: f = ReLU(h)·1[h > θ], h = x·w_enc + b_enc; y = f·w_dec + b_dec
    + x·affine_skip_connection."""
    x, p = x.double(), {k: v.double() for k, v in p.items()}
    h = x @ p["w_enc"] + p["b_enc"]
    f = h.clamp_min(0) * (h > p["threshold"])
    return f, f @ p["w_dec"] + p["b_dec"] + x @ p["affine_skip_connection"]


def close(got, want, rtol=1e-5):
    np.testing.assert_allclose(got.double().numpy(), want.numpy(), rtol=rtol, atol=rtol * float(want.abs().max()))


# -- the loader and the SAE ---------------------------------------------------------------------------
def test_a_gemma_scope_2_skip_transcoder_loads_as_its_formula(tmp_path):
    """d_in 32, d_out 24: a transposed decoder or skip could not even load."""
    params = gemma_scope_2_transcoder(tmp_path / FOLDER, d_out=24)
    sae = saebench.load_sae(tmp_path / FOLDER)
    assert sae.cfg.metadata["format"] == "gemmascope" and sae.arch == "jumprelu"
    assert (sae.is_transcoder, sae.cfg.skip, sae.cfg.d_in, sae.cfg.d_out, sae.d_out) == (True, True, 32, 24, 24)
    assert (sae.cfg.hook_name, sae.cfg.hook_name_out) == ("blocks.1.ln2.hook_normalized", "blocks.1.hook_mlp_out")
    x = torch.randn(200, D_MODEL, generator=torch.Generator().manual_seed(1))
    f, y = reference(x, params)
    assert 0.05 < float((f != 0).double().mean()) < 0.7, "vacuous: (almost) nothing or everything fires"
    close(sae.encode(x), f)
    close(sae.transcode(x), y)
    close(sae(x), y)
    close(sae.decode(f.float()), y - x.double() @ params["affine_skip_connection"].double())
    close(sae.decode_sparse(*sae.encode_sparse(x)) + sae.skip_connection(x), y)
    close(sae(x.clone().requires_grad_()).detach(), y)  # the differentiable path adds the skip too


def test_a_transcoder_round_trips_through_saebenchs_own_checkpoint_and_an_sae_saves_as_before(tmp_path):
    gemma_scope_2_transcoder(tmp_path / FOLDER, d_out=24)
    sae = saebench.load_sae(tmp_path / FOLDER)
    saebench.save_sae(sae, tmp_path / "native")
    back = saebench.load_sae(tmp_path / "native", "native")
    assert (back.cfg.d_out, back.cfg.skip, back.cfg.hook_name_out) == (24, True, "blocks.1.hook_mlp_out")
    assert set(back.weights()) == {"W_enc", "W_dec", "b_enc", "b_dec", "threshold", "W_skip"}
    for name, value in sae.weights().items():
        assert torch.equal(back.weights()[name], value), name
    plain = saebench.build_sae("relu", {k: v for k, v in sae.weights().items() if k in ("W_enc", "b_enc")}
                               | {"W_dec": torch.zeros(D_SAE, D_MODEL), "b_dec": torch.zeros(D_MODEL)})
    saebench.save_sae(plain, tmp_path / "plain")
    saved = json.loads((tmp_path / "plain" / "cfg.json").read_text())
    assert not {"d_out", "skip", "hook_name_out"} & set(saved)  # an SAE's config is what it always was
    assert not saebench.load_sae(tmp_path / "plain").is_transcoder


def test_transcoder_configs_that_cannot_be_are_refused():
    w = {"W_enc": torch.zeros(8, 4), "W_dec": torch.zeros(4, 6), "b_enc": torch.zeros(4), "b_dec": torch.zeros(6)}
    with pytest.raises(ConfigError, match="apply_b_dec_to_input"):
        saebench.build_sae("relu", w, d_out=6, apply_b_dec_to_input=True)
    with pytest.raises(ConfigError, match="d_out: a transcoder"):
        saebench.build_sae("relu", w, skip=True)
    with pytest.raises(CheckpointError, match=r"missing tensor\(s\) W_skip"):
        saebench.build_sae("relu", w, d_out=6, skip=True)
    with pytest.raises(CheckpointError, match=r"tensor W_dec has shape \[4, 6\], expected \[d_sae=4, d_in=8\]"):
        saebench.build_sae("relu", w)

    class FixedDecoder(saebench.SAE):
        arch = "fixed-decoder"
        weight_shapes = {**saebench.SAE.weight_shapes, "W_dec": ("d_sae", "d_in")}

    with pytest.raises(CheckpointError, match="cannot be a transcoder"):
        FixedDecoder(saebench.SAEConfig(arch="fixed-decoder", d_in=8, d_sae=4, d_out=6))


def test_a_transcoder_names_the_hook_point_it_writes(tmp_path):
    gemma_scope_2_transcoder(tmp_path / FOLDER)
    assert checkpoint_hook_name(tmp_path / FOLDER, str(tmp_path / FOLDER)) == HF_IN
    assert checkpoint_hook_name_out(tmp_path / FOLDER, str(tmp_path / FOLDER)) == HF_OUT
    assert (to_hookpoint(HF_IN), to_hookpoint(HF_OUT)) == ("layers.1.mlp_in", "layers.1.mlp_out")
    bare = tmp_path / "bare" / "transcoder" / "layer_3_width_16k_l0_medium"
    gemma_scope_2_transcoder(bare, config=False)  # the folder alone, as an hf:// path is read before any fetch
    assert checkpoint_hook_name_out(None, "hf://google/gemma-scope-2-270m-pt/transcoder/layer_3_width_16k_l0_medium") \
        == "blocks.3.hook_mlp_out"
    assert to_hookpoint(checkpoint_hook_name(bare, str(bare))) == "layers.3.mlp_in"
    sae = tmp_path / "resid_post" / "layer_2_width_16k_l0_small"  # an SAE: its config's in and out are one point
    sae.mkdir(parents=True)
    point = "model.layers.2.output"
    (sae / "config.json").write_text(json.dumps({"hf_hook_point_in": point, "hf_hook_point_out": point}))
    assert checkpoint_hook_name_out(sae, str(sae)) is None


def test_a_published_transcoder_names_both_hook_points_to_the_matrix(tmp_path, monkeypatch, tiny_corpus):
    from test_hub import snapshot

    cache = tmp_path / "hf-cache"
    gemma_scope_2_transcoder(snapshot(cache, repo="google/gemma-scope-2-tiny-pt") / FOLDER)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    saes = [{"name": "tc", "model": "g3", "path": f"hf://google/gemma-scope-2-tiny-pt/{FOLDER}"},
            {"name": "given", "model": "g3", "path": f"hf://google/gemma-scope-2-tiny-pt/{FOLDER}",
             "hookpoint": "layers.1.mlp_in"}]  # fmt: skip
    matrix = parse_matrix(run_matrix("unused", tiny_corpus, saes), "m.yaml")
    assert [(s.hookpoint, s.hookpoint_out) for s in matrix.saes] == [("layers.1.mlp_in", "layers.1.mlp_out")] * 2
    assert matrix.models[0].hookpoints == ["layers.1", "layers.1.mlp_in", "layers.1.mlp_out"]


# -- the scorers against float64 references -----------------------------------------------------------
def inputs_of(x, y=None, batch_tokens=64):
    def stream(a):
        return lambda n: iter(a.split(n))

    return saebench.EvalInputs(hookpoint="layers.1.mlp_in", activations=stream(x), tokens=torch.zeros(0),
                               hookpoint_out=None if y is None else "layers.1.mlp_out",
                               targets=None if y is None else stream(y))  # fmt: skip


def test_reconstruction_of_a_transcoder_compares_its_output_with_the_target_in_float64(tmp_path):
    params = gemma_scope_2_transcoder(tmp_path / FOLDER, d_out=24)
    sae = saebench.load_sae(tmp_path / FOLDER)
    gen = torch.Generator().manual_seed(2)
    x = torch.randn(300, D_MODEL, generator=gen)
    y = torch.randn(300, 24, generator=gen) * 0.2 + reference(x, params)[1].float() + 0.5  # a mean to subtract
    result = ReconstructionScorer(batch_tokens=64).score(sae, inputs_of(x, y))
    yd, y_hat = y.double(), reference(x, params)[1]
    sse, tss = float((yd - y_hat).square().sum()), float((yd - yd.mean(0)).square().sum())
    cos = torch.nn.functional.cosine_similarity(yd, y_hat, dim=1)
    want = {"explained_variance": 1 - sse / tss, "fvu": sse / tss, "mse": sse / yd.numel(), "cosine": float(cos.mean()),
            "l2_ratio": float((y_hat.norm(dim=1) / yd.norm(dim=1)).mean()),
            "relative_reconstruction_bias": float(y_hat.square().sum() / (yd * y_hat).sum()), "tokens": 300}  # fmt: skip
    assert 0.5 < want["explained_variance"] < 0.99
    for name, value in want.items():
        assert result.metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-7), name
    assert (result.details["hookpoint_out"], result.details["d_in"], result.details["d_out"]) == ("layers.1.mlp_out", 32, 24)
    sparsity = SparsityScorer(batch_tokens=64).score(sae, inputs_of(x, y))
    assert sparsity.metrics["l0"] == pytest.approx(float((reference(x, params)[0] != 0).sum(1).double().mean()))
    with pytest.raises(ShapeError, match="inputs.targets is None"):
        ReconstructionScorer().score(sae, inputs_of(x))


def test_a_topk_transcoders_test_time_k_decodes_with_its_skip():
    gen = torch.Generator().manual_seed(4)
    w = {"W_enc": torch.randn(16, 40, generator=gen), "W_dec": torch.randn(40, 12, generator=gen) * 0.1,
         "b_enc": torch.zeros(40), "b_dec": torch.randn(12, generator=gen) * 0.1,
         "W_skip": torch.randn(16, 12, generator=gen) * 0.3}  # fmt: skip
    sae = saebench.build_sae("topk", w, k=6, d_out=12, skip=True)
    x, y = torch.randn(100, 16, generator=gen), torch.randn(100, 12, generator=gen)
    result = ReconstructionScorer(ks=[2, 6], batch_tokens=32).score(sae, inputs_of(x, y))
    wd, xd, yd = {k: v.double() for k, v in w.items()}, x.double(), y.double()
    h = xd @ wd["W_enc"] + wd["b_enc"]
    tss = float((yd - yd.mean(0)).square().sum())
    for k in (2, 6):
        top = h.topk(k, dim=1)
        f = torch.zeros_like(h).scatter(1, top.indices, top.values.clamp_min(0))
        y_hat = f @ wd["W_dec"] + wd["b_dec"] + xd @ wd["W_skip"]
        assert result.metrics[f"fvu_at_k{k}"] == pytest.approx(float((yd - y_hat).square().sum()) / tss, rel=1e-5)
    assert result.metrics["fvu_at_k6"] == pytest.approx(result.metrics["fvu"], rel=1e-7)  # its trained k


# -- a run on a tiny Gemma 3 ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def tiny_gemma3(tmp_path_factory):
    """A 2-layer Gemma 3 (d_model 32, norms before and after its MLPs) with the tiny Llama's byte tokenizer."""
    return make_tiny_gemma3(tmp_path_factory.mktemp("gemma3"), n_layers=2, d_model=D_MODEL)


def run_matrix(model, corpus, saes, scorers=("sparsity", "reconstruction"), hookpoints=("layers.1",)):
    return {"name": "tc", "output": "runs/tc",
            "data": {"source": "text-files", "paths": [f"{corpus}/*.txt"], "tokens": 768, "context_length": 32},
            "models": [{"name": "g3", "path": str(model), "hookpoints": list(hookpoints)}],
            "saes": saes, "scorers": list(scorers)}  # fmt: skip


def test_a_skip_transcoder_from_mlp_in_to_mlp_out_gets_its_rows_with_ev_of_the_target(tiny_gemma3, tiny_corpus,
                                                                                      tmp_path, monkeypatch):
    from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter

    monkeypatch.chdir(tmp_path)
    adapter = HFCausalLMAdapter(str(tiny_gemma3))
    # a transcoder worth the name: its skip and b_dec the least-squares map of the MLP, fit on texts the run reads last
    docs = sorted(tiny_corpus.glob("*.txt"))[-8:]
    tokens = torch.tensor([[2, *adapter.tokenize(d.read_text())[:31]] for d in docs])
    fit = adapter.capture(tokens, ["layers.1.mlp_in", "layers.1.mlp_out"])
    a, b = (fit[h].reshape(-1, D_MODEL).double() for h in ("layers.1.mlp_in", "layers.1.mlp_out"))
    affine = torch.linalg.lstsq(torch.cat([a, torch.ones(len(a), 1)], 1), b).solution.float()
    params = gemma_scope_2_transcoder(tmp_path / FOLDER, affine_skip_connection=affine[:-1].contiguous(),
                                      b_dec=affine[-1].contiguous(), w_dec=torch.randn(D_SAE, D_MODEL) * 0.01)
    saes = [{"name": "inferred", "model": "g3", "path": str(tmp_path / FOLDER)},  # both hook points from its files
            {"name": "declared", "model": "g3", "path": str(tmp_path / FOLDER), "hookpoint": "layers.1.mlp_in",
             "hookpoint_out": "layers.1.mlp_out"}]  # fmt: skip
    raw = run_matrix(tiny_gemma3, tiny_corpus, saes, hookpoints=("layers.1", "layers.1.mlp_in", "layers.1.mlp_out"),
                     scorers=("sparsity", "reconstruction", {"name": "downstream", "options": {"tokens": 256}}))
    matrix = parse_matrix(raw, "m.yaml")
    assert [(s.hookpoint, s.hookpoint_out) for s in matrix.saes] == [("layers.1.mlp_in", "layers.1.mlp_out")] * 2
    plan = make_plan(matrix, "m.yaml", build_components(matrix, "m.yaml"))
    assert plan.cells[0].config["hookpoint_out"] == "layers.1.mlp_out"
    execute(matrix, source="m.yaml", progress=Progress(False))
    with ResultsStore.existing(tmp_path / "runs" / "tc") as store:
        metrics = {(sae, f"{scorer}.{m}"): v for _, hp, sae, scorer, m, v in store.metrics() if hp == "layers.1.mlp_in"}
        assert all(c["status"] == "done" for c in store.cells())
    source = ActivationCache(plan.eval_cache("g3", "layers.1.mlp_in"))
    target = ActivationCache(plan.eval_cache("g3", "layers.1.mlp_out"))
    x, y = torch.cat(list(source.batches(4096))), torch.cat(list(target.batches(4096))).double()
    assert x.shape == y.shape == (source.n_tokens, D_MODEL) and source.n_tokens > 600
    # the two caches hold the same tokens: their first context, captured again in one forward pass
    tokens = source.tokens()[:1]
    keep = ~adapter.special_mask(tokens)
    live = adapter.capture(tokens, ["layers.1.mlp_in", "layers.1.mlp_out"])
    n = int(keep.sum())
    close(x[:n], live["layers.1.mlp_in"][keep].double())
    close(y[:n].float(), live["layers.1.mlp_out"][keep].double())
    f, y_hat = reference(x, params)
    ev = 1 - float((y - y_hat).square().sum()) / float((y - y.mean(0)).square().sum())
    assert 0.3 < ev < 0.999
    l0 = float((f != 0).sum(1).double().mean())
    for sae in ("inferred", "declared"):
        assert metrics[(sae, "reconstruction.explained_variance")] == pytest.approx(ev, rel=1e-5, abs=1e-6)
        assert metrics[(sae, "sparsity.l0")] == pytest.approx(l0, rel=1e-9)
        assert metrics[(sae, "reconstruction.tokens")] == source.n_tokens
        assert metrics[(sae, "downstream.kl_sae")] > 0 and np.isfinite(metrics[(sae, "downstream.ce_loss_score")])
    # spliced in place of the MLP's output (its values against hooks on the model: the test above)
    assert metrics[("inferred", "downstream.kl_sae")] == metrics[("declared", "downstream.kl_sae")]
    again = execute(parse_matrix(raw, "m.yaml"), source="m.yaml", progress=Progress(False))
    assert again.pending == 0  # the same hashes on a second run


def hf_reference_downstream(adapter, tokens, params):
    """CE and KL in float64 with the transcoder's output (reference()) in place of Gemma 3's post-feedforward norm output
    at non-special positions, its input read from the pre-feedforward norm in the same forward, through hooks on those
    modules; and with that output zeroed everywhere."""
    block = adapter.model.model.layers[1]
    keep = ~adapter.special_mask(tokens)
    seen = {}

    def logits(replace):
        handles = [block.pre_feedforward_layernorm.register_forward_hook(lambda m, a, out: seen.update(x=out))]
        if replace is not None:
            handles.append(block.post_feedforward_layernorm.register_forward_hook(replace))
        try:
            with torch.no_grad():
                return adapter.model(tokens).logits.double()
        finally:
            for h in handles:
                h.remove()

    def splice(module, args, out):
        new = out.clone()
        new[keep] = reference(seen["x"][keep], params)[1].to(out.dtype)
        return new

    clean, sae, zero = logits(None), logits(splice), logits(lambda m, a, out: torch.zeros_like(out))
    counted = keep[:, :-1] & keep[:, 1:]
    targets = tokens[:, 1:][counted]
    lp = {k: torch.log_softmax(v[:, :-1][counted], -1) for k, v in (("clean", clean), ("sae", sae), ("zero", zero))}
    ce = {k: float(-v.gather(1, targets[:, None]).mean()) for k, v in lp.items()}
    kl = {k: float((lp["clean"].exp() * (lp["clean"] - lp[k])).sum(-1).mean()) for k in ("sae", "zero")}
    return {"ce_clean": ce["clean"], "ce_sae": ce["sae"], "ce_zero": ce["zero"], "kl_sae": kl["sae"],
            "kl_zero": kl["zero"], "ce_loss_score": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
            "kl_score": (kl["zero"] - kl["sae"]) / kl["zero"]}  # fmt: skip


def test_downstream_splices_a_skip_transcoders_output_in_place_of_the_mlps(tiny_gemma3, tmp_path):
    from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter
    from saebench.plugins.scorers.downstream import DownstreamScorer

    adapter = HFCausalLMAdapter(str(tiny_gemma3))
    params = gemma_scope_2_transcoder(tmp_path / FOLDER, seed=3)
    sae = saebench.load_sae(tmp_path / FOLDER)
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(3, 259, (6, 16), generator=gen)
    tokens[:, 0] = adapter.bos_token_id
    tokens[2, 9:] = adapter.pad_token_id
    inputs = saebench.EvalInputs(hookpoint="layers.1.mlp_in", hookpoint_out="layers.1.mlp_out",
                                 activations=lambda bt: iter([]), tokens=tokens, adapter=adapter)  # fmt: skip
    plain = saebench.EvalInputs(hookpoint="layers.1", activations=lambda bt: iter([]), tokens=tokens, adapter=adapter)
    other = saebench.build_sae("relu", {k: torch.randn(*s, generator=gen) * 0.1 for k, s in
                                        {"W_enc": (32, 48), "b_enc": (48,), "W_dec": (48, 32), "b_dec": (32,)}.items()})
    scorer = DownstreamScorer(batch_contexts=4)
    got, with_sae = scorer.score_many([sae, other], [inputs, plain])  # beside an SAE of the residual stream
    want = hf_reference_downstream(adapter, tokens, params)
    assert abs(want["ce_sae"] - want["ce_clean"]) > 1e-3 and want["kl_zero"] > 1e-3
    for k, v in want.items():
        assert got.metrics[k] == pytest.approx(v, rel=1e-4, abs=1e-6), k
    assert got.metrics == scorer.score(sae, inputs).metrics
    assert with_sae.metrics == scorer.score(other, plain).metrics
    assert with_sae.metrics["kl_zero"] != got.metrics["kl_zero"]  # each ablated at the hook point it writes


def cli_run(raw, tmp_path, capsys):
    (tmp_path / "m.yaml").write_text(json.dumps(raw))
    code = cli.main(["run", str(tmp_path / "m.yaml"), "--quiet"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and err.count("\n") == 0, err
    return err


def test_a_transcoder_whose_output_does_not_fit_or_goes_nowhere_is_one_line_and_exit_2(tiny_gemma3, tiny_corpus,
                                                                                      tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    gemma_scope_2_transcoder(tmp_path / FOLDER, d_out=24)
    sae = {"name": "tc", "model": "g3", "path": str(tmp_path / FOLDER)}
    err = cli_run(run_matrix(tiny_gemma3, tiny_corpus, [sae]), tmp_path, capsys)
    assert "saes[0].hookpoint_out" in err and "has d_out 24 but g3 layers.1.mlp_out has width 32" in err
    gemma_scope_2_transcoder(tmp_path / FOLDER)
    err = cli_run(run_matrix(tiny_gemma3, tiny_corpus, [{**sae, "hookpoint_out": "layers.1.mlp_outt"}]), tmp_path, capsys)
    assert "saes[0].hookpoint_out" in err and "hook point 'layers.1.mlp_outt' is not among model 'g3'" in err
    err = cli_run(run_matrix(tiny_gemma3, tiny_corpus, [sae], scorers=("ablation_sparsity",)), tmp_path, capsys)
    assert "scorers[0]" in err and "scorer 'ablation_sparsity' does not evaluate transcoders" in err
    train = {"name": "t", "model": "g3", "hookpoint": "layers.1.mlp_in", "hookpoint_out": "layers.1.mlp_out",
             "train": {"arch": "relu", "d_sae": 64, "tokens": 1000}}  # fmt: skip
    err = cli_run(run_matrix(tiny_gemma3, tiny_corpus, [train], hookpoints=("layers.1.mlp_in",)), tmp_path, capsys)
    assert "saes[0].hookpoint_out" in err and "not transcoders" in err
    same = {**sae, "hookpoint": "layers.1.mlp_in", "hookpoint_out": "layers.1.mlp_in"}
    err = cli_run(run_matrix(tiny_gemma3, tiny_corpus, [same], hookpoints=("layers.1.mlp_in",)), tmp_path, capsys)
    assert "the hook point it reads: omit it for an SAE" in err
    unnamed = tmp_path / "my_transcoder"  # no config, no telling folder: the tensors say transcoder, nothing says where
    gemma_scope_2_transcoder(unnamed, config=False)
    bare = {"name": "tc", "model": "g3", "path": str(unnamed), "hookpoint": "layers.1.mlp_in"}
    err = cli_run(run_matrix(tiny_gemma3, tiny_corpus, [bare], hookpoints=("layers.1.mlp_in",)), tmp_path, capsys)
    assert "saes[0]" in err and "is a transcoder that writes a hook point it does not name: add 'hookpoint_out'" in err
