"""The checkpoint loaders: each peer's layout written the way the tool writes it, read back, and
checked against a float64 computation of that tool's own formula, plus every way a file can be wrong."""

from __future__ import annotations

import contextlib
import json

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

import saebench
from saebench import CheckpointError, load_sae, plugin_manager, save_sae

D_IN, D_SAE, K = 16, 64, 8


# -- random weights and the tools' own formulas, in float64 ---------------------------------------
def arrays(seed: int = 0, negative_thresholds: bool = False) -> dict[str, np.ndarray]:
    """SAELens-named float32 weights where a fair share of latents fire, and many do not."""
    g = np.random.default_rng(seed)
    w = {
        "W_enc": g.standard_normal((D_IN, D_SAE)) / D_IN**0.5,
        "W_dec": g.standard_normal((D_SAE, D_IN)) / D_SAE**0.5,
        "b_enc": g.standard_normal(D_SAE) * 0.1 - 0.2,
        "b_dec": g.standard_normal(D_IN) * 0.1,
        "threshold": g.random(D_SAE) * 0.8 - (0.3 if negative_thresholds else 0.0),
    }
    return {k: v.astype(np.float32) for k, v in w.items()}


def inputs(seed: int = 1) -> np.ndarray:
    return (np.random.default_rng(seed).standard_normal((50, D_IN)) * 2).astype(np.float32)


def f64(a) -> np.ndarray:
    return np.asarray(a, dtype=np.float64)


def topk_then_relu(h: np.ndarray, k: int) -> np.ndarray:
    f = np.zeros_like(h)
    idx = np.argsort(-h, axis=-1, kind="stable")[:, :k]
    np.put_along_axis(f, idx, np.maximum(np.take_along_axis(h, idx, axis=-1), 0.0), axis=-1)
    return f


def relu_then_topk(h: np.ndarray, k: int) -> np.ndarray:  # sparsify's and OpenAI's order
    z = np.maximum(h, 0.0)
    f = np.zeros_like(z)
    idx = np.argsort(-z, axis=-1, kind="stable")[:, :k]
    np.put_along_axis(f, idx, np.take_along_axis(z, idx, axis=-1), axis=-1)
    return f


def saelens_reference(x, w, arch, k=None, apply_b_dec=True):
    """SAELens: h = (x − b_dec·apply)·W_enc + b_enc; then ReLU(h), TopK then ReLU, or ReLU(h)·1[h>θ]."""
    h = (f64(x) - f64(w["b_dec"]) * apply_b_dec) @ f64(w["W_enc"]) + f64(w["b_enc"])
    if arch == "standard":
        f = np.maximum(h, 0.0)
    elif arch == "topk":
        f = topk_then_relu(h, k)
    else:
        f = np.maximum(h, 0.0) * (h > f64(w["threshold"]))
    return f, f @ f64(w["W_dec"]) + f64(w["b_dec"])


def check_sae(sae: saebench.SAE, x: np.ndarray, f_ref: np.ndarray, x_hat_ref: np.ndarray) -> None:
    assert 0.02 < (f_ref != 0).mean() < 0.7, "vacuous test: (almost) nothing or everything fires"
    xt = torch.from_numpy(x)
    f = sae.encode(xt)
    np.testing.assert_allclose(f.double().numpy(), f_ref, atol=2e-5)
    np.testing.assert_allclose(sae.decode(f).double().numpy(), x_hat_ref, atol=5e-5)
    np.testing.assert_allclose(sae(xt).double().numpy(), x_hat_ref, atol=5e-5)


def tensors(d: dict[str, np.ndarray]) -> dict[str, torch.Tensor]:
    return {k: torch.from_numpy(np.ascontiguousarray(v)) for k, v in d.items()}


