"""Loaders for published SAE releases: Gemma Scope 2, Llama Scope (lm_saes) and dictionary_learning.

Each checkpoint is written in its tool's own layout and tensor names, loaded with format detection,
and checked against that tool's formula computed in float64; then the ways each can be refused."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from test_loaders import D_IN, D_SAE, K, _all_formats, arrays, f64, inputs, loader, raises, relu_then_topk, tensors

from saebench import CheckpointError, load_sae, plugin_manager

NEW = ("gemmascope", "llamascope", "dictionary_learning")


def check(sae, x, f_ref, x_hat_ref, rtol=1e-5):
    """encode, decode and forward against float64 references, to float32's precision (relative to the scale)."""
    assert 0.02 < (f_ref != 0).mean() < 0.7, "vacuous test: (almost) nothing or everything fires"
    xt = torch.from_numpy(x)
    f = sae.encode(xt)
    np.testing.assert_allclose(f.double().numpy(), f_ref, rtol=rtol, atol=rtol * np.abs(f_ref).max())
    atol = rtol * np.abs(x_hat_ref).max()
    np.testing.assert_allclose(sae.decode(f).double().numpy(), x_hat_ref, rtol=rtol, atol=atol)
    np.testing.assert_allclose(sae(xt).double().numpy(), x_hat_ref, rtol=rtol, atol=atol)


def column_scales(seed=3):
    """Decoder norms far from 1, so that every fold of them is exercised."""
    return (np.random.default_rng(seed).random(D_SAE) * 1.5 + 0.5).astype(np.float32)


# -- Gemma Scope 2 -------------------------------------------------------------------------------
GS2_CONFIG = {"width": D_SAE, "model_name": "google/gemma-3-270m-pt", "architecture": "jump_relu", "l0": 60,
              "affine_connection": False, "hf_hook_point_in": "model.layers.12.output",
              "hf_hook_point_out": "model.layers.12.output", "type": "sae"}


def gs2_arrays(seed=0):
    w = arrays(seed, negative_thresholds=True)
    return {"w_enc": w["W_enc"], "w_dec": w["W_dec"], "b_enc": w["b_enc"], "b_dec": w["b_dec"], "threshold": w["threshold"]}


def write_gs2(folder, w=None, config=None, drop=(), **over):
    """A Gemma Scope 2 folder: params.safetensors (lower-case w_enc, w_dec) and, if given, config.json."""
    w = dict(w or gs2_arrays())
    folder.mkdir(parents=True, exist_ok=True)
    sd = {k: v for k, v in tensors(w).items() if k not in drop}
    sd.update({k: torch.as_tensor(v) for k, v in over.items()})
    save_file(sd, str(folder / "params.safetensors"))
    if config is not None:
        (folder / "config.json").write_text(json.dumps(config))
    return folder


def gs2_reference(x, w):
    """Gemma Scope 2's JumpReluSAE: pre = x @ w_enc + b_enc; mask(pre > threshold) · ReLU(pre); @ w_dec + b_dec."""
    pre = f64(x) @ f64(w["w_enc"]) + f64(w["b_enc"])
    f = (pre > f64(w["threshold"])) * np.maximum(pre, 0.0)
    return f, f @ f64(w["w_dec"]) + f64(w["b_dec"])


def test_gemmascope2_matches_its_formula_and_keeps_the_folder_facts(tmp_path):
    w = gs2_arrays()
    assert (w["threshold"] < 0).any()
    folder = write_gs2(tmp_path / "gemma-scope-2-270m-pt" / "resid_post" / "layer_12_width_16k_l0_medium", w, GS2_CONFIG)
    for path in (folder, folder / "params.safetensors"):
        sae = load_sae(path)
        assert sae.cfg.metadata["format"] == "gemmascope"
        assert sae.cfg.arch == "jumprelu" and not sae.cfg.apply_b_dec_to_input and sae.cfg.act_scale == 1.0
        facts = sae.cfg.metadata["gemmascope"]
        assert {k: facts[k] for k in ("site", "layer", "width", "l0", "hook_name")} == {
            "site": "resid_post", "layer": 12, "width": "16k", "l0": "medium", "hook_name": "blocks.12.hook_resid_post"}
        assert facts["config"] == GS2_CONFIG
        assert sae.cfg.hook_name == "blocks.12.hook_resid_post" and sae.cfg.model_name == "google/gemma-3-270m-pt"
        x = inputs()
        check(sae, x, *gs2_reference(x, w))


