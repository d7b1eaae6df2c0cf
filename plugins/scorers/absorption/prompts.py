"""The first-letter prompts and their activations (step 2 of the scorer's docstring): in-context
example lines, then the word; the hook point's activation is read at the word's last token."""

from __future__ import annotations

import random
from collections.abc import Sequence

import torch
from torch import Tensor

import saebench
from saebench.errors import ShapeError


def icl_line(word: str) -> str:
    return f" {word} has the first letter: {word[0].upper()}"


def build_prompts(
    adapter: saebench.ModelAdapter, words: Sequence[str], train: Sequence[str], icl_examples: int, seed: int
) -> list[list[int]]:
    """The token ids of each word's prompt: BOS (when the adapter has one), ``icl_examples`` example lines
    (train words other than the word, a seeded sample per prompt) joined by newlines and a newline,
    then ``" word"``. The pieces are tokenised separately, so the word is exactly its vocabulary tokens."""
    rng = random.Random(seed * 1_000_003 + 17)
    prompts: list[list[int]] = []
    bos = [adapter.bos_token_id] if adapter.bos_token_id is not None else []
    for word in words:
        ids = list(bos)
        if icl_examples:
            pool = [w for w in train if w != word]
            examples = rng.sample(pool, min(icl_examples, len(pool)))
            if examples:
                ids += adapter.tokenize("\n".join(icl_line(e) for e in examples) + "\n")
        ids += adapter.tokenize(" " + word)
        prompts.append(ids)
    return prompts


def last_token_activations(
    adapter: saebench.ModelAdapter, hookpoint: str, prompts: Sequence[list[int]], batch_prompts: int
) -> Tensor:
    """[len(prompts), d] float32: the hook point's activation at each prompt's last token.

    Prompts run ``batch_prompts`` at a time, shortest first, right-padded (padding after the last
    token cannot change it in a causal model).
    """
    pad = next((i for i in (adapter.pad_token_id, adapter.eos_token_id) if i is not None), 0)
    order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
    out: Tensor | None = None
    for start in range(0, len(order), batch_prompts):
        idx = order[start : start + batch_prompts]
        width = max(len(prompts[i]) for i in idx)
        tokens = torch.full((len(idx), width), pad, dtype=torch.int64)
        for r, i in enumerate(idx):
            tokens[r, : len(prompts[i])] = torch.tensor(prompts[i], dtype=torch.int64)
        acts = adapter.capture(tokens, [hookpoint])[hookpoint]
        if acts.ndim != 3 or tuple(acts.shape[:2]) != tuple(tokens.shape):
            raise ShapeError(f"capture gave {list(acts.shape)} for tokens {list(tokens.shape)}", hookpoint)
        last = torch.tensor([len(prompts[i]) - 1 for i in idx])
        rows = acts[torch.arange(len(idx)), last].to(torch.float32)
        if out is None:
            out = torch.empty(len(prompts), rows.shape[1], dtype=torch.float32)
        out[torch.tensor(idx)] = rows
    assert out is not None
    return out
