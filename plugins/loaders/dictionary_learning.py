"""saprmarks/dictionary_learning: a trainer folder with config.json and ae.pt, its dictionary's state dict.

config.json is ``{"trainer": trainer.config, "buffer": ...}``, the trainer's config naming the
``dict_class`` and giving ``activation_dim``, ``dict_size``, ``k``, ``layer``, ``lm_name`` and
``submodule_name``. ae.pt is ``torch.save(ae.state_dict())``; a trainer that normalised activations
has already multiplied the biases (and thresholds) by its norm factor, so the file runs on raw
activations. An ae.safetensors with the same tensor names is read first: it needs no pickle.
A folder of ``trainer_<i>`` folders, as ``trainSAE`` writes them, is recognised and refused with
the list to pick from.

Each class (dictionary.py, trainers/top_k.py, batch_top_k.py, matryoshka_batch_top_k.py), as its
default ``encode``/``decode`` compute it, maps exactly onto ours:

- AutoEncoder: ReLU(encoder(x − bias)), decoder(f) + bias (decoder without bias): relu with
  b_dec = ``bias`` on the input. ``load_dictionary`` (its ``from_pretrained``) first scales decoder
  columns to unit norm, and encoder rows and ``encoder.bias`` by the same norms, unless they are
  already 1; so do we.
- AutoEncoderNew: ReLU(encoder(x)), decoder(f), both with biases: relu without a pre-encoder bias.
- AutoEncoderTopK: top-k of ReLU(encoder(x − b_dec)), decoder(f) + b_dec: topk with the pre-bias;
  k is the state dict's ``k`` buffer (config.json's must agree, as the tool checks).
- BatchTopKSAE and MatryoshkaBatchTopKSAE: at inference ReLU(h)·1[ReLU(h) > τ] with one threshold τ
  for every latent: jumprelu with θ_i = max(τ, 0), which is exact, and the pre-bias. A τ < 0 (the
  initial −1, never estimated) makes that ReLU(h), which is what the tool then computes; the
  metadata says so.
- JumpReluAutoEncoder: ReLU(h·1[h > θ]), f·W_dec + b_dec, no pre-bias: jumprelu, θ < 0 raised to 0.

- GatedAutoEncoder: 1[π > 0] · ReLU(exp(r_mag) ⊙ encoder(x − decoder_bias) + mag_bias) with π =
  encoder(x − decoder_bias) + gate_bias (encoder without bias), decoder(f) + decoder_bias: gated.

Refused: training backups (ae.pt
holding ``step``, ``ae``, ``optimizer``), and other classes. Pickles are read only with
``allow_pickle`` (:func:`saebench.loading.read_pickle`).
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import torch

import saebench
from saebench import loading

CONFIG = "config.json"
WEIGHTS = ("ae.safetensors", "ae.pt")  # safetensors first: it needs no pickle
LINEAR = {"W_enc": "encoder.weight.T", "b_enc": "encoder.bias", "W_dec": "decoder.weight.T"}
PLAIN = {"W_enc": "W_enc", "b_enc": "b_enc", "W_dec": "W_dec", "b_dec": "b_dec"}
#: dict_class -> (our architecture, our tensor name -> theirs, apply_b_dec_to_input)
CLASSES: dict[str, tuple[str, dict[str, str], bool]] = {
    "AutoEncoder": ("relu", {**LINEAR, "b_dec": "bias"}, True),
    "AutoEncoderNew": ("relu", {**LINEAR, "b_dec": "decoder.bias"}, False),
    "AutoEncoderTopK": ("topk", {**LINEAR, "b_dec": "b_dec"}, True),
    "BatchTopKSAE": ("jumprelu", {**LINEAR, "b_dec": "b_dec", "threshold": "threshold"}, True),
    "MatryoshkaBatchTopKSAE": ("jumprelu", {**PLAIN, "threshold": "threshold"}, True),
    "JumpReluAutoEncoder": ("jumprelu", {**PLAIN, "threshold": "threshold"}, False),
    "GatedAutoEncoder": (
        "gated",
        {
            "W_enc": "encoder.weight.T",
            "b_gate": "gate_bias",
            "r_mag": "r_mag",
            "b_mag": "mag_bias",
            "W_dec": "decoder.weight.T",
            "b_dec": "decoder_bias",
        },
        True,
    ),  # fmt: skip
}
BATCH_TOPK = ("BatchTopKSAE", "MatryoshkaBatchTopKSAE")
REFUSED: dict[str, str] = {}
PROVENANCE = ("trainer_class", "dict_class", "layer", "submodule_name", "lm_name", "activation_dim", "dict_size")


class DictionaryLearningLoader(saebench.SAELoader):
    """dictionary_learning folder: config.json and ae.pt or ae.safetensors (ReLU, TopK, BatchTopK, JumpReLU, Gated)."""

    name = "dictionary_learning"
    priority = 5

    @staticmethod
    def _is_dictionary(folder: Path) -> bool:
        if not any((folder / w).is_file() for w in WEIGHTS) or not (folder / CONFIG).is_file():
            return False
        if (folder / CONFIG).stat().st_size > 1 << 20:  # a trainer config is a few hundred bytes
            return False
        data = json.loads((folder / CONFIG).read_text(errors="replace"))
        return isinstance(data, dict) and isinstance(data.get("trainer"), dict)

    @classmethod
    def _trainers(cls, folder: Path) -> list[str]:
        """Subfolders that are dictionaries, in natural order (trainer_2 before trainer_10)."""
        names = [child.name for child in folder.iterdir() if child.is_dir() and cls._is_dictionary(child)]
        return sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])

    def detect(self, path: Path) -> bool:
        try:
            folder = path.parent if path.is_file() and path.name in WEIGHTS else path
            if not folder.is_dir():
                return False
            return self._is_dictionary(folder) or (not (folder / CONFIG).exists() and bool(self._trainers(folder)))
        except (OSError, ValueError):  # json's errors are ValueErrors
            return False

    def load(self, path: Path, *, allow_pickle: bool = False) -> saebench.SAE:
        folder = path.parent if path.is_file() else path
        if not folder.is_dir():
            raise saebench.CheckpointError(f"expected a dictionary_learning folder with {CONFIG} and ae.pt", path)
        if not (folder / CONFIG).exists() and (trainers := self._trainers(folder)):
            raise saebench.CheckpointError(
                f"holds {len(trainers)} dictionary_learning dictionaries ({', '.join(trainers)}); "
                "pick one by passing its subfolder",
                folder,
            )
        cfg_file = folder / CONFIG
        trainer = _trainer_config(cfg_file)
        dict_class = trainer.get("dict_class")
        if dict_class in REFUSED:
            raise saebench.CheckpointError(f"is {REFUSED[dict_class]}", cfg_file)
        if dict_class not in CLASSES:
            raise saebench.CheckpointError(
                f"trainer.dict_class {dict_class!r} is not supported (saebench reads {', '.join(CLASSES)})", cfg_file
            )
        weights_file = (
            path
            if path.name in WEIGHTS and path.is_file()
            else next((folder / w for w in WEIGHTS if (folder / w).is_file()), None)
        )
        if weights_file is None:
            raise saebench.CheckpointError(f"missing weights file ({' or '.join(WEIGHTS)})", folder)
        tensors = _read_weights(weights_file, allow_pickle)
        arch, names, pre_bias = CLASSES[dict_class]
        info: dict[str, Any] = {key: trainer[key] for key in PROVENANCE if _is_plain(trainer.get(key))}
        info["weights"] = weights_file.name
        k = _k(tensors, trainer, weights_file, cfg_file) if dict_class in ("AutoEncoderTopK", *BATCH_TOPK) else None
        if dict_class in BATCH_TOPK:
            info.update(_global_threshold(tensors, names["b_enc"], weights_file), batch_topk_k=k)
            k = None  # BatchTopK's k was the batch average; inference thresholds instead
        elif arch == "jumprelu" and "threshold" in tensors:
            tensors["threshold"] = loading.masked_relu_threshold(tensors["threshold"])
        if dict_class == "AutoEncoder":
            info["normalized_decoder"] = _normalize_decoder(tensors, weights_file)
        layer = trainer.get("layer")
        default_submodule = trainer.get("submodule_name") is None and type(layer) is int
        lm_name = trainer.get("lm_name")
        return loading.build_checkpoint(
            arch,
            tensors,
            weights_file,
            names=names,
            cfg_where=cfg_file,
            k=k,
            apply_b_dec_to_input=pre_bias,
            dtype=loading.dtype_name(getattr(tensors.get(names["W_enc"].removesuffix(".T")), "dtype", None)),
            model_name=lm_name if isinstance(lm_name, str) else None,
            # utils.get_submodule's default: the output of model.layers[layer], the residual stream
            hook_name=f"blocks.{layer}.hook_resid_post" if default_submodule else None,
            metadata={"dictionary_learning": info},
        )


def _is_plain(value: Any) -> bool:
    return isinstance(value, (str, int, float, bool))


def _trainer_config(cfg_file: Path) -> dict[str, Any]:
    trainer = loading.read_config(cfg_file).get("trainer")
    if not isinstance(trainer, dict):
        raise saebench.CheckpointError('expected a "trainer" object (dictionary_learning\'s trainer config)', cfg_file)
    return trainer


def _read_weights(weights_file: Path, allow_pickle: bool) -> dict[str, Any]:
    if weights_file.suffix == ".safetensors":
        return dict(loading.read_safetensors(weights_file))
    tensors = loading.read_pickle(weights_file, allow_pickle)
    if "optimizer" in tensors or isinstance(tensors.get("ae"), dict):
        step = tensors.get("step")
        raise saebench.CheckpointError(
            f"is a training backup (step {step}), not a finished dictionary: its weights may still be in "
            "normalised units; finish training or save ae.state_dict()",
            weights_file,
        )
    return tensors


def _k(tensors: dict[str, Any], trainer: dict[str, Any], weights_file: Path, cfg_file: Path) -> Any:
    """The state dict's k buffer, which the tool checks against config.json's."""
    buffer = tensors.get("k")
    if isinstance(buffer, torch.Tensor) and buffer.numel() == 1:
        k = int(buffer.item())
        if trainer.get("k") is not None and trainer["k"] != k:
            raise saebench.CheckpointError(f"trainer.k is {trainer['k']!r} but {weights_file.name} has k={k}", cfg_file)
        return k
    return trainer.get("k")


def _global_threshold(tensors: dict[str, Any], b_enc_name: str, weights_file: Path) -> dict[str, Any]:
    """BatchTopK's one inference threshold τ, as our per-latent θ = max(τ, 0)."""
    tau, b_enc = tensors.get("threshold"), tensors.get(b_enc_name)
    if not isinstance(tau, torch.Tensor) or tau.numel() != 1:
        shape = list(tau.shape) if isinstance(tau, torch.Tensor) else "missing"
        raise saebench.CheckpointError(f"tensor threshold is {shape}, expected one number", weights_file)
    if isinstance(b_enc, torch.Tensor) and b_enc.ndim == 1:  # otherwise build_checkpoint reports b_enc
        tensors["threshold"] = b_enc.new_full(b_enc.shape, max(float(tau), 0.0))
    info: dict[str, Any] = {"batch_topk_threshold": float(tau)}
    if float(tau) < 0:
        info["threshold_unset"] = "a negative threshold keeps every positive pre-activation: a ReLU SAE"
    return info


