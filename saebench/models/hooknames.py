"""The hook point an SAE was trained on, as its checkpoint names it, in hf-causal-lm's names.

An SAE entry of a matrix may omit ``hookpoint`` when its checkpoint says where it reads. What it
says is found without reading weights (:func:`checkpoint_hook_name`): a hook name in its config
(SAELens's ``metadata.hook_name`` or the older top-level ``hook_name``/``hook_point``, the native
format's ``hook_name``, ``hook_point_in`` of Llama Scope), else its path (Gemma Scope 2's
``resid_post/layer_12_...``, ``mlp_out/``, ``attn_out/``, ``transcoder/``; Gemma Scope's
``gemma-scope-2b-pt-res/layer_12/...``; a sparsify folder named ``layers.12``).

A transcoder's checkpoint also names the hook point it writes (:func:`checkpoint_hook_name_out`):
``hook_name_out``, ``hook_point_out`` or ``hf_hook_point_out`` in its config when it differs from the
one it reads (Gemma Scope 2 and Llama Scope SAEs give both, equal), else a Gemma Scope 2
``transcoder/`` (or ``transcoder_all/``) folder: ``layer_L_...`` reads ``blocks.L.ln2.hook_normalized``
(``layers.L.mlp_in``) and writes ``blocks.L.hook_mlp_out`` (``layers.L.mlp_out``).

:func:`to_hookpoint` maps it to a hook point of the hf-causal-lm adapter. TransformerLens names:
``blocks.{i}.hook_resid_post`` → ``layers.{i}``; ``hook_resid_pre`` of block i → ``layers.{i-1}``
(block 0's is the embeddings, which are no hook point); ``hook_mlp_out`` → ``layers.{i}.mlp_out``;
``hook_attn_out`` → ``layers.{i}.attn_out``; ``attn.hook_z`` → ``layers.{i}.attn.z``;
``ln2.hook_normalized`` → ``layers.{i}.mlp_in``; ``mlp.hook_post`` → ``layers.{i}.mlp.hidden``.
TransformerLens's ``hook_mlp_in`` and ``hook_resid_mid`` are the residual stream between attention
and MLP, before the MLP's norm: no module outputs it, so no hook point reads it. Hugging Face module
paths (``model.layers.12``, ``model.language_model.layers.12.mlp``, ``transformer.h.3``; Gemma Scope
2's ``model.layers.12.post_feedforward_layernorm.output``, ``...self_attn.o_proj.input``) and
saebench's own names map to the matching ``layers.`` name.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from saebench.loading import read_config

CONFIG_FILES = ("cfg.json", "cfg.yaml", "config.json", "hyperparams.json")
CONFIG_KEYS = ("hook_name", "hook_point", "hookpoint", "hook_point_in", "hf_hook_point_in")
CONFIG_KEYS_OUT = ("hook_name_out", "hook_point_out", "hf_hook_point_out")

_TL = re.compile(r"blocks\.(\d+)\.(hook_\w+|attn\.hook_z|ln2\.hook_normalized|mlp\.hook_post)")
_TL_SITES = {
    "hook_resid_post": "",
    "hook_mlp_out": ".mlp_out",
    "hook_attn_out": ".attn_out",
    "attn.hook_z": ".attn.z",
    "hook_z": ".attn.z",
    "ln2.hook_normalized": ".mlp_in",
    "mlp.hook_post": ".mlp.hidden",
}
_HF = re.compile(
    r"(?:model\.)?(?:language_model\.)?(?:model\.)?(?:transformer\.|gpt_neox\.)?(?:layers|h|blocks)\.(\d+)(?:\.(.+))?"
)
#: module paths after the block (a trailing ".output" dropped: a module's output is what a path names by default)
_HF_SITES = {
    "": "",
    "mlp": ".mlp",
    "self_attn": ".attn",
    "attn": ".attn",
    "attention": ".attn",
    "mlp.input": ".mlp_in",
    "pre_feedforward_layernorm": ".mlp_in",
    "post_feedforward_layernorm": ".mlp_out",
    "self_attn.o_proj.input": ".attn.z",
    "mlp.down_proj.input": ".mlp.hidden",
    # saebench's own names, as the native format saves them
    "attn.z": ".attn.z",
    "attn_out": ".attn_out",
    "mlp_in": ".mlp_in",
    "mlp_out": ".mlp_out",
    "mlp.hidden": ".mlp.hidden",
}
# Gemma Scope 2 folders (resid_post/layer_12_width_16k_l0_medium, transcoder_all/layer_3_...): the site, then the layer
_SCOPE2 = re.compile(r"(?:^|/)(resid_post|mlp_out|attn_out|transcoder)(?:_all)?/layer_(\d+)(?:_|/|$)")
_SCOPE2_SITES = {
    "resid_post": "hook_resid_post",
    "mlp_out": "hook_mlp_out",
    "attn_out": "attn.hook_z",  # the input of o_proj, the concatenated heads' outputs
    "transcoder": "ln2.hook_normalized",
}
_SCOPE2_OUT = {"transcoder": "hook_mlp_out"}
# Gemma Scope: the site is in the repository's name (gemma-scope-2b-pt-res), the layer a folder (layer_12)
_SCOPE1 = re.compile(r"gemma-scope-[\w.-]+?-(res|mlp|att)(?:-canonical)?(?:/|$)")
_SCOPE1_SITES = {"res": "hook_resid_post", "mlp": "hook_mlp_out", "att": "attn.hook_z"}
_LAYER = re.compile(r"(?:^|/)layer_(\d+)(?:/|$)")


def checkpoint_hook_name(local: Path, path: str) -> str | None:
    """The hook name the checkpoint at ``local`` (``path`` as the matrix gives it) declares; None if none.

    Reads its config files, never its weights; a config that is not valid JSON or YAML raises the
    loaders' CheckpointError."""
    folder = local if local.is_dir() else local.parent
    for name in CONFIG_FILES:
        if (folder / name).is_file():
            found = _from_config(read_config(folder / name))
            if found:
                return found
    return _from_path(path) or _from_path(local.as_posix())


