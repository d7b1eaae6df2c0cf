"""Llama Scope (OpenMOSS lm_saes): hyperparams.json beside checkpoints/final.safetensors.

What lm_saes stores (src/lm_saes/sae.py and config.py, as released with Llama Scope):
``encoder.weight`` [d_sae, d_model], ``encoder.bias`` [d_sae], ``decoder.weight`` [d_model, d_sae]
and ``decoder.bias`` [d_model] (with ``use_decoder_bias``); hyperparams.json is its SAEConfig
(``d_model``, ``d_sae``, ``hook_point_in``/``_out``, ``act_fn``, ``jump_relu_threshold``, one
threshold for every latent, ``top_k``, ``norm_activation``, ``dataset_average_activation_norm``
{in, out}, ``sparsity_include_decoder_norm``, ``apply_decoder_bias_to_pre_encoder``...). A key
it lacks takes lm_saes's default.

lm_saes's ``from_config`` turns these training weights into the ones it runs, and so do we (in
float64, then back to the file's dtype): with dataset-wise normalisation, which scales inputs by
s_in = √d_model / norm_in and targets by s_out = √d_model / norm_out, b_enc /= s_in, b_dec /= s_out
and W_dec ·= s_in / s_out; with ``sparsity_include_decoder_norm``, decoder columns go to unit norm
n_i and encoder rows and b_enc are multiplied by n_i; a TopK SAE with jump_relu_threshold > 0 runs
as a JumpReLU. It then computes, on raw activations, h = x·W_enc + b_enc (x − b_dec with
``apply_decoder_bias_to_pre_encoder``), f = h·1[h > θ] (no ReLU: our JumpReLU, θ < 0 included),
or top-k of ReLU(h), or ReLU(h), and x̂ = f·W_dec + b_dec. Latents are in lm_saes's units; SAELens's
llama_scope conversion keeps the normalised ones, s_in times these when the decoder norms are 1
(s_in is kept in the metadata).

Refused: per-token and per-batch normalisation (not a constant), GLU encoders, other activation
functions, and transcoders (``hook_point_in`` ≠ ``hook_point_out``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

import saebench
from saebench import loading

CONFIG = "hyperparams.json"
#: lm_saes's own search order for a checkpoint in an SAE folder (safetensors only: no pickles)
WEIGHTS = ("checkpoints/pruned.safetensors", "checkpoints/final.safetensors")
#: lm_saes SAEConfig defaults for the keys that change what the SAE computes
DEFAULTS: dict[str, Any] = {
    "act_fn": "relu",
    "jump_relu_threshold": 0.0,
    "top_k": 50,
    "norm_activation": "token-wise",
    "sparsity_include_decoder_norm": True,
    "use_decoder_bias": True,
    "apply_decoder_bias_to_pre_encoder": True,
    "use_glu_encoder": False,
}


class LlamaScopeLoader(saebench.SAELoader):
    """Llama Scope (lm_saes) folder: hyperparams.json and checkpoints/final.safetensors (JumpReLU, TopK, ReLU)."""

    name = "llamascope"
    priority = 5

    @staticmethod
    def _folder(path: Path) -> Path:
        """The SAE folder, given it or its checkpoint file."""
        if path.is_file() and path.parent.name == "checkpoints":
            return path.parent.parent
        return path

    def detect(self, path: Path) -> bool:
        try:
            folder = self._folder(path)
            return (folder / CONFIG).is_file() and any((folder / w).is_file() for w in WEIGHTS)
        except OSError:
            return False

    def load(self, path: Path, *, allow_pickle: bool = False) -> saebench.SAE:
        folder = self._folder(path)
        if not folder.is_dir():
            raise saebench.CheckpointError(f"expected a Llama Scope folder with {CONFIG} and {WEIGHTS[-1]}", path)
        cfg_file = folder / CONFIG
        hp = {**DEFAULTS, **loading.read_config(cfg_file)}
        arch, k = _arch(hp, cfg_file)
        weights_file = path if path.is_file() else next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
        if weights_file is None:
            raise saebench.CheckpointError(f"missing weights file ({' or '.join(WEIGHTS)})", folder)
        tensors = loading.read_safetensors(weights_file)
        if not hp["use_decoder_bias"] and isinstance(tensors.get("decoder.weight"), torch.Tensor):
            tensors["decoder.bias"] = tensors["decoder.weight"].new_zeros(tensors["decoder.weight"].shape[0])
        s_in, s_out = _norm_factors(hp, cfg_file)
        info: dict[str, Any] = {"input_norm_factor": s_in, "output_norm_factor": s_out, "act_fn": hp["act_fn"]}
        dtype = getattr(tensors.get("encoder.weight"), "dtype", None)
        weights = _inference_weights(tensors, hp, s_in, s_out, weights_file)
        if arch == "jumprelu":
            theta = float(hp["jump_relu_threshold"])
            weights["threshold"] = weights["b_enc"].new_full(weights["b_enc"].shape, theta)
            info["jump_relu_threshold"] = theta
        provenance = {key: hp[key] for key in ("d_model", "d_sae", "hook_point_in", "expansion_factor") if key in hp}
        return loading.build_checkpoint(
            arch,
            weights,
            weights_file,
            cfg_where=cfg_file,
            k=k,
            apply_b_dec_to_input=bool(hp["apply_decoder_bias_to_pre_encoder"]),
            dtype=loading.dtype_name(dtype),
            model_name=_model_name(folder),
            hook_name=hp.get("hook_point_in") if isinstance(hp.get("hook_point_in"), str) else None,
            metadata={"llamascope": {**provenance, **info}},
        )


def _arch(hp: dict[str, Any], cfg_file: Path) -> tuple[str, Any]:
    """Our architecture and k for lm_saes's act_fn, after its TopK-to-JumpReLU switch at inference."""
    hook_in, hook_out = hp.get("hook_point_in"), hp.get("hook_point_out")
    if hook_out is not None and hook_out != hook_in:
        problem = f"is a transcoder: reads {hook_in} and writes {hook_out}; saebench does not evaluate transcoders yet"
        raise saebench.CheckpointError(problem, cfg_file)
    if hp["use_glu_encoder"]:
        raise saebench.CheckpointError("a GLU encoder (use_glu_encoder) is not supported", cfg_file)
    act = str(hp["act_fn"]).lower()
    threshold = hp["jump_relu_threshold"]
    if not isinstance(threshold, (int, float)) or isinstance(threshold, bool) or not math.isfinite(threshold):
        raise saebench.CheckpointError(f"jump_relu_threshold {threshold!r} is not a number", cfg_file)
    if act == "topk" and threshold > 0:
        act = "jumprelu"
    if act not in ("relu", "topk", "jumprelu"):
        raise saebench.CheckpointError(
            f"act_fn {hp['act_fn']!r} is not supported (saebench reads lm_saes's relu, topk and jumprelu)", cfg_file
        )
    return act, hp["top_k"] if act == "topk" else None


