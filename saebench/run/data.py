"""Fixed-length token contexts from a data source: the evaluation tokens every cell shares."""

from __future__ import annotations

import math

import torch

from saebench.errors import ConfigError
from saebench.interfaces import DataSource, ModelAdapter


def make_contexts(adapter: ModelAdapter, source: DataSource, context_length: int, n_tokens: int) -> torch.Tensor:
    """LongTensor [ceil(n_tokens / context_length), context_length] of token ids.

    Documents are tokenised in order and joined with the model's EOS id between them (when it
    has one); the stream is cut into pieces of ``context_length - 1`` tokens, each context
    starting with BOS (or of ``context_length`` tokens when the model has no BOS). Deterministic
    for a deterministic source. A source that runs dry raises ConfigError: never a short run.
    """
    if context_length < 2 or n_tokens < 1:
        raise ConfigError(
            f"context_length must be >= 2 and tokens >= 1, got {context_length} and {n_tokens}", where="data"
        )
    bos, eos = adapter.bos_token_id, adapter.eos_token_id
    n_contexts = math.ceil(n_tokens / context_length)
    piece = context_length - 1 if bos is not None else context_length
    needed = n_contexts * piece
    chunks: list[list[int]] = []
    have = 0
    for doc in source.documents():
        ids = adapter.tokenize(doc)
        if not ids:
            continue
        if chunks and eos is not None:
            chunks.append([eos])
            have += 1
        chunks.append(ids)
        have += len(ids)
        if have >= needed:
            break
    if have < needed:
        name = getattr(source, "name", "") or type(source).__name__
        raise ConfigError(
            f"data source {name!r} yielded only {have} tokens, fewer than the {needed} requested "
            f"({n_contexts} contexts of {context_length} tokens)",
            where="data",
        )
    stream = torch.tensor([t for c in chunks for t in c][:needed], dtype=torch.long).view(n_contexts, piece)
    if bos is not None:
        stream = torch.cat([torch.full((n_contexts, 1), bos, dtype=torch.long), stream], dim=1)
    return stream