def test_gemmascope2_in_a_hugging_face_cache_reads_the_folder_not_the_blob(tmp_path):
    """hf_hub_download links snapshots/<rev>/<folder>/params.safetensors to blobs/<hash>."""
    repo = tmp_path / "models--google--gemma-scope-2-270m-pt"
    point = "model.layers.4.post_feedforward_layernorm.output"
    source = write_gs2(tmp_path / "src", config={**GS2_CONFIG, "hf_hook_point_in": point, "hf_hook_point_out": point})
    (repo / "blobs").mkdir(parents=True)
    folder = repo / "snapshots" / "abc123" / "mlp_out" / "layer_4_width_16k_l0_small"
    folder.mkdir(parents=True)
    for name, blob in (("params.safetensors", "b1"), ("config.json", "b2")):
        (repo / "blobs" / blob).write_bytes((source / name).read_bytes())
        (folder / name).symlink_to(repo / "blobs" / blob)
    facts = load_sae(folder / "params.safetensors").cfg.metadata["gemmascope"]
    assert (facts["site"], facts["layer"], facts["l0"], facts["hook_name"]) == ("mlp_out", 4, "small", "blocks.4.hook_mlp_out")


@pytest.mark.parametrize("site, hook", [("mlp_out", "blocks.3.hook_mlp_out"), ("attn_out_all", "blocks.3.attn.hook_z"),
                                        ("somewhere", None)])
def test_gemmascope2_without_config_takes_the_site_from_the_folder(tmp_path, site, hook):
    folder = write_gs2(tmp_path / site / "layer_3_width_262k_l0_big")
    facts = load_sae(folder).cfg.metadata["gemmascope"]
    assert facts.get("hook_name") == hook and facts["layer"] == 3 and facts["width"] == "262k" and facts["l0"] == "big"
    assert ("site" in facts) == (hook is not None)


def test_gemmascope2_renamed_folder_takes_the_site_from_its_config(tmp_path):
    config = {**GS2_CONFIG, "hf_hook_point_in": "model.layers.7.self_attn.o_proj.input",
              "hf_hook_point_out": "model.layers.7.self_attn.o_proj.input"}
    sae = load_sae(write_gs2(tmp_path / "my_sae", config=config))
    facts = sae.cfg.metadata["gemmascope"]
    assert (facts["site"], facts["layer"], facts["hook_name"]) == ("attn_out", 7, "blocks.7.attn.hook_z")
    assert facts["reshape_activations"] == "hook_z"


TRANSCODER_IN, TRANSCODER_OUT = "model.layers.5.pre_feedforward_layernorm.output", "model.layers.5.post_feedforward_layernorm.output"


def test_gemmascope2_skip_transcoder_loads_from_its_folder_and_tensor(tmp_path):
    """The transcoder folder gives both hook points; y = f·w_dec + b_dec + x·affine_skip_connection (float64)."""
    w = gs2_arrays()
    w["affine_skip_connection"] = (np.random.default_rng(5).standard_normal((D_IN, D_IN)) / D_IN).astype(np.float32)
    folder = write_gs2(tmp_path / "transcoder_all" / "layer_5_width_16k_l0_big_affine", w)
    sae = load_sae(folder)
    assert sae.is_transcoder and sae.cfg.skip and sae.cfg.d_out == D_IN
    assert (sae.cfg.hook_name, sae.cfg.hook_name_out) == ("blocks.5.ln2.hook_normalized", "blocks.5.hook_mlp_out")
    x = inputs()
    f, out = gs2_reference(x, w)
    y = out + f64(x) @ f64(w["affine_skip_connection"])
    np.testing.assert_allclose(sae.transcode(torch.from_numpy(x)).double().numpy(), y, rtol=1e-5, atol=1e-5 * np.abs(y).max())
    np.testing.assert_allclose(sae.decode(sae.encode(torch.from_numpy(x))).double().numpy(), out, rtol=1e-5,
                               atol=1e-5 * np.abs(out).max())