# -- writers: each layout as its tool lays it out ------------------------------------------------
def write_saelens(folder, arch="standard", style="6", w=None, extra_cfg=None, drop=(), **over):
    """A SAELens folder. style "6": SAELens 6's save_model; "5": 3.x-5.x; "old": hook_point, no architecture."""
    w = dict(w or arrays())
    if arch != "jumprelu":
        w.pop("threshold")
    folder.mkdir(parents=True, exist_ok=True)
    if style == "6":
        cfg = {
            "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu", "apply_b_dec_to_input": True,
            "normalize_activations": "none", "reshape_activations": "none",
            "metadata": {"sae_lens_version": "6.5.0", "sae_lens_training_version": "6.5.0",
                         "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post", "context_size": 128},
            "architecture": arch,
        }
        if arch == "topk":
            cfg.update(k=K, rescale_acts_by_decoder_norm=False)
    else:
        cfg = {
            "model_name": "gpt2", "model_class_name": "HookedTransformer", "hook_layer": 3, "hook_head_index": None,
            "d_in": D_IN, "d_sae": D_SAE, "activation_fn_str": "topk" if arch == "topk" else "relu",
            "activation_fn_kwargs": {"k": K} if arch == "topk" else {}, "apply_b_dec_to_input": True,
            "finetuning_scaling_factor": False, "context_size": 128, "dataset_path": "Skylion007/openwebtext",
            "prepend_bos": True, "dtype": "torch.float32", "device": "cpu", "sae_lens_training_version": "4.1.0",
            "normalize_activations": "none",
        }
        if style == "5":
            cfg.update(architecture="standard" if arch == "topk" else arch, hook_name="blocks.3.hook_resid_post")
        else:
            cfg.update(hook_point="blocks.3.hook_resid_post", normalize_activations=False)
    cfg.update(extra_cfg or {})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sd = {k: v for k, v in tensors(w).items() if k not in drop}
    sd.update(over)
    save_file(sd, str(folder / "sae_weights.safetensors"))
    return folder


def sparsify_tensors(w):
    return {"encoder.weight": w["W_enc"].T, "encoder.bias": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}


def write_sparsify(folder, w=None, extra_cfg=None, drop=(), **over):
    """SparseCoder.save_to_disk: safetensors of the module's state dict, cfg.json = SparseCoderConfig + d_in."""
    w = w or arrays()
    folder.mkdir(parents=True, exist_ok=True)
    cfg = {"activation": "topk", "expansion_factor": 4, "normalize_decoder": True, "num_latents": 0, "k": K,
           "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": D_IN}
    cfg.update(extra_cfg or {})
    (folder / "cfg.json").write_text(json.dumps(cfg))
    sd = {k: v for k, v in tensors(sparsify_tensors(w)).items() if k not in drop}
    sd.update(over)
    save_file(sd, str(folder / "sae.safetensors"))
    return folder


def write_gemmascope(folder, w=None, drop=(), **over):
    w = dict(w or arrays())
    folder.mkdir(parents=True, exist_ok=True)
    data = {k: v for k, v in w.items() if k not in drop}
    data.update(over)
    np.savez(folder / "params.npz", **data)
    return folder / "params.npz"


def openai_state_dict(w, activation="ReLU", k=K):
    """Autoencoder.state_dict(): parameters, statistics buffers, activation name and its state."""
    sd = {
        "pre_bias": w["b_dec"], "latent_bias": w["b_enc"],
        "encoder.weight": w["W_enc"].T, "decoder.weight": w["W_dec"].T,
    }
    sd = tensors(sd)
    sd["stats_last_nonzero"] = torch.zeros(D_SAE, dtype=torch.long)
    sd["latents_activation_frequency"] = torch.ones(D_SAE)
    sd["latents_mean_square"] = torch.zeros(D_SAE)
    sd["activation"] = activation
    sd["activation_state_dict"] = {"k": k, "postact_fn": "ReLU"} if activation == "TopK" else {}
    return sd


def openai_reference(x, w, activation, k=K):
    h = (f64(x) - f64(w["b_dec"])) @ f64(w["W_enc"].T).T + f64(w["b_enc"])  # encoder(x - pre_bias) + latent_bias
    f = relu_then_topk(h, k) if activation == "TopK" else np.maximum(h, 0.0)
    return f, f @ f64(w["W_dec"].T).T + f64(w["b_dec"])  # decoder(f) + pre_bias


def loader(name):
    return plugin_manager.get("loader", name)()


