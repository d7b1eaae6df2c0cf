"""SAELens folders: cfg.json beside sae_weights.safetensors, from SAELens 6.x and the 3.x–5.x configs before it.

SAELens 6 writes ``architecture`` ("standard", "topk", "jumprelu", ...), ``k`` for TopK and a
``metadata`` dict holding ``model_name``/``hook_name``. Older configs keep those at the top level,
may lack ``architecture`` (meaning "standard"), call the hook ``hook_point`` in the oldest ones,
and mark TopK SAEs with ``activation_fn_str``/``activation_fn: "topk"`` and
``activation_fn_kwargs: {k: ...}``. Weights are SAELens-named already; JumpReLU training
checkpoints may hold ``log_threshold`` instead of ``threshold``.

Conversions that are exact: SAELens's JumpReLU is ReLU(h)·1[h>θ], ours h·1[h>θ], so θ < 0 is
raised to 0; a TopK SAE with ``rescale_acts_by_decoder_norm`` ranks h·‖W_dec,i‖ and decodes
f/‖W_dec,i‖, which is the plain TopK SAE with W_enc, b_enc scaled by the norms and W_dec rows
divided by them; an old ``scaling_factor`` (finetuning) multiplies latents before decoding, so it
is folded into W_dec. Gated SAEs keep their SAELens weights (W_enc, b_gate, r_mag, b_mag, W_dec,
b_dec; saebench's ``gated`` is SAELens's definition). Refused: other architectures (transcoders,
...), input normalisation other than "none", activation functions other than ReLU and TopK.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

import saebench
from saebench import loading

CONFIG = "cfg.json"
WEIGHTS = "sae_weights.safetensors"
ARCHS = {"standard": "relu", "topk": "topk", "jumprelu": "jumprelu", "gated": "gated"}
#: provenance kept in SAEConfig.metadata when the config has it
PROVENANCE = (
    "sae_lens_version",
    "sae_lens_training_version",
    "hook_head_index",
    "neuronpedia_id",
    "context_size",
    "dataset_path",
    "prepend_bos",
    "model_class_name",
)


class SAELensLoader(saebench.SAELoader):
    """SAELens folder: cfg.json and sae_weights.safetensors (standard, topk, jumprelu, gated)."""

    name = "saelens"
    priority = 5

    def detect(self, path: Path) -> bool:
        try:
            folder = loading.checkpoint_folder(path, WEIGHTS)
            cfg_file = folder / CONFIG
            if not (cfg_file.is_file() and (folder / WEIGHTS).is_file()):
                return False
            return "saebench_format" not in cfg_file.read_text(errors="replace")  # that is a native folder
        except OSError:
            return False

    def load(self, path: Path, *, allow_pickle: bool = False) -> saebench.SAE:
        folder = loading.checkpoint_folder(path, WEIGHTS)
        if not folder.is_dir():
            raise saebench.CheckpointError(f"expected a SAELens folder with {CONFIG} and {WEIGHTS}", path)
        cfg_file, weights_file = folder / CONFIG, folder / WEIGHTS
        raw = loading.read_config(cfg_file)
        meta = raw.get("metadata") if isinstance(raw.get("metadata"), dict) else {}

        def get(key: str, default: Any = None) -> Any:
            """SAELens 6 keeps provenance in ``metadata``, older versions at the top level."""
            return meta[key] if meta.get(key) is not None else raw.get(key, default)

        arch, k = self._arch(raw, cfg_file)
        self._check_normalisation(raw, cfg_file)
        tensors = dict(loading.read_safetensors(weights_file))
        extra: dict[str, Any] = {}

        if arch == "jumprelu":
            if "threshold" not in tensors and isinstance(tensors.get("log_threshold"), torch.Tensor):
                tensors["threshold"] = tensors.pop("log_threshold").exp()
                extra["threshold_from"] = "log_threshold"
            if "threshold" in tensors:
                tensors["threshold"] = loading.masked_relu_threshold(tensors["threshold"])
        if "scaling_factor" in tensors:
            self._fold_scaling_factor(tensors, weights_file)
            extra["folded_into_W_dec"] = "scaling_factor"
        if arch == "topk" and raw.get("rescale_acts_by_decoder_norm"):
            self._fold_decoder_norm(tensors, weights_file)
            extra["folded_decoder_norms"] = "rescale_acts_by_decoder_norm"
        if raw.get("reshape_activations") not in (None, "none"):
            extra["reshape_activations"] = raw["reshape_activations"]  # hook_z: heads flattened into d_in

        provenance = {key: get(key) for key in PROVENANCE if get(key) is not None}
        config = {key: raw[key] for key in ("d_in", "d_sae") if key in raw}
        return loading.build_checkpoint(
            arch,
            tensors,
            weights_file,
            cfg_where=cfg_file,
            **config,
            k=k,
            apply_b_dec_to_input=raw.get("apply_b_dec_to_input", True),  # SAELens's default
            dtype=loading.dtype_name(raw.get("dtype", "float32")),
            model_name=get("model_name"),
            hook_name=get("hook_name") or get("hook_point"),
            metadata={"saelens": {**provenance, **extra}},
        )

    @staticmethod
    def _arch(raw: dict[str, Any], cfg_file: Path) -> tuple[str, Any]:
        """Our architecture name and k, from a SAELens 6 or pre-6 config."""
        arch = raw.get("architecture") or "standard"
        activation = raw.get("activation_fn") or raw.get("activation_fn_str")
        if arch == "standard" and activation == "topk":  # SAELens < 6 marked TopK SAEs this way
            arch = "topk"
        if not isinstance(arch, str) or arch not in ARCHS:
            raise saebench.CheckpointError(
                f"architecture {arch!r} is not supported (saebench reads SAELens {', '.join(ARCHS)})", cfg_file
            )
        if arch == "standard" and activation not in (None, "relu"):
            raise saebench.CheckpointError(
                f"activation function {activation!r} is not supported (saebench reads relu and topk)", cfg_file
            )
        kwargs = raw.get("activation_fn_kwargs") if isinstance(raw.get("activation_fn_kwargs"), dict) else {}
        k = raw.get("k", kwargs.get("k")) if arch == "topk" else None
        return ARCHS[arch], k

    @staticmethod
    def _check_normalisation(raw: dict[str, Any], cfg_file: Path) -> None:
        norm = raw.get("normalize_activations")
        if norm is True:  # SAELens < 6 wrote a bool; True meant "expected_average_only_in"
            norm = "expected_average_only_in"
        if norm not in (None, False, "none"):
            raise saebench.CheckpointError(
                f"normalize_activations {norm!r} is not supported: saebench runs SAEs on raw activations "
                "(fold the normalisation into the weights first)",
                cfg_file,
            )

    @staticmethod
    def _fold_scaling_factor(tensors: dict[str, Any], weights_file: Path) -> None:
        """Old SAELens decoded (f·s)·W_dec; fold s into W_dec's rows."""
        s, w_dec = tensors.pop("scaling_factor"), tensors.get("W_dec")
        if not isinstance(w_dec, torch.Tensor) or w_dec.ndim != 2:
            return  # build_checkpoint reports the missing or malformed W_dec
        if not isinstance(s, torch.Tensor) or tuple(s.shape) != (w_dec.shape[0],):
            shape = list(s.shape) if isinstance(s, torch.Tensor) else type(s).__name__
            problem = f"tensor scaling_factor has shape {shape}, expected [{w_dec.shape[0]}]"
            raise saebench.CheckpointError(problem, weights_file)
        tensors["W_dec"] = w_dec * s.to(w_dec.dtype)[:, None]

    @staticmethod
    def _fold_decoder_norm(tensors: dict[str, Any], weights_file: Path) -> None:
        """TopK on h·n with decode (f/n)·W_dec equals TopK with W_enc·n, b_enc·n and W_dec/n (n = ‖W_dec,i‖)."""
        w_enc, b_enc, w_dec = (tensors.get(n) for n in ("W_enc", "b_enc", "W_dec"))
        if not all(isinstance(t, torch.Tensor) for t in (w_enc, b_enc, w_dec)) or w_dec.ndim != 2:
            return  # build_checkpoint reports it
        if w_enc.ndim != 2 or w_enc.shape[1] != w_dec.shape[0] or b_enc.shape != (w_dec.shape[0],):
            return
        norms = w_dec.double().norm(dim=-1)
        if (norms == 0).any():
            problem = "rescale_acts_by_decoder_norm is set but some W_dec rows are zero"
            raise saebench.CheckpointError(problem, weights_file)
        tensors["W_enc"] = (w_enc.double() * norms).to(w_enc.dtype)
        tensors["b_enc"] = (b_enc.double() * norms).to(b_enc.dtype)
        tensors["W_dec"] = (w_dec.double() / norms[:, None]).to(w_dec.dtype)


@saebench.hookimpl
def register_loaders(register):
    register(SAELensLoader)