def test_gemmascope2_transcoder_told_by_its_config_takes_its_hook_points(tmp_path):
    config = {**GS2_CONFIG, "type": "transcoder", "hf_hook_point_in": TRANSCODER_IN, "hf_hook_point_out": TRANSCODER_OUT}
    sae = load_sae(write_gs2(tmp_path / "resid_post" / "layer_5_width_16k_l0_small", config=config))
    assert sae.is_transcoder and not sae.cfg.skip and sae.cfg.d_out == D_IN
    assert (sae.cfg.hook_name, sae.cfg.hook_name_out) == (TRANSCODER_IN, TRANSCODER_OUT)
    sae = load_sae(write_gs2(tmp_path / "renamed", config=config))  # no folder: the config's MLP pair
    assert (sae.cfg.hook_name, sae.cfg.hook_name_out) == ("blocks.5.ln2.hook_normalized", "blocks.5.hook_mlp_out")
    folder = write_gs2(tmp_path / "affine", config={**config, "affine_connection": True})
    with raises(folder / "params.safetensors", "missing tensor(s) affine_skip_connection"):
        load_sae(folder)


def test_gemmascope2_transcoder_told_by_its_shapes_and_cross_layer_ones_refused(tmp_path):
    w = gs2_arrays()
    w["w_dec"] = np.random.default_rng(2).standard_normal((D_SAE, D_IN + 8)).astype(np.float32)
    w["b_dec"] = np.zeros(D_IN + 8, np.float32)
    sae = load_sae(write_gs2(tmp_path / "x", w))
    assert sae.cfg.d_out == D_IN + 8 and sae.cfg.hook_name_out is None and not sae.cfg.skip
    x = inputs()
    y = gs2_reference(x, w)[1]
    np.testing.assert_allclose(sae(torch.from_numpy(x)).double().numpy(), y, rtol=1e-5, atol=1e-5 * np.abs(y).max())
    w["w_dec"] = np.zeros((D_SAE, 3, D_IN), np.float32)  # a cross-layer transcoder writes to several layers
    folder = write_gs2(tmp_path / "clt" / "width_262k_l0_big", w)
    with raises(folder / "params.safetensors", "cross-layer transcoder", "saebench does not evaluate"):
        load_sae(folder)