@contextlib.contextmanager
def raises(file, *problem):
    """Expect a one-line CheckpointError whose message names ``file`` and contains each of ``problem``."""
    with pytest.raises(CheckpointError) as info:
        yield info
    msg = str(info.value)
    assert str(file) in msg and "\n" not in msg, msg
    for p in problem:
        assert p in msg, msg


# -- detection -----------------------------------------------------------------------------------
def _all_formats(tmp_path):
    w = arrays()
    pt = tmp_path / "openai" / "3.pt"
    pt.parent.mkdir()
    torch.save(openai_state_dict(w), pt)
    st = tmp_path / "openai_st" / "ae.safetensors"
    st.parent.mkdir()
    save_file({k: v for k, v in openai_state_dict(w).items() if isinstance(v, torch.Tensor)}, str(st))
    native = save_sae(saebench.build_sae("relu", tensors(w)), tmp_path / "native")
    return {
        "saelens": write_saelens(tmp_path / "saelens"),
        "sparsify": write_sparsify(tmp_path / "sparsify" / "layers.3"),
        "gemmascope": write_gemmascope(tmp_path / "gemmascope"),
        "openai": pt,
        "openai_st": st,
        "native": native,
    }


def test_auto_detection_picks_the_right_loader(tmp_path):
    paths = _all_formats(tmp_path)
    expect = {"saelens": "saelens", "sparsify": "sparsify", "gemmascope": "gemmascope",
              "openai": "openai", "openai_st": "openai", "native": "native"}
    names = plugin_manager.get_registry().names("loader")
    for key, path in paths.items():
        detected = {n for n in names if loader(n).detect(path)}
        if key == "native":
            assert detected == {"native"}, "a native folder must not be taken for a SAELens one"
        else:
            assert detected == {expect[key]}, (key, detected)
        sae = load_sae(path, allow_pickle=True)
        assert sae.cfg.metadata["format"] == expect[key]
    # a folder holding params.npz, and the parent of sparsify hook points, are detected too
    assert loader("gemmascope").detect(tmp_path / "gemmascope")
    assert loader("sparsify").detect(tmp_path / "sparsify")
    # the weights file inside a SAELens or sparsify folder stands for the folder
    assert load_sae(paths["saelens"] / "sae_weights.safetensors").cfg.metadata["format"] == "saelens"
    assert load_sae(paths["sparsify"] / "sae.safetensors").cfg.metadata["format"] == "sparsify"


def test_detect_never_raises_and_rejects_strangers(tmp_path):
    (tmp_path / "empty").mkdir()
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00\x01garbage")
    junk_pt = tmp_path / "junk.pt"
    junk_pt.write_bytes(b"not a pickle")
    other = tmp_path / "other.npz"
    np.savez(other, a=np.zeros(3))
    for name in ("saelens", "sparsify", "gemmascope", "openai"):
        for p in (tmp_path / "missing", tmp_path / "empty", junk, junk_pt, other):
            assert loader(name).detect(p) is False, (name, p)
    with raises(tmp_path / "empty", "not a checkpoint in any known format"):
        load_sae(tmp_path / "empty")