def _norm_factors(hp: dict[str, Any], cfg_file: Path) -> tuple[float, float]:
    """(s_in, s_out): dataset-wise normalisation's constant factors, 1 without normalisation."""
    mode = hp["norm_activation"]
    if mode in ("token-wise", "batch-wise"):
        raise saebench.CheckpointError(
            f"norm_activation {mode!r} rescales every input by its own norm, which a saebench SAE cannot represent",
            cfg_file,
        )
    if mode != "dataset-wise":  # lm_saes applies no factor for "inference" (already folded) or anything else
        return 1.0, 1.0
    norms, d_model = hp.get("dataset_average_activation_norm"), hp.get("d_model")
    found = [norms[key] for key in ("in", "out") if key in norms] if isinstance(norms, dict) else []
    values = [float(v) for v in found if _positive(v)]
    if not isinstance(d_model, int) or len(values) != 2:
        raise saebench.CheckpointError(
            "dataset-wise normalisation needs d_model and positive dataset_average_activation_norm.in/.out",
            cfg_file,
        )
    s_in, s_out = (math.sqrt(d_model) / v for v in values)
    return s_in, s_out


def _positive(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0


def _inference_weights(
    tensors: dict[str, torch.Tensor], hp: dict[str, Any], s_in: float, s_out: float, weights_file: Path
) -> dict[str, torch.Tensor]:
    """lm_saes's from_config in float64: dataset norm folded in, then unit decoder columns; SAELens names."""
    names = ("encoder.weight", "encoder.bias", "decoder.weight", "decoder.bias")
    missing = [n for n in names if not isinstance(tensors.get(n), torch.Tensor)]
    if missing:
        raise saebench.CheckpointError(f"missing tensor(s) {', '.join(missing)}", weights_file)
    enc, b_enc, dec, b_dec = (tensors[n] for n in names)
    if enc.ndim != 2:
        raise saebench.CheckpointError(
            f"tensor encoder.weight has shape {list(enc.shape)}, expected a matrix", weights_file
        )
    d_sae, d_model = enc.shape
    for name, shape in {"encoder.bias": [d_sae], "decoder.weight": [d_model, d_sae], "decoder.bias": [d_model]}.items():
        if list(tensors[name].shape) != shape:
            problem = f"tensor {name} has shape {list(tensors[name].shape)}, expected {shape}"
            raise saebench.CheckpointError(problem, weights_file)
    dtype = enc.dtype
    w_enc, w_dec = enc.double().T, dec.double().T  # [d_model, d_sae], [d_sae, d_model]
    b_enc64, b_dec64 = b_enc.double() / s_in, b_dec.double() / s_out
    w_dec = w_dec * (s_in / s_out)
    if hp["sparsity_include_decoder_norm"]:
        n = w_dec.norm(dim=1)
        if (n == 0).any():
            problem = f"{int((n == 0).sum())} decoder column(s) are zero, so they cannot be set to unit norm"
            raise saebench.CheckpointError(problem, weights_file)
        w_dec, w_enc, b_enc64 = w_dec / n[:, None], w_enc * n, b_enc64 * n
    out = {"W_enc": w_enc, "b_enc": b_enc64, "W_dec": w_dec, "b_dec": b_dec64}
    return {key: value.to(dtype) for key, value in out.items()}


def _model_name(folder: Path) -> str | None:
    """lm_saes writes the language model's config to lm_config.json beside hyperparams.json."""
    file = folder / "lm_config.json"
    if not file.is_file():
        return None
    name = loading.read_config(file).get("model_name")
    return name if isinstance(name, str) else None


@saebench.hookimpl
def register_loaders(register):
    register(LlamaScopeLoader)