def _normalize_decoder(tensors: dict[str, Any], weights_file: Path) -> bool:
    """AutoEncoder.from_pretrained's normalize_decoder: unit decoder columns, encoder scaled to keep x̂."""
    enc, b_enc, dec = (tensors.get(n) for n in ("encoder.weight", "encoder.bias", "decoder.weight"))
    if not (isinstance(enc, torch.Tensor) and isinstance(b_enc, torch.Tensor) and isinstance(dec, torch.Tensor)):
        return False  # build_checkpoint reports what is missing
    if dec.ndim != 2 or enc.shape != dec.T.shape or b_enc.shape != (dec.shape[1],):
        return False
    norms = dec.double().norm(dim=0)
    if torch.allclose(norms, torch.ones_like(norms)):
        return False
    if (norms == 0).any():
        problem = f"{int((norms == 0).sum())} decoder column(s) are zero, so the decoder cannot be normalised"
        raise saebench.CheckpointError(problem, weights_file)
    tensors["decoder.weight"] = (dec.double() / norms).to(dec.dtype)
    tensors["encoder.weight"] = (enc.double() * norms[:, None]).to(enc.dtype)
    tensors["encoder.bias"] = (b_enc.double() * norms).to(b_enc.dtype)
    return True


@saebench.hookimpl
def register_loaders(register):
    register(DictionaryLearningLoader)