# -- SAELens -------------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "arch,style",
    [(a, s) for s in ("6", "5", "old") for a in ("standard", "topk", "jumprelu") if (a, s) != ("jumprelu", "old")],
)
def test_saelens_matches_its_formula(tmp_path, arch, style):
    w = arrays(negative_thresholds=True)  # θ < 0: SAELens's ReLU(h)·1[h>θ] must still be what we compute
    folder = write_saelens(tmp_path / "sae", arch, style, w)
    sae = load_sae(folder)
    assert sae.cfg.arch == {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu"}[arch]
    assert sae.cfg.apply_b_dec_to_input and sae.cfg.dtype == "float32"
    assert sae.cfg.k == (K if arch == "topk" else None)
    assert sae.cfg.model_name == "gpt2" and sae.cfg.hook_name == "blocks.3.hook_resid_post"
    assert sae.cfg.metadata["saelens"]["context_size"] == 128
    x = inputs()
    check_sae(sae, x, *saelens_reference(x, w, arch, K))


def test_saelens_log_threshold_and_no_b_dec_on_input(tmp_path):
    w = arrays()
    folder = write_saelens(
        tmp_path / "sae", "jumprelu", w=w, drop=("threshold",), extra_cfg={"apply_b_dec_to_input": False},
        log_threshold=torch.from_numpy(np.log(w["threshold"])),
    )
    sae = load_sae(folder)
    assert not sae.cfg.apply_b_dec_to_input
    assert sae.cfg.metadata["saelens"]["threshold_from"] == "log_threshold"
    x = inputs()
    check_sae(sae, x, *saelens_reference(x, w, "jumprelu", apply_b_dec=False))


def test_saelens_topk_rescaled_by_decoder_norm_is_folded(tmp_path):
    w = arrays()
    w["W_dec"] *= np.random.default_rng(5).uniform(0.5, 2.0, size=(D_SAE, 1)).astype(np.float32)
    folder = write_saelens(tmp_path / "sae", "topk", w=w, extra_cfg={"rescale_acts_by_decoder_norm": True})
    x = inputs()
    n = np.linalg.norm(f64(w["W_dec"]), axis=-1)
    h = (f64(x) - f64(w["b_dec"])) @ f64(w["W_enc"]) + f64(w["b_enc"])
    f = topk_then_relu(h * n, K)  # SAELens: rank h·‖W_dec,i‖, decode (f/‖W_dec,i‖)·W_dec + b_dec
    check_sae(load_sae(folder), x, f, (f / n) @ f64(w["W_dec"]) + f64(w["b_dec"]))


def test_saelens_old_scaling_factor_is_folded_into_the_decoder(tmp_path):
    w = arrays()
    s = np.random.default_rng(6).uniform(0.5, 1.5, D_SAE).astype(np.float32)
    folder = write_saelens(tmp_path / "sae", style="5", w=w, scaling_factor=torch.from_numpy(s),
                           extra_cfg={"finetuning_scaling_factor": True})
    x = inputs()
    f, _ = saelens_reference(x, w, "standard")
    check_sae(load_sae(folder), x, f, (f * s) @ f64(w["W_dec"]) + f64(w["b_dec"]))


@pytest.mark.parametrize(
    "extra,problem",
    [
        ({"architecture": "temporal"}, "architecture 'temporal' is not supported"),
        ({"architecture": "transcoder"}, "architecture 'transcoder' is not supported"),
        ({"normalize_activations": "layer_norm"}, "normalize_activations 'layer_norm'"),
        ({"normalize_activations": "expected_average_only_in"}, "normalize_activations 'expected_average_only_in'"),
        ({"normalize_activations": True}, "normalize_activations 'expected_average_only_in'"),
        ({"activation_fn_str": "tanh-relu"}, "activation function 'tanh-relu'"),
    ],
)
def test_saelens_refuses_what_it_cannot_run(tmp_path, extra, problem):
    folder = write_saelens(tmp_path / "sae", style="5", extra_cfg=extra)
    with raises(folder / "cfg.json", problem):
        load_sae(folder)


def test_saelens_topk_without_k_names_the_config(tmp_path):
    folder = write_saelens(tmp_path / "sae", "topk")
    cfg = json.loads((folder / "cfg.json").read_text())
    del cfg["k"]
    (folder / "cfg.json").write_text(json.dumps(cfg))
    with raises(folder / "cfg.json", "needs k"):
        load_sae(folder)


# -- sparsify ------------------------------------------------------------------------------------
def test_sparsify_matches_its_formula(tmp_path):
    w = arrays()
    folder = write_sparsify(tmp_path / "run" / "layers.3.mlp", w)
    sae = load_sae(folder)
    assert sae.cfg.arch == "topk" and sae.cfg.k == K and sae.cfg.apply_b_dec_to_input
    assert sae.cfg.hook_name == "layers.3.mlp" and sae.cfg.metadata["sparsify"]["expansion_factor"] == 4
    x = inputs()
    s = sparsify_tensors(w)
    f = relu_then_topk((f64(x) - f64(s["b_dec"])) @ f64(s["encoder.weight"]).T + f64(s["encoder.bias"]), K)
    check_sae(sae, x, f, f @ f64(s["W_dec"]) + f64(s["b_dec"]))


def test_sparsify_parent_of_hook_points_asks_to_pick_one(tmp_path):
    for hook in ("layers.10", "layers.2", "layers.1"):
        write_sparsify(tmp_path / "run" / hook)
    with raises(tmp_path / "run", "3 hook points (layers.1, layers.2, layers.10)", "subfolder"):
        load_sae(tmp_path / "run")
    assert load_sae(tmp_path / "run" / "layers.2").cfg.hook_name == "layers.2"


@pytest.mark.parametrize(
    "extra,problem",
    [
        ({"transcode": True}, "transcoder"),
        ({"skip_connection": True}, "skip connection"),
        ({"activation": "groupmax"}, "activation 'groupmax'"),
    ],
)
def test_sparsify_refuses_other_coders(tmp_path, extra, problem):
    folder = write_sparsify(tmp_path / "layers.0", extra_cfg=extra)
    with raises(folder / "cfg.json", problem):
        load_sae(folder)


def test_sparsify_refuses_a_skip_weight(tmp_path):
    folder = write_sparsify(tmp_path / "layers.0", W_skip=torch.zeros(D_IN, D_IN))
    with raises(folder / "sae.safetensors", "skip connection"):
        load_sae(folder)


# -- Gemma Scope ---------------------------------------------------------------------------------
def test_gemmascope_matches_its_formula(tmp_path):
    w = arrays(negative_thresholds=True)
    npz = write_gemmascope(tmp_path / "gemma-scope-2b-pt-res" / "layer_12" / "width_16k" / "average_l0_82", w)
    for path in (npz, npz.parent):
        sae = load_sae(path)
        assert sae.cfg.arch == "jumprelu" and not sae.cfg.apply_b_dec_to_input
        assert sae.cfg.metadata["gemmascope"] == {"layer": 12, "width": "16k", "average_l0": 82}
        x = inputs()
        pre = f64(x) @ f64(w["W_enc"]) + f64(w["b_enc"])
        f = (pre > f64(w["threshold"])) * np.maximum(pre, 0.0)  # Gemma Scope: mask · ReLU(pre)
        check_sae(sae, x, f, f @ f64(w["W_dec"]) + f64(w["b_dec"]))


def test_gemmascope_corrupt_npz(tmp_path):
    npz = write_gemmascope(tmp_path / "a")
    data = npz.read_bytes()
    npz.write_bytes(data[: len(data) // 2])
    with raises(npz, "corrupt or truncated npz"):
        load_sae(npz.parent)
    garbage = tmp_path / "b" / "params.npz"
    garbage.parent.mkdir()
    garbage.write_bytes(b"PK\x03\x04 this is not a zip archive at all")
    with raises(garbage, "corrupt or truncated npz"):
        load_sae(garbage)


# -- OpenAI --------------------------------------------------------------------------------------
def test_openai_pickle_needs_allow_pickle(tmp_path):
    w = arrays()
    pt = tmp_path / "3.pt"
    torch.save(openai_state_dict(w), pt)
    with raises(pt, "pickle", "allow_pickle"):
        load_sae(pt)
    sae = load_sae(pt, allow_pickle=True)  # read with torch.load(weights_only=True)
    assert sae.cfg.arch == "relu" and sae.cfg.apply_b_dec_to_input
    assert sae.cfg.metadata["openai"] == {"activation": "ReLU", "activation_assumed": False}
    x = inputs()
    check_sae(sae, x, *openai_reference(x, w, "ReLU"))


def test_openai_topk_pickle_is_refused_for_its_layer_norm_unless_a_sidecar_says_otherwise(tmp_path):
    w = arrays()
    pt = tmp_path / "3.pt"
    torch.save(openai_state_dict(w, "TopK"), pt)
    with raises(pt, "LayerNorm", '"normalize": false'):
        load_sae(pt, allow_pickle=True)
    sidecar = {"normalize": False, "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post"}
    (tmp_path / "3.json").write_text(json.dumps(sidecar))
    sae = load_sae(pt, allow_pickle=True)
    assert sae.cfg.arch == "topk" and sae.cfg.k == K
    assert sae.cfg.model_name == "gpt2" and sae.cfg.hook_name == "blocks.3.hook_resid_post"
    x = inputs()
    check_sae(sae, x, *openai_reference(x, w, "TopK"))


def test_openai_safetensors_with_and_without_sidecar(tmp_path):
    w = arrays()
    st = tmp_path / "ae.safetensors"
    save_file({k: v for k, v in openai_state_dict(w).items() if isinstance(v, torch.Tensor)}, str(st))
    sae = load_sae(st)
    assert sae.cfg.arch == "relu" and sae.cfg.metadata["openai"]["activation_assumed"] is True
    x = inputs()
    check_sae(sae, x, *openai_reference(x, w, "ReLU"))

    (tmp_path / "cfg.json").write_text(json.dumps({"activation": "TopK", "k": K, "normalize": False}))
    sae = load_sae(st)
    assert sae.cfg.arch == "topk" and sae.cfg.k == K
    assert sae.cfg.metadata["openai"]["sidecar"] == str(tmp_path / "cfg.json")
    check_sae(sae, x, *openai_reference(x, w, "TopK"))

    (tmp_path / "cfg.json").write_text(json.dumps({"activation": "Identity"}))
    with raises(tmp_path / "cfg.json", "activation 'Identity' is not supported"):
        load_sae(st)
    (tmp_path / "cfg.json").write_text("{not json")
    with raises(tmp_path / "cfg.json", "invalid JSON"):
        load_sae(st)


# -- what goes wrong, format by format -----------------------------------------------------------
def _layout(tmp_path, fmt, **kw):
    """(path to load, file the weights are in) for one format, with keyword tweaks to its tensors."""
    if fmt == "saelens":
        folder = write_saelens(tmp_path / "sae", "jumprelu", **kw)
        return folder, folder / "sae_weights.safetensors"
    if fmt == "sparsify":
        folder = write_sparsify(tmp_path / "layers.0", **kw)
        return folder, folder / "sae.safetensors"
    if fmt == "gemmascope":
        npz = write_gemmascope(tmp_path / "gs", **kw)
        return npz, npz
    drop, over = kw.get("drop", ()), {k: v for k, v in kw.items() if k != "drop"}
    sd = {k: v for k, v in openai_state_dict(arrays()).items() if isinstance(v, torch.Tensor) and k not in drop}
    sd.update({k: torch.as_tensor(v) for k, v in over.items()})
    st = tmp_path / "ae.safetensors"
    save_file(sd, str(st))
    return st, st


MISSING = {"saelens": "threshold", "sparsify": "encoder.bias", "gemmascope": "b_dec", "openai": "pre_bias"}
WRONG_SHAPE = {  # (tensor to replace, bad value, words the message must hold)
    "saelens": ("W_enc", np.zeros((D_IN, D_SAE + 1), np.float32), ("W_enc", "[16, 65]")),
    "sparsify": ("encoder.bias", np.zeros(D_SAE - 1, np.float32), ("b_enc", "encoder.bias", "[63]")),
    "gemmascope": ("threshold", np.zeros(3, np.float32), ("threshold", "[3]")),
    "openai": ("decoder.weight", np.zeros((D_SAE, D_IN), np.float32), ("W_dec", "decoder.weight", "[16, 64]")),
}
NAN = {"saelens": "b_dec", "sparsify": "W_dec", "gemmascope": "W_enc", "openai": "latent_bias"}
FORMATS = ["saelens", "sparsify", "gemmascope", "openai"]


def _as_override(fmt, value):
    return value if fmt == "gemmascope" else torch.from_numpy(value)


@pytest.mark.parametrize("fmt", FORMATS)
def test_missing_tensor(tmp_path, fmt):
    path, file = _layout(tmp_path, fmt, drop=(MISSING[fmt],))
    with raises(file, "missing tensor", MISSING[fmt]):
        load_sae(path, format=fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_wrong_shape(tmp_path, fmt):
    name, value, words = WRONG_SHAPE[fmt]
    path, file = _layout(tmp_path, fmt, **{name: _as_override(fmt, value)})
    with raises(file, "shape", *words):
        load_sae(path, format=fmt)


@pytest.mark.parametrize("fmt", FORMATS)
def test_nan_weight(tmp_path, fmt):
    name, w = NAN[fmt], arrays()
    raw = {"sparsify": sparsify_tensors(w), "openai": {k: np.asarray(v) for k, v in openai_state_dict(w).items()}}
    bad = np.array(raw.get(fmt, w)[name], dtype=np.float32, copy=True)
    bad.flat[3] = np.nan
    path, file = _layout(tmp_path, fmt, **{name: _as_override(fmt, bad)})
    with raises(file, "NaN/Inf"):
        load_sae(path, format=fmt)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify", "openai"])
def test_truncated_safetensors(tmp_path, fmt):
    path, file = _layout(tmp_path, fmt)
    data = file.read_bytes()
    file.write_bytes(data[: len(data) // 2])
    with raises(file, "corrupt or truncated safetensors"):
        load_sae(path, format=fmt)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_invalid_cfg_json(tmp_path, fmt):
    path, _ = _layout(tmp_path, fmt)
    (path / "cfg.json").write_text('{"d_in": 16,')
    with raises(path / "cfg.json", "invalid JSON"):
        load_sae(path)
    (path / "cfg.json").write_text("[1, 2]")
    with raises(path / "cfg.json", "expected a JSON object"):
        load_sae(path, format=fmt)


@pytest.mark.parametrize("fmt", ["saelens", "sparsify"])
def test_bad_config_value_is_a_checkpoint_error(tmp_path, fmt):
    path, _ = _layout(tmp_path, fmt)
    cfg = json.loads((path / "cfg.json").read_text())
    cfg["d_in"] = "sixteen"
    (path / "cfg.json").write_text(json.dumps(cfg))
    with raises(path / "cfg.json", "d_in"):
        load_sae(path, format=fmt)


def test_forced_format_on_the_wrong_layout(tmp_path):
    folder = write_saelens(tmp_path / "sae")
    with raises(folder / "sae.safetensors", "missing weights file"):
        load_sae(folder, format="sparsify")
    with raises(folder / "params.npz", "missing weights file"):
        load_sae(folder, format="gemmascope")
    with raises(folder, "expected an OpenAI"):
        load_sae(folder, format="openai")


def test_pickle_that_is_not_a_state_dict(tmp_path):
    pt = tmp_path / "x.pt"
    torch.save([torch.zeros(3)], pt)
    with raises(pt, "expected a state dict"):
        load_sae(pt, format="openai", allow_pickle=True)
    pt.write_bytes(b"not a pickle at all")
    with raises(pt, "unreadable pickle"):
        load_sae(pt, format="openai", allow_pickle=True)


# -- the native format ---------------------------------------------------------------------------
@pytest.mark.parametrize("arch,extra", [("relu", {}), ("topk", {"k": K}), ("jumprelu", {})])
@pytest.mark.parametrize("variant", ["json", "yaml"])
def test_native_round_trip(tmp_path, arch, extra, variant):
    w = tensors({k: v for k, v in arrays().items() if arch == "jumprelu" or k != "threshold"})
    sae = saebench.build_sae(arch, w, apply_b_dec_to_input=True, act_scale=0.5, hook_name="blocks.1.hook_resid_pre",
                             model_name="gpt2", metadata={"note": "round trip"}, **extra)
    folder = save_sae(sae, tmp_path / "native")
    if variant == "yaml":
        cfg = json.loads((folder / "cfg.json").read_text())
        (folder / "cfg.json").unlink()
        (folder / "cfg.yaml").write_text(yaml.safe_dump(cfg))
    assert not loader("saelens").detect(folder)
    back = load_sae(folder)
    assert back.cfg.metadata.pop("format") == "native" and back.cfg.metadata.pop("path") == str(folder)
    assert back.cfg == sae.cfg
    for name, value in sae.weights().items():
        assert torch.equal(back.weights()[name], value)
    x = torch.from_numpy(inputs())
    assert torch.equal(back.encode(x), sae.encode(x))


# -- against SAELens itself ----------------------------------------------------------------------
@pytest.mark.peers
@pytest.mark.parametrize(
    "arch,extra",
    [
        ("standard", {}),
        ("standard", {"apply_b_dec_to_input": False}),
        ("topk", {"k": K}),
        ("topk", {"k": K, "rescale_acts_by_decoder_norm": True}),
        ("jumprelu", {}),
    ],
)
def test_saelens_itself_agrees(tmp_path, arch, extra):
    try:
        from sae_lens.registry import get_sae_class
        from sae_lens.saes.sae import SAEMetadata
    except Exception as exc:  # not installed, or broken by its dependencies
        pytest.skip(f"sae_lens does not import: {exc}")
    cls, cfg_cls = get_sae_class(arch)
    meta = SAEMetadata(model_name="gpt2", hook_name="blocks.3.hook_resid_post")
    lens = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=meta, **extra))
    w = arrays(negative_thresholds=True)
    if arch != "jumprelu":
        w.pop("threshold")
    w["W_dec"] *= np.random.default_rng(7).uniform(0.5, 2.0, size=(D_SAE, 1)).astype(np.float32)
    lens.load_state_dict(tensors(w))
    lens.save_model(tmp_path / "lens")

    ours = load_sae(tmp_path / "lens")
    assert ours.cfg.metadata["format"] == "saelens"
    assert ours.cfg.model_name == "gpt2" and ours.cfg.hook_name == "blocks.3.hook_resid_post"
    x = torch.from_numpy(inputs())
    with torch.no_grad():
        f_lens = lens.encode(x)
        x_hat_lens = lens.decode(f_lens)
    f = ours.encode(x)
    assert (f_lens != 0).any()
    torch.testing.assert_close(f, f_lens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours.decode(f), x_hat_lens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), x_hat_lens, atol=1e-5, rtol=1e-5)


def test_loaders_hand_their_tensors_over_and_build_sae_copies_the_callers():
    """A loader's freshly read tensors become the SAE's weights (one copy of a wide dictionary in memory,
    not two); tensors a caller passes to build_sae stay the caller's (the SAE has its own copy)."""
    from saebench.loading import build_checkpoint, build_sae

    w = {"W_enc": torch.randn(8, 16), "W_dec": torch.randn(16, 8), "b_enc": torch.zeros(16), "b_dec": torch.zeros(8)}
    taken = build_checkpoint("relu", w, "ckpt")
    assert taken.W_enc.data_ptr() == w["W_enc"].data_ptr() and taken.W_dec.data_ptr() == w["W_dec"].data_ptr()
    assert not any(p.is_meta for p in taken.parameters())
    copied = build_sae("relu", w)
    assert copied.W_enc.data_ptr() != w["W_enc"].data_ptr()
    torch.testing.assert_close(copied.W_enc, w["W_enc"])
    # a float64 file becomes float32 weights either way; a transposed tensor is made contiguous
    w64 = {k: v.double() for k, v in w.items()}
    t = build_checkpoint("relu", {**w64, "enc": w64["W_enc"].T.contiguous()}, "ckpt",
                         names={"W_enc": "enc.T", "W_dec": "W_dec", "b_enc": "b_enc", "b_dec": "b_dec"})
    assert t.W_enc.dtype == torch.float32 and t.W_enc.is_contiguous()
    torch.testing.assert_close(t.W_enc, w["W_enc"])


def test_an_architecture_whose_from_weights_predates_take_still_loads(monkeypatch):
    from saebench import loading
    from saebench.plugins.architectures.relu import ReLUSAE

    class OldStyle(ReLUSAE):
        @classmethod
        def from_weights(cls, weights, cfg, where=None):  # a third party's override, without ``take``
            return super().from_weights(weights, cfg, where)

    real = loading.plugin_manager.get
    monkeypatch.setattr(loading.plugin_manager, "get", lambda kind, name: OldStyle if name == "relu" else real(kind, name))
    w = {"W_enc": torch.randn(8, 16), "W_dec": torch.randn(16, 8), "b_enc": torch.zeros(16), "b_dec": torch.zeros(8)}
    sae = loading.build_checkpoint("relu", w, "ckpt")
    assert type(sae) is OldStyle and sae.W_enc.data_ptr() != w["W_enc"].data_ptr()
    torch.testing.assert_close(sae.W_enc, w["W_enc"])
