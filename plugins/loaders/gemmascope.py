"""Gemma Scope (Gemma 2, ``params.npz``) and Gemma Scope 2 (Gemma 3, ``params.safetensors``): JumpReLU SAEs.

Both encode ReLU(h)·1[h > θ] with h = x·W_enc + b_enc, with no pre-encoder bias and no input
normalisation, and decode f·W_dec + b_dec: our JumpReLU without ``apply_b_dec_to_input``, with
θ < 0 raised to 0 (exact, see :func:`saebench.loading.masked_relu_threshold`).

Gemma Scope stores W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec and threshold in a
params.npz, laid out as ``layer_<L>/width_<W>/average_l0_<N>/params.npz``; those parts of the path
go into the metadata when present.

Gemma Scope 2 stores the same tensors, lower-case (``w_enc``, ``w_dec``), in params.safetensors,
beside an optional config.json (``type`` "sae" or "transcoder", ``affine_connection``,
``hf_hook_point_in``/``_out``, ``model_name``, ``width``, ``l0``). Its folders are
``<site>/layer_<L>_width_<W>_l0_<small|medium|big>``, the site being resid_post, mlp_out, attn_out
or transcoder (``_all`` releases add that suffix). Site, layer, width and l0 go into
``metadata["gemmascope"]``, with the TransformerLens-style hook point where one follows (attn_out
is the input of ``o_proj``, the heads' outputs concatenated: ``attn.hook_z``).

Transcoders read one hook point and write another: told by the ``transcoder`` folder, by the config
(``type`` "transcoder", ``affine_connection``, or two different ``hf_hook_point_in``/``_out``), or by
the tensors (a skip, or a decoder wider or narrower than the encoder's input). They load as JumpReLU
transcoders: ``d_out`` = w_dec's width, and a skip transcoder's ``affine_skip_connection`` [d_in,
d_out] is our W_skip (y = f·w_dec + b_dec + x·affine_skip_connection, no separate skip bias). A
``transcoder`` folder's layer gives its hook points, the MLP's input (``pre_feedforward_layernorm``'s
output, ``ln2.hook_normalized``) and output (``post_feedforward_layernorm``'s, ``hook_mlp_out``);
the config's ``hf_hook_point_in``/``_out`` are used where no folder says. Cross-layer transcoders
(a 3-D w_dec, the ``clt`` site) write to many layers at once and are refused.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path
from typing import Any

import torch

import saebench
from saebench import loading

FILE = "params.npz"
PATH_FACTS = {"layer": r"layer_(\d+)", "width": r"width_(\w+)", "average_l0": r"average_l0_(\d+)"}

FILE_2 = "params.safetensors"
CONFIG_2 = "config.json"
NAMES_2 = {"W_enc": "w_enc", "W_dec": "w_dec", "b_enc": "b_enc", "b_dec": "b_dec", "threshold": "threshold"}
SKIP_2 = "affine_skip_connection"
FOLDER_2 = re.compile(r"layer_(\d+)_width_(\d+[a-zA-Z]*)_l0_([a-zA-Z0-9]+)(_affine)?")
SITES_2 = ("resid_post", "mlp_out", "attn_out", "transcoder", "clt")
HOOKS = {
    "resid_post": "blocks.{}.hook_resid_post",
    "mlp_out": "blocks.{}.hook_mlp_out",
    "attn_out": "blocks.{}.attn.hook_z",
}
#: a single-layer transcoder's hook points (TransformerLens names): the MLP's normed input and its output
TRANSCODER_HOOKS = ("blocks.{}.ln2.hook_normalized", "blocks.{}.hook_mlp_out")
#: Gemma 3's Hugging Face module paths of each site (config.json's hf_hook_point_in), by layer
HF_POINTS = {
    "resid_post": "model.layers.{}.output",
    "mlp_out": "model.layers.{}.post_feedforward_layernorm.output",
    "attn_out": "model.layers.{}.self_attn.o_proj.input",
    "mlp_in": "model.layers.{}.pre_feedforward_layernorm.output",
}


class GemmaScopeLoader(saebench.SAELoader):
    """Gemma Scope params.npz or Gemma Scope 2 params.safetensors: w_enc, w_dec, b_enc, b_dec, threshold (JumpReLU).

    Gemma Scope 2 transcoders too, with affine_skip_connection for skip transcoders (see the module docstring)."""

    name = "gemmascope"
    priority = 5

    def detect(self, path: Path) -> bool:
        try:
            if path.is_dir():
                return (path / FILE).is_file() or (path / FILE_2).is_file()
            if not path.is_file():
                return False
            if path.name in (FILE, FILE_2):
                return True
            if path.suffix == ".npz":
                with zipfile.ZipFile(path) as z:  # another name: look at the member list, not the data
                    return {"W_enc.npy", "threshold.npy"} <= set(z.namelist())
            if path.suffix == ".safetensors":
                return {"w_enc", "w_dec", "threshold"} <= set(_header_shapes(path))
            return False
        except Exception:  # a detector never raises; unreadable files are simply not ours
            return False

    def load(self, path: Path, *, allow_pickle: bool = False) -> saebench.SAE:
        if path.is_dir():
            if not (path / FILE).is_file() and (path / FILE_2).is_file():
                return self._load_v2(path / FILE_2)
            return self._load_v1(path / FILE)
        return self._load_v2(path) if path.suffix == ".safetensors" else self._load_v1(path)

    @staticmethod
    def _load_v1(file: Path) -> saebench.SAE:
        tensors = loading.read_npz(file)
        if "threshold" in tensors:
            tensors["threshold"] = loading.masked_relu_threshold(tensors["threshold"])
        facts = {}
        for key, pattern in PATH_FACTS.items():
            for part in file.parent.resolve().parts:  # the folder: a Hugging Face cache links files to blobs
                if m := re.fullmatch(pattern, part):
                    facts[key] = int(m.group(1)) if m.group(1).isdigit() else m.group(1)
        w_enc = tensors.get("W_enc")
        return loading.build_checkpoint(
            "jumprelu",
            tensors,
            file,
            apply_b_dec_to_input=False,
            dtype=loading.dtype_name(getattr(w_enc, "dtype", None)),
            metadata={"gemmascope": facts},
        )

    @staticmethod
    def _load_v2(file: Path) -> saebench.SAE:
        cfg_file = file.parent / CONFIG_2
        raw = loading.read_config(cfg_file) if cfg_file.is_file() else {}
        arch = raw.get("architecture", "jump_relu")
        if arch != "jump_relu":
            raise saebench.CheckpointError(
                f"architecture {arch!r} is not supported (saebench reads Gemma Scope 2's jump_relu)", cfg_file
            )
        facts = folder_facts(file.parent.resolve(), raw)
        transcoder = _transcoder(file, raw, facts, _header_shapes(file))
        tensors = loading.read_safetensors(file)
        if "threshold" in tensors:
            tensors["threshold"] = loading.masked_relu_threshold(tensors["threshold"])
        if raw:
            facts["config"] = raw
        model_name = raw.get("model_name")
        extra = _transcoder_config(tensors, raw, facts) if transcoder else {}
        return loading.build_checkpoint(
            "jumprelu",
            tensors,
            file,
            names={**NAMES_2, "W_skip": SKIP_2} if extra.get("skip") else NAMES_2,
            cfg_where=cfg_file,
            apply_b_dec_to_input=False,
            dtype=loading.dtype_name(getattr(tensors.get("w_enc"), "dtype", None)),
            model_name=model_name if isinstance(model_name, str) else None,
            hook_name=facts.get("hook_name"),
            metadata={"gemmascope": facts},
            **extra,
        )


def folder_facts(folder: Path, raw: dict[str, Any]) -> dict[str, Any]:
    """Site, layer, width, l0 (and the hook point that follows) from a Gemma Scope 2 folder and its config."""
    facts: dict[str, Any] = {}
    site = folder.parent.name.removesuffix("_all")
    if site in SITES_2:
        facts["site"] = site
    if m := FOLDER_2.fullmatch(folder.name):
        facts.update(layer=int(m[1]), width=m[2], l0=m[3])
        if m[4]:
            facts["affine"] = True
    hf_in, hf_out = raw.get("hf_hook_point_in"), raw.get("hf_hook_point_out")
    for name, point in HF_POINTS.items():
        if name != "mlp_in" and isinstance(hf_in, str) and (m := re.fullmatch(point.format(r"(\d+)"), hf_in)):
            facts.setdefault("site", name)  # a folder renamed on download still says what it reads
            facts.setdefault("layer", int(m[1]))
    mlp = [_layer(HF_POINTS[site], point) for site, point in (("mlp_in", hf_in), ("mlp_out", hf_out))]
    if mlp[0] is not None and mlp[0] == mlp[1]:  # a renamed transcoder folder: the config's MLP input and output
        facts.setdefault("site", "transcoder")
        facts.setdefault("layer", mlp[0])
    if facts.get("site") in HOOKS and "layer" in facts:
        facts["hook_name"] = HOOKS[facts["site"]].format(facts["layer"])
        if facts["site"] == "attn_out":
            facts["reshape_activations"] = "hook_z"  # TransformerLens keeps heads apart there
    elif facts.get("site") == "transcoder" and "layer" in facts:
        facts["hook_name"], facts["hook_name_out"] = (h.format(facts["layer"]) for h in TRANSCODER_HOOKS)
    return facts


def _layer(pattern: str, point: Any) -> int | None:
    """The layer of a Hugging Face module path of the form ``pattern`` ("model.layers.{}...."), or None."""
    m = re.fullmatch(pattern.format(r"(\d+)"), point) if isinstance(point, str) else None
    return int(m[1]) if m else None


def _transcoder(file: Path, raw: dict[str, Any], facts: dict[str, Any], shapes: dict[str, list[int]]) -> bool:
    """Whether the checkpoint is a transcoder: told by its config, its folder, a skip connection or a decoder
    that writes another width. A cross-layer transcoder raises CheckpointError."""
    w_enc, w_dec = shapes.get("w_enc", []), shapes.get("w_dec", [])
    hf_in, hf_out = raw.get("hf_hook_point_in"), raw.get("hf_hook_point_out")
    skip = SKIP_2 in shapes or bool(raw.get("affine_connection")) or bool(facts.get("affine"))
    two_points = isinstance(hf_in, str) and isinstance(hf_out, str) and hf_in != hf_out
    by_config = raw.get("type") == "transcoder" or bool(raw.get("affine_connection")) or two_points
    by_folder = facts.get("site") in ("transcoder", "clt")
    by_tensors = skip or len(w_dec) == 3 or (len(w_enc) == 2 and len(w_dec) == 2 and w_enc[0] != w_dec[1])
    if len(w_dec) == 3 or facts.get("site") == "clt":
        raise saebench.CheckpointError(
            f"is a {'skip ' if skip else ''}cross-layer transcoder: it writes to several layers at once, "
            "which saebench does not evaluate (single-layer transcoders it does)",
            file,
        )
    if skip and shapes and SKIP_2 not in shapes:  # {}: unreadable, which read_safetensors reports
        raise saebench.CheckpointError(f"missing tensor(s) {SKIP_2} (the config or folder says affine)", file)
    return by_config or by_folder or by_tensors


def _transcoder_config(tensors: dict[str, torch.Tensor], raw: dict[str, Any], facts: dict[str, Any]) -> dict[str, Any]:
    """A transcoder's SAEConfig fields (d_out, skip, hook_name_out); ``facts`` gain the hook names its config
    gives when no folder gave them. A w_dec that is no matrix gets none: the shape check then names it."""
    hf_in, hf_out = raw.get("hf_hook_point_in"), raw.get("hf_hook_point_out")
    if "hook_name_out" not in facts and isinstance(hf_in, str) and isinstance(hf_out, str) and hf_in != hf_out:
        facts["hook_name"], facts["hook_name_out"] = hf_in, hf_out  # not the MLP's pair: the config's own names
    w_dec = tensors.get("w_dec")
    if not (isinstance(w_dec, torch.Tensor) and w_dec.ndim == 2):
        return {}
    return {"d_out": int(w_dec.shape[1]), "skip": SKIP_2 in tensors, "hook_name_out": facts.get("hook_name_out")}


def _header_shapes(file: Path) -> dict[str, list[int]]:
    """Tensor shapes from a safetensors header, without reading the data; {} if the file is unreadable."""
    from safetensors import safe_open

    try:
        with safe_open(str(file), framework="pt") as f:
            return {key: list(f.get_slice(key).get_shape()) for key in f.keys()}  # noqa: SIM118
    except Exception:  # read_safetensors reports what is wrong with the file
        return {}


@saebench.hookimpl
def register_loaders(register):
    register(GemmaScopeLoader)