def checkpoint_hook_name_out(local: Path | None, path: str) -> str | None:
    """The hook name a transcoder's checkpoint writes (``local``: its files, None to read ``path`` alone); None
    for an SAE or when nothing says. Reads config files, never weights (CheckpointError for a corrupt one)."""
    if local is not None:
        folder = local if local.is_dir() else local.parent
        for name in CONFIG_FILES:
            if (folder / name).is_file():
                cfg = read_config(folder / name)
                out = _from_config(cfg, CONFIG_KEYS_OUT)
                if out is not None and out != _from_config(cfg):
                    return out
    for text in (path, local.as_posix() if local is not None else ""):
        m = _SCOPE2.search(text.replace("\\", "/").rstrip("/"))
        if m and m.group(1) in _SCOPE2_OUT:
            return f"blocks.{m.group(2)}.{_SCOPE2_OUT[m.group(1)]}"
    return None


def _from_config(cfg: dict[str, Any], keys: tuple[str, ...] = CONFIG_KEYS) -> str | None:
    meta: dict[str, Any] = cfg["metadata"] if isinstance(cfg.get("metadata"), dict) else {}
    for key in keys:
        for source in (meta, cfg):
            value = source.get(key)
            if isinstance(value, str) and value.strip():
                return value.strip()
    return None


def _from_path(text: str) -> str | None:
    text = text.replace("\\", "/").rstrip("/")
    if m := _SCOPE2.search(text):
        return f"blocks.{m.group(2)}.{_SCOPE2_SITES[m.group(1)]}"
    site, layer = _SCOPE1.search(text), _LAYER.search(text)
    if site and layer:
        return f"blocks.{layer.group(1)}.{_SCOPE1_SITES[site.group(1)]}"
    last = text.rsplit("/", 1)[-1]
    return last if _TL.fullmatch(last) or _HF.fullmatch(last) else None


def to_hookpoint(name: str) -> str:
    """The hf-causal-lm hook point of a checkpoint's hook name; ValueError saying why when there is none."""
    if m := _TL.fullmatch(name):
        layer, site = int(m.group(1)), m.group(2)
        if site == "hook_resid_pre":
            if layer == 0:
                raise ValueError("block 0's hook_resid_pre is the embeddings, which are no hook point")
            return f"layers.{layer - 1}"
        if site in ("hook_mlp_in", "hook_resid_mid"):
            raise ValueError(f"{site} is the residual stream before the MLP's norm, which no module outputs")
        if site not in _TL_SITES:
            raise ValueError("not a TransformerLens hook saebench reads")
        return f"layers.{layer}{_TL_SITES[site]}"
    if m := _HF.fullmatch(name):
        site = (m.group(2) or "").removesuffix("output").removesuffix(".")
        if site in _HF_SITES:
            return f"layers.{m.group(1)}{_HF_SITES[site]}"
    raise ValueError("not a TransformerLens hook name or a Hugging Face module path saebench knows")