def test_gemmascope2_broken_files(tmp_path):
    folder = write_gs2(tmp_path / "a", drop=("threshold",))
    with raises(folder / "params.safetensors", "missing tensor(s) threshold"):
        load_sae(folder)
    folder = write_gs2(tmp_path / "b")
    data = (folder / "params.safetensors").read_bytes()
    (folder / "params.safetensors").write_bytes(data[: len(data) // 2])
    with raises(folder / "params.safetensors", "corrupt or truncated safetensors"):
        load_sae(folder)
    folder = write_gs2(tmp_path / "c", config={**GS2_CONFIG, "architecture": "topk"})
    with raises(folder / "config.json", "architecture 'topk' is not supported"):
        load_sae(folder)
    (folder / "config.json").write_text("{not json")
    with raises(folder / "config.json", "invalid JSON"):
        load_sae(folder)


# -- Llama Scope (lm_saes) -----------------------------------------------------------------------
def lm_saes_state_dict(seed=0):
    """SparseAutoEncoder.state_dict(): nn.Linear encoder [d_sae, d_model] and decoder [d_model, d_sae], with biases."""
    w = arrays(seed)
    return {"encoder.weight": w["W_enc"].T.copy(), "encoder.bias": w["b_enc"],
            "decoder.weight": (w["W_dec"] * column_scales()[:, None]).T.copy(), "decoder.bias": w["b_dec"]}


def hyperparams(**over):
    """hyperparams.json as lm_saes's save_hyperparameters dumps a Llama Scope SAEConfig."""
    hp = {"hook_point_in": "blocks.9.hook_resid_post", "hook_point_out": "blocks.9.hook_resid_post",
          "use_decoder_bias": True, "apply_decoder_bias_to_pre_encoder": False, "expansion_factor": D_SAE // D_IN,
          "d_model": D_IN, "d_sae": D_SAE, "bias_init_method": "all_zero", "act_fn": "jumprelu",
          "jump_relu_threshold": 0.5, "norm_activation": "dataset-wise",
          "dataset_average_activation_norm": {"in": 8.0, "out": 8.0}, "decoder_exactly_fixed_norm": False,
          "sparsity_include_decoder_norm": True, "use_glu_encoder": False, "init_decoder_norm": None,
          "init_encoder_norm": None, "init_encoder_with_decoder_transpose": True, "lp": 1, "l1_coefficient": 2e-4,
          "l1_coefficient_warmup_steps": 0.1, "top_k": K, "k_warmup_steps": 0.1, "use_batch_norm_mse": True,
          "use_ghost_grads": False, "tp_size": 1, "ddp_size": 1, "device": "cuda", "seed": 42,
          "dtype": "torch.float32"}
    hp.update(over)
    return hp


def write_llamascope(folder, sd=None, hp=None, drop=(), lm_config=True):
    """An lm_saes SAE folder: hyperparams.json, lm_config.json, checkpoints/final.safetensors."""
    sd = sd or lm_saes_state_dict()
    (folder / "checkpoints").mkdir(parents=True, exist_ok=True)
    (folder / "hyperparams.json").write_text(json.dumps(hp or hyperparams()))
    if lm_config:
        (folder / "lm_config.json").write_text(json.dumps({"model_name": "meta-llama/Llama-3.1-8B", "d_model": D_IN}))
    save_file({k: v for k, v in tensors(sd).items() if k not in drop}, str(folder / "checkpoints" / "final.safetensors"))
    return folder


def llamascope_reference(x, sd, hp):
    """What lm_saes computes, written from its training-time meaning.

    The SAE was trained on x_n = s_in·x (s = √d_model / dataset norm), pre-activations
    h_n = (x_n − pre-bias)·encoderᵀ + b_enc, and targets y_n = s_out·y. At inference lm_saes thresholds
    g = n·h_n / s_in (raw units, with the standardised decoder's column norms n folded in when the
    sparsity penalty included them) and reconstructs y_n / s_out.
    """
    norms = hp["dataset_average_activation_norm"]
    s_in, s_out = (np.sqrt(hp["d_model"]) / norms[k] if hp["norm_activation"] == "dataset-wise" else 1.0
                   for k in ("in", "out"))
    enc, b_enc, dec, b_dec = (f64(sd[k]) for k in ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias"))
    x_n = s_in * f64(x)
    if hp["apply_decoder_bias_to_pre_encoder"]:  # lm_saes subtracts the standardised bias b_dec / s_out from x
        x_n = x_n - s_in / s_out * b_dec
    h_n = x_n @ enc.T + b_enc
    n = np.linalg.norm(dec, axis=0) * s_in / s_out if hp["sparsity_include_decoder_norm"] else np.ones(D_SAE)
    g = n * h_n / s_in
    act, theta = hp["act_fn"], hp["jump_relu_threshold"]
    if act == "jumprelu" or (act == "topk" and theta > 0):
        f = g * (g > theta)
    elif act == "topk":
        f = relu_then_topk(g, hp["top_k"])
    else:
        f = np.maximum(g, 0.0)
    return f, ((f * s_in / n) @ dec.T + b_dec) / s_out


LLAMASCOPE_CASES = {
    "jumprelu": {},
    "negative threshold": {"jump_relu_threshold": -0.3},
    "topk run as jumprelu": {"act_fn": "topk", "jump_relu_threshold": 0.7},
    "topk": {"act_fn": "topk", "jump_relu_threshold": 0.0},
    "relu, pre-bias, no normalisation": {"act_fn": "relu", "norm_activation": "none",
                                         "apply_decoder_bias_to_pre_encoder": True, "jump_relu_threshold": 0.0},
    "pre-bias with dataset norm": {"apply_decoder_bias_to_pre_encoder": True},
    "other target norm": {"dataset_average_activation_norm": {"in": 8.0, "out": 5.0}},
    "decoder norm not in the penalty": {"sparsity_include_decoder_norm": False, "jump_relu_threshold": 0.3},
}


@pytest.mark.parametrize("case", LLAMASCOPE_CASES)
def test_llamascope_matches_its_formula(tmp_path, case):
    hp, sd = hyperparams(**LLAMASCOPE_CASES[case]), lm_saes_state_dict()
    folder = write_llamascope(tmp_path / "Llama3_1-8B-Base-L9R-8x", sd, hp)
    for path in (folder, folder / "checkpoints" / "final.safetensors"):
        sae = load_sae(path)
        assert sae.cfg.metadata["format"] == "llamascope" and sae.cfg.act_scale == 1.0
        assert sae.cfg.hook_name == "blocks.9.hook_resid_post" and sae.cfg.model_name == "meta-llama/Llama-3.1-8B"
        assert sae.cfg.apply_b_dec_to_input == hp["apply_decoder_bias_to_pre_encoder"]
        x = inputs()
        check(sae, x, *llamascope_reference(x, sd, hp))
    meta = sae.cfg.metadata["llamascope"]
    if hp["norm_activation"] == "dataset-wise":
        assert meta["input_norm_factor"] == pytest.approx(4 / 8)


@pytest.mark.parametrize("over, problem", [
    ({"hook_point_out": "blocks.9.hook_mlp_out"},
     "is a transcoder: reads blocks.9.hook_resid_post and writes blocks.9.hook_mlp_out; saebench does not evaluate"),
    ({"norm_activation": "token-wise"}, "norm_activation 'token-wise' rescales every input by its own norm"),
    ({"use_glu_encoder": True}, "GLU encoder"),
    ({"act_fn": "sigmoid"}, "act_fn 'sigmoid' is not supported"),
    ({"dataset_average_activation_norm": None}, "dataset-wise normalisation needs d_model"),
    ({"jump_relu_threshold": "high"}, "jump_relu_threshold 'high' is not a number"),
])
def test_llamascope_refuses_what_it_cannot_run(tmp_path, over, problem):
    folder = write_llamascope(tmp_path / "sae", hp=hyperparams(**over))
    with raises(folder / "hyperparams.json", problem):
        load_sae(folder)


def test_llamascope_defaults_and_broken_files(tmp_path):
    hp = {k: v for k, v in hyperparams().items() if k != "norm_activation"}  # lm_saes's default is token-wise
    folder = write_llamascope(tmp_path / "a", hp=hp)
    with raises(folder / "hyperparams.json", "'token-wise'"):
        load_sae(folder)
    folder = write_llamascope(tmp_path / "b", drop=("encoder.bias",))
    with raises(folder / "checkpoints" / "final.safetensors", "missing tensor(s) encoder.bias"):
        load_sae(folder)
    sd = lm_saes_state_dict()
    sd["decoder.bias"] = np.zeros(D_IN + 1, np.float32)
    folder = write_llamascope(tmp_path / "c", sd)
    with raises(folder / "checkpoints" / "final.safetensors", "tensor decoder.bias has shape [17], expected [16]"):
        load_sae(folder)
    weights = folder / "checkpoints" / "final.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])
    with raises(weights, "corrupt or truncated safetensors"):
        load_sae(folder)
    folder = write_llamascope(tmp_path / "d", lm_config=False)
    (folder / "hyperparams.json").write_text("[1, 2]")
    with raises(folder / "hyperparams.json", "expected a JSON object"):
        load_sae(folder)


# -- dictionary_learning -------------------------------------------------------------------------
def dl_state_dict(dict_class, tau=0.3, seed=0):
    """``ae.state_dict()`` of each dictionary_learning class, with decoder norms far from 1."""
    w = arrays(seed, negative_thresholds=True)
    dec = (w["W_dec"] * column_scales()[:, None]).T.copy()  # nn.Linear(dict_size, activation_dim).weight
    linear = {"encoder.weight": w["W_enc"].T.copy(), "encoder.bias": w["b_enc"], "decoder.weight": dec}
    plain = {"W_enc": w["W_enc"], "b_enc": w["b_enc"], "W_dec": dec.T.copy(), "b_dec": w["b_dec"]}
    sd = {
        "AutoEncoder": {**linear, "bias": w["b_dec"]},
        "AutoEncoderNew": {**linear, "decoder.bias": w["b_dec"]},
        "AutoEncoderTopK": {**linear, "b_dec": w["b_dec"], "threshold": np.float32(-1.0)},
        "BatchTopKSAE": {**linear, "b_dec": w["b_dec"], "threshold": np.float32(tau)},
        "MatryoshkaBatchTopKSAE": {**plain, "threshold": np.float32(tau)},
        "JumpReluAutoEncoder": {**plain, "threshold": w["threshold"]},
        "GatedAutoEncoder": {"encoder.weight": w["W_enc"].T.copy(), "decoder.weight": dec, "decoder_bias": w["b_dec"],
                             "r_mag": w["b_enc"] * 0.5, "gate_bias": w["b_enc"], "mag_bias": w["threshold"] - 0.1},
    }[dict_class]
    sd = {k: torch.as_tensor(np.ascontiguousarray(v)) for k, v in sd.items()}
    if dict_class in ("AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE"):
        sd["k"] = torch.tensor(K, dtype=torch.int)
    if dict_class == "MatryoshkaBatchTopKSAE":
        sd["group_sizes"] = torch.tensor([16, 48])
    return sd


def write_dl(folder, dict_class, sd=None, safetensors=False, **trainer):
    """trainSAE's save_dir/trainer_<i>: config.json {"trainer": trainer.config, "buffer": ...} and ae.pt."""
    folder.mkdir(parents=True, exist_ok=True)
    config = {"trainer": {"trainer_class": "Trainer", "dict_class": dict_class, "lr": 1e-4, "steps": 1000,
                          "activation_dim": D_IN, "dict_size": D_SAE, "device": "cuda", "layer": 3,
                          "lm_name": "EleutherAI/pythia-70m-deduped", "wandb_name": "run", "submodule_name": None,
                          **({"k": K} if "TopK" in dict_class else {}), **trainer},
              "buffer": {"d_submodule": D_IN, "io": "out", "n_ctxs": 30, "ctx_len": 128}}
    (folder / "config.json").write_text(json.dumps(config, indent=4))
    sd = sd if sd is not None else dl_state_dict(dict_class)
    if safetensors:
        save_file(sd, str(folder / "ae.safetensors"))
        return folder / "ae.safetensors"
    torch.save(sd, folder / "ae.pt")
    return folder / "ae.pt"


def dl_reference(x, sd, dict_class):
    """Each class's encode and decode, as utils.load_dictionary returns it."""
    t = {k: f64(v.numpy()) for k, v in sd.items()}
    x = f64(x)
    if dict_class == "JumpReluAutoEncoder":  # no pre-bias; ReLU(pre_jump · 1[pre_jump > threshold])
        h = x @ t["W_enc"] + t["b_enc"]
        f = np.maximum(h * (h > t["threshold"]), 0.0)
        return f, f @ t["W_dec"] + t["b_dec"]
    if dict_class == "GatedAutoEncoder":  # the gate decides which latents fire, the magnitude path their value
        h = (x - t["decoder_bias"]) @ t["encoder.weight"].T
        f = (h + t["gate_bias"] > 0) * np.maximum(np.exp(t["r_mag"]) * h + t["mag_bias"], 0.0)
        return f, f @ t["decoder.weight"].T + t["decoder_bias"]
    if dict_class == "MatryoshkaBatchTopKSAE":  # encode(use_threshold=True), the inference default
        post = np.maximum((x - t["b_dec"]) @ t["W_enc"] + t["b_enc"], 0.0)
        f = post * (post > t["threshold"])
        return f, f @ t["W_dec"] + t["b_dec"]
    pre_bias = {"AutoEncoder": t.get("bias"), "AutoEncoderNew": 0.0}.get(dict_class, t.get("b_dec"))
    h = (x - pre_bias) @ t["encoder.weight"].T + t["encoder.bias"]
    out_bias = {"AutoEncoder": t.get("bias"), "AutoEncoderNew": t.get("decoder.bias")}.get(dict_class, t.get("b_dec"))
    if dict_class == "AutoEncoderTopK":
        f = relu_then_topk(h, int(t["k"]))
    elif dict_class == "BatchTopKSAE":  # encode(use_threshold=True), the inference default
        post = np.maximum(h, 0.0)
        f = post * (post > t["threshold"])
    else:
        f = np.maximum(h, 0.0)
    x_hat = f @ t["decoder.weight"].T + out_bias
    if dict_class == "AutoEncoder":  # from_pretrained(normalize_decoder=True): latents times the decoder norms
        f = f * np.linalg.norm(t["decoder.weight"], axis=0)
    return f, x_hat


CLASSES = ["AutoEncoder", "AutoEncoderNew", "AutoEncoderTopK", "BatchTopKSAE", "MatryoshkaBatchTopKSAE",
           "JumpReluAutoEncoder", "GatedAutoEncoder"]


@pytest.mark.parametrize("dict_class", CLASSES)
def test_dictionary_learning_matches_its_formula(tmp_path, dict_class):
    sd = dl_state_dict(dict_class)
    pt = write_dl(tmp_path / "trainer_0", dict_class, sd)
    for path in (pt.parent, pt):
        sae = load_sae(path, allow_pickle=True)
        assert sae.cfg.metadata["format"] == "dictionary_learning"
        assert sae.cfg.model_name == "EleutherAI/pythia-70m-deduped" and sae.cfg.hook_name == "blocks.3.hook_resid_post"
        assert sae.cfg.metadata["dictionary_learning"]["dict_class"] == dict_class
        x = inputs()
        check(sae, x, *dl_reference(x, sd, dict_class))
    st = write_dl(tmp_path / "st", dict_class, sd, safetensors=True)
    sae = load_sae(st.parent)  # no pickle, no permission needed
    check(sae, x, *dl_reference(x, sd, dict_class))


def test_dictionary_learning_batch_topk_without_a_threshold_is_a_relu_sae(tmp_path):
    sd = dl_state_dict("BatchTopKSAE", tau=-1.0)
    sae = load_sae(write_dl(tmp_path / "t", "BatchTopKSAE", sd, safetensors=True))
    assert "threshold_unset" in sae.cfg.metadata["dictionary_learning"]
    x = inputs()
    f, x_hat = dl_reference(x, sd, "BatchTopKSAE")
    np.testing.assert_allclose(sae.encode(torch.from_numpy(x)).double().numpy(), f, rtol=1e-5, atol=1e-5)
    assert (f > 0).mean() > 0.3  # every positive pre-activation: dense, as the tool computes it


def test_dictionary_learning_pickle_needs_allow_pickle(tmp_path):
    pt = write_dl(tmp_path / "trainer_0", "AutoEncoderTopK")
    with raises(pt, "pickle", "allow_pickle=True", "allow_pickle: true"):
        load_sae(pt.parent)
    assert load_sae(pt.parent, allow_pickle=True).cfg.k == K
    pt.write_bytes(b"not a pickle")
    with raises(pt, "unreadable pickle"):
        load_sae(pt.parent, allow_pickle=True)


def test_dictionary_learning_refusals(tmp_path):
    pt = write_dl(tmp_path / "other", "CrossCoder", sd={"x": torch.zeros(3)})
    with raises(pt.parent / "config.json", "trainer.dict_class 'CrossCoder' is not supported"):
        load_sae(pt.parent, allow_pickle=True)
    pt = write_dl(tmp_path / "k", "AutoEncoderTopK", k=K + 1)
    with raises(pt.parent / "config.json", f"trainer.k is {K + 1} but ae.pt has k={K}"):
        load_sae(pt.parent, allow_pickle=True)
    backup = {"step": 500, "ae": dl_state_dict("AutoEncoderTopK"), "optimizer": {"state": {}}, "norm_factor": 2.0}
    pt = write_dl(tmp_path / "backup", "AutoEncoderTopK", sd=backup)
    with raises(pt, "training backup (step 500)"):
        load_sae(pt.parent, allow_pickle=True)
    sd = dl_state_dict("JumpReluAutoEncoder")
    del sd["threshold"]
    st = write_dl(tmp_path / "missing", "JumpReluAutoEncoder", sd, safetensors=True)
    with raises(st, "missing tensor(s) threshold"):
        load_sae(st.parent)
    (st.parent / "config.json").write_text(json.dumps({"buffer": {}}))
    assert not loader("dictionary_learning").detect(st.parent)
    with raises(st.parent / "config.json", '"trainer" object'):
        load_sae(st.parent, format="dictionary_learning")


def test_dictionary_learning_save_dir_asks_to_pick_a_trainer(tmp_path):
    for i in (0, 1, 10, 2):
        write_dl(tmp_path / "run" / f"trainer_{i}", "AutoEncoderTopK")
    with raises(tmp_path / "run", "holds 4 dictionary_learning dictionaries (trainer_0, trainer_1, trainer_2, trainer_10)"):
        load_sae(tmp_path / "run")


# -- detection: each format is claimed by its own loader only ------------------------------------
def test_each_folder_is_claimed_by_its_own_loader_only(tmp_path):
    paths = {key: (path, "openai" if key == "openai_st" else key) for key, path in _all_formats(tmp_path).items()}
    gs2 = write_gs2(tmp_path / "gs2" / "resid_post" / "layer_1_width_16k_l0_small", config=GS2_CONFIG)
    renamed = tmp_path / "gs2_file" / "layer_1.safetensors"
    renamed.parent.mkdir()
    renamed.write_bytes((gs2 / "params.safetensors").read_bytes())
    ls = write_llamascope(tmp_path / "llamascope")
    dl_pt = write_dl(tmp_path / "dl" / "trainer_0", "AutoEncoderTopK")
    dl_st = write_dl(tmp_path / "dl_st" / "trainer_0", "BatchTopKSAE", safetensors=True)
    paths.update({
        "gs2 folder": (gs2, "gemmascope"), "gs2 weights": (gs2 / "params.safetensors", "gemmascope"),
        "gs2 renamed": (renamed, "gemmascope"), "llamascope": (ls, "llamascope"),
        "llamascope weights": (ls / "checkpoints" / "final.safetensors", "llamascope"),
        "dl folder": (dl_pt.parent, "dictionary_learning"), "dl ae.pt": (dl_pt, "dictionary_learning"),
        "dl safetensors": (dl_st.parent, "dictionary_learning"), "dl save_dir": (dl_pt.parent.parent, "dictionary_learning"),
    })
    names = plugin_manager.get_registry().names("loader")
    assert set(NEW) <= set(names)
    for key, (path, expected) in paths.items():
        detected = {n for n in names if loader(n).detect(path)}
        assert detected == {expected}, (key, detected)
        if key != "dl save_dir":
            assert load_sae(path, allow_pickle=True).cfg.metadata["format"] == expected, key


def test_new_detectors_never_raise(tmp_path):
    (tmp_path / "empty").mkdir()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage")
    bad_config = tmp_path / "bad"
    bad_config.mkdir()
    (bad_config / "config.json").write_bytes(b"\xff\xfe{{{")
    (bad_config / "ae.pt").write_bytes(b"x")
    (bad_config / "hyperparams.json").write_text("{")
    for name in NEW:
        for p in (tmp_path / "missing", tmp_path / "empty", junk, bad_config, bad_config / "ae.pt"):
            assert loader(name).detect(p) is False, (name, p)
    with pytest.raises(CheckpointError, match="not a checkpoint in any known format"):
        load_sae(bad_config)
