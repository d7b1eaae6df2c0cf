"""The activation cache: activations at one hook point for one set of contexts, on disk.

A cache folder holds ``contexts.safetensors`` (the token ids [n_contexts, T]), shards
``shard_00000.safetensors`` ... with the activations [tokens, d] of the non-special positions
(BOS/EOS/PAD removed) in context order, and ``manifest.json``, written last: a folder without a
manifest is an interrupted write and is rebuilt. Shards bound memory whatever the token count;
one forward pass fills the caches of every hook point a model needs. Shards are float32, or the
matrix's ``cache_dtype`` (bfloat16 halves the disk and the reads); batches are float32 either way.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor

from saebench.files import private_name, replace_folder

FORMAT = 1
#: floats per shard (64 MiB of fp32)
SHARD_ELEMENTS = 2**24
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def cache_key(**fields: Any) -> str:
    """A short stable hash of what determines a cache's content."""
    blob = json.dumps(fields, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:20]


class ActivationCache:
    """A complete cache folder (see the module docstring)."""

    def __init__(self, folder: Path):
        self.folder = Path(folder)
        self.manifest = json.loads((self.folder / "manifest.json").read_text())
        self.n_tokens: int = self.manifest["n_tokens"]
        self.d: int = self.manifest["d"]

    @staticmethod
    def exists(folder: Path) -> bool:
        return (Path(folder) / "manifest.json").is_file()

    def tokens(self) -> Tensor:
        return load_file(str(self.folder / "contexts.safetensors"))["tokens"]

    def token_contexts(self, special_mask: Callable[[Tensor], Tensor] | None = None) -> Tensor | None:
        """[n_tokens] int64: the context of each cached row. Caches written before the manifest counted
        tokens per context need the adapter's ``special_mask`` to recount them (None without it)."""
        counts = self.manifest.get("context_tokens")
        if counts is None:
            if special_mask is None:
                return None
            counts = (~special_mask(self.tokens())).sum(dim=1).tolist()
        ids = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts, dtype=torch.int64))
        if ids.numel() != self.n_tokens:
            raise ValueError(f"{self.folder}: {ids.numel()} tokens by context, {self.n_tokens} cached")
        return ids

    def batches(self, batch_tokens: int, max_tokens: int | None = None) -> Iterator[Tensor]:
        """Batches [≤ batch_tokens, d] in cache order; every batch is full except possibly the last."""
        budget = self.n_tokens if max_tokens is None else min(max_tokens, self.n_tokens)
        carry: Tensor | None = None
        for shard in self.manifest["shards"]:
            if budget <= 0:
                break
            acts = load_file(str(self.folder / shard["file"]))["acts"][:budget].float()  # a no-op on fp32 shards
            budget -= acts.shape[0]
            if carry is not None:
                acts = torch.cat([carry, acts])
            full = acts.shape[0] // batch_tokens * batch_tokens
            for start in range(0, full, batch_tokens):
                yield acts[start : start + batch_tokens]
            carry = acts[full:] if full < acts.shape[0] else None
        if carry is not None and carry.shape[0]:
            yield carry


class _ShardWriter:
    def __init__(self, folder: Path, d: int, dtype: torch.dtype = torch.float32):
        self.folder, self.d, self.dtype = folder, d, dtype
        self.rows = max(1, SHARD_ELEMENTS // d)
        self.buffer: list[Tensor] = []
        self.buffered = 0
        self.shards: list[dict[str, Any]] = []

    def add(self, acts: Tensor) -> None:
        self.buffer.append(acts)
        self.buffered += acts.shape[0]
        while self.buffered >= self.rows:
            joined = torch.cat(self.buffer)
            self._write(joined[: self.rows])
            rest = joined[self.rows :]
            self.buffer, self.buffered = ([rest], rest.shape[0]) if rest.shape[0] else ([], 0)

    def close(self) -> None:
        if self.buffered:
            self._write(torch.cat(self.buffer))
        self.buffer, self.buffered = [], 0

    def _write(self, acts: Tensor) -> None:
        name = f"shard_{len(self.shards):05d}.safetensors"
        save_file({"acts": acts.to(self.dtype).contiguous()}, str(self.folder / name))
        self.shards.append({"file": name, "tokens": int(acts.shape[0])})


def build_caches(
    adapter: Any,
    contexts: Tensor,
    folders: dict[str, Path],
    *,
    batch_contexts: int = 8,
    describe: dict[str, Any] | None = None,
    progress: Callable[[int], None] | None = None,
    dtype: str = "float32",
) -> dict[str, ActivationCache]:
    """One pass of ``adapter`` over ``contexts`` filling a cache folder per hook point in ``folders``, its
    shards in ``dtype`` (float32, bfloat16 or float16)."""
    tmp = {h: private_name(f) for h, f in folders.items()}  # never another run's temporary folder
    try:
        for folder in tmp.values():
            folder.mkdir(parents=True)
        return _fill(adapter, contexts, folders, tmp, batch_contexts, describe, progress, dtype)
    finally:
        for folder in tmp.values():
            shutil.rmtree(folder, ignore_errors=True)


def _fill(
    adapter: Any,
    contexts: Tensor,
    folders: dict[str, Path],
    tmp: dict[str, Path],
    batch_contexts: int,
    describe: dict[str, Any] | None,
    progress: Callable[[int], None] | None,
    dtype: str,
) -> dict[str, ActivationCache]:
    hookpoints: Sequence[str] = list(folders)
    writers = {h: _ShardWriter(tmp[h], adapter.d_model(h), DTYPES[dtype]) for h in hookpoints}
    per_context: list[int] = []
    for start in range(0, contexts.shape[0], batch_contexts):
        batch = contexts[start : start + batch_contexts]
        keep = ~adapter.special_mask(batch)
        per_context += keep.sum(dim=1).tolist()
        captured = adapter.capture(batch, hookpoints)
        for h in hookpoints:
            writers[h].add(captured[h][keep].float())
        if progress is not None:
            progress(int(batch.numel()))
    caches = {}
    for h in hookpoints:
        writers[h].close()
        save_file({"tokens": contexts.contiguous()}, str(tmp[h] / "contexts.safetensors"))
        manifest = {
            "format": FORMAT,
            "hookpoint": h,
            "n_tokens": sum(s["tokens"] for s in writers[h].shards),
            "d": writers[h].d,
            "dtype": dtype,
            "shards": writers[h].shards,
            "n_contexts": int(contexts.shape[0]),
            "context_tokens": per_context,
            "describe": describe or {},
        }
        (tmp[h] / "manifest.json").write_text(json.dumps(manifest, indent=1))
        replace_folder(tmp[h], folders[h])
        caches[h] = ActivationCache(folders[h])
    return caches
