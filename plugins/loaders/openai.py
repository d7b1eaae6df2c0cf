"""OpenAI sparse_autoencoder: the state dict of its ``Autoencoder``, as a torch pickle or converted to safetensors.

What it stores (openai/sparse_autoencoder, model.py): ``pre_bias`` [d_in], ``encoder.weight``
[d_sae, d_in] (a Linear without bias), ``latent_bias`` [d_sae], ``decoder.weight`` [d_in, d_sae],
statistics buffers (``stats_last_nonzero``...), and in its pickles ``activation`` (the class name:
"ReLU", "TopK") with ``activation_state_dict`` ({"k": 32, "postact_fn": "ReLU"} for TopK). It
computes latents = act(encoder(x − pre_bias) + latent_bias) and recons = decoder(latents) +
pre_bias: our SAE with b_dec = pre_bias and ``apply_b_dec_to_input``.

``Autoencoder.from_state_dict`` also turns on LayerNorm input normalisation (``normalize``)
whenever the activation is TopK; a per-token normalisation is not something our SAE can
represent, so such checkpoints are refused unless a sidecar says ``"normalize": false``.

A sidecar JSON, ``<stem>.json`` or else ``cfg.json`` beside the file, may give ``activation``,
``k``, ``normalize``, ``model_name`` and ``hook_name``; it wins over the state dict's own keys.
Safetensors files cannot hold the activation, so without a sidecar one is read as ReLU and the
metadata says so. Pickles are read only with ``allow_pickle`` (:func:`saebench.loading.read_pickle`).
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

import saebench
from saebench import loading

NAMES = {"W_enc": "encoder.weight.T", "b_enc": "latent_bias", "W_dec": "decoder.weight.T", "b_dec": "pre_bias"}
PICKLE_SUFFIXES = (".pt", ".pth", ".bin")
ACTIVATIONS = {"relu": "relu", "topk": "topk"}  # OpenAI's class name, lower-cased -> our architecture


class OpenAILoader(saebench.SAELoader):
    """OpenAI sparse_autoencoder state dict: encoder, decoder, pre_bias, latent_bias (TopK or ReLU)."""

    name = "openai"
    priority = 5

    def detect(self, path: Path) -> bool:
        try:
            if not path.is_file():
                return False
            if path.suffix == ".safetensors":
                from safetensors import safe_open

                with safe_open(str(path), framework="pt") as f:  # reads the header only
                    return {"pre_bias", "latent_bias", "encoder.weight"} <= set(f.keys())
            if path.suffix in PICKLE_SUFFIXES:
                return all(key in _pickle_bytes(path) for key in (b"pre_bias", b"latent_bias"))
            return False
        except Exception:  # a detector never raises; unreadable files are simply not ours
            return False

    def load(self, path: Path, *, allow_pickle: bool = False) -> saebench.SAE:
        if not path.is_file():
            raise saebench.CheckpointError(
                "expected an OpenAI sparse_autoencoder state dict (.pt or .safetensors)", path
            )
        sidecar_file = next((f for f in (path.with_suffix(".json"), path.parent / "cfg.json") if f.is_file()), None)
        sidecar = loading.read_config(sidecar_file) if sidecar_file else {}
        if path.suffix == ".safetensors":
            tensors: dict[str, Any] = loading.read_safetensors(path)
        else:
            tensors = loading.read_pickle(path, allow_pickle)

        source, where = (sidecar, sidecar_file) if "activation" in sidecar else (tensors, path)
        activation = source.get("activation")
        act_state = source.get("activation_state_dict")
        act_state = act_state if isinstance(act_state, dict) else {}
        assumed = activation is None
        if assumed:
            activation = "ReLU"
        if not isinstance(activation, str) or activation.lower() not in ACTIVATIONS:
            shown = activation if isinstance(activation, str) else type(activation).__name__
            raise saebench.CheckpointError(
                f"activation {shown!r} is not supported (saebench reads ReLU and TopK)", where
            )
        arch = ACTIVATIONS[activation.lower()]
        if arch == "topk" and act_state.get("postact_fn", "ReLU") != "ReLU":
            raise saebench.CheckpointError(
                f"TopK with postact_fn {act_state['postact_fn']!r} is not supported (saebench's TopK applies ReLU)",
                where,
            )
        if sidecar.get("normalize", arch == "topk"):
            hint = f'; if it was trained without, put "normalize": false in {sidecar_file or path.with_suffix(".json")}'
            raise saebench.CheckpointError(
                "normalises each input with LayerNorm before encoding (OpenAI's Autoencoder.from_state_dict "
                "does so for every TopK autoencoder), which a saebench SAE cannot represent" + hint,
                where if "normalize" not in sidecar else sidecar_file,
            )

        encoder = tensors.get("encoder.weight")
        info = {"activation": activation, "activation_assumed": assumed}
        if sidecar_file:
            info["sidecar"] = str(sidecar_file)
        return loading.build_checkpoint(
            arch,
            tensors,
            path,
            names=NAMES,
            cfg_where=where,
            k=source.get("k", act_state.get("k")) if arch == "topk" else None,
            apply_b_dec_to_input=True,
            dtype=loading.dtype_name(getattr(encoder, "dtype", None)),
            model_name=sidecar.get("model_name"),
            hook_name=sidecar.get("hook_name"),
            metadata={"openai": info},
        )


def _pickle_bytes(path: Path) -> bytes:
    """The pickled structure of a torch.save file (key names, no tensor data), without unpickling it."""
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as z:
            member = next((n for n in z.namelist() if n.endswith("data.pkl")), None)
            return z.read(member) if member else b""
    with open(path, "rb") as f:  # torch's legacy format: the dict's pickle comes first
        return f.read(1 << 16)


@saebench.hookimpl
def register_loaders(register):
    register(OpenAILoader)
