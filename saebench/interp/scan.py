"""The passes over the cached activations that latent records are built from (see saebench.interp.records).

A pass keeps only sparse entries: (window, latent, max) for a chunk's latents, each neighbour's few
strongest windows, and the chunk's non-zero token activations up to ``TOKEN_BUDGET``; past that
budget a second pass re-encodes the batches that hold a chosen example (the same batches, so the
values are bit-identical). Windows are cut the same way whatever the latents, so a per-group max
is final and a latent's record does not depend on the other latents of its chunk.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import numpy as np
import torch
from torch import Tensor

from saebench.errors import ShapeError
from saebench.metrics import sparse_parts

#: tokens per batch read from the activation cache
BATCH_TOKENS = 8192
#: non-zero token activations kept in the first pass (~20 bytes each); past it, a second pass fetches
#: only the chosen examples' tokens
TOKEN_BUDGET = 1 << 23
#: neighbours' window entries buffered before they are cut to each neighbour's strongest windows
NEIGHBOUR_BUFFER = 1 << 20
#: selected latents per block when computing decoder cosines (bounds a [block, d_sae] temporary)
_COSINE_BLOCK = 256


class Windows:
    """Where each cached activation row sits: its window and its offset in that window."""

    def __init__(self, tokens: Tensor, special_mask: Tensor, size: int):
        if tokens.ndim != 2:
            raise ShapeError(f"tokens must be [contexts, length], got {list(tokens.shape)}", "tokens")
        if tuple(special_mask.shape) != tuple(tokens.shape):
            raise ShapeError(
                f"special_mask is {list(special_mask.shape)} but tokens are {list(tokens.shape)}", "special_mask"
            )
        self.tokens = tokens.cpu()
        self.special = special_mask.cpu().bool()
        n_ctx, self.length = tokens.shape
        self.size = max(1, min(size, self.length))
        self.per_ctx = math.ceil(self.length / self.size)
        self.n = n_ctx * self.per_ctx
        self.flat = (~special_mask.cpu().bool()).reshape(-1).nonzero().squeeze(1)
        self.n_rows = int(self.flat.numel())
        w, _ = self.rows(0, self.n_rows)
        #: windows with at least one non-special token: the only ones that may be negatives
        self.eligible = np.bincount(w.numpy(), minlength=self.n) > 0

    def rows(self, start: int, count: int) -> tuple[Tensor, Tensor]:
        p = self.flat[start : start + count]
        t = p % self.length
        return (p // self.length) * self.per_ctx + t // self.size, t % self.size

    def ids(self, w: int) -> list[int]:
        start = (w % self.per_ctx) * self.size
        return self.tokens[w // self.per_ctx, start : start + self.size].tolist()

    def special_at(self, w: int) -> list[bool]:
        start = (w % self.per_ctx) * self.size
        return self.special[w // self.per_ctx, start : start + self.size].tolist()


def _groups(
    batches: Callable[[int], Iterator[Tensor]], win: Windows, progress: Callable[[int], None] | None
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(activations, window, offset) of consecutive rows, cut at window boundaries: each window lies
    in one group, so a per-group max is final. The cut depends only on the cache, never on latents."""
    done, carry = 0, None
    for x in batches(BATCH_TOKENS):
        m = x.shape[0]
        if m == 0:
            continue
        if done + m > win.n_rows:
            raise ShapeError(
                f"the activations have more rows than the {win.n_rows} non-special positions of the tokens",
                "activations",
            )
        w, off = win.rows(done, m)
        done += m
        if progress is not None:
            progress(m)
        if carry is not None:
            x, w, off = (torch.cat([a, b]) for a, b in zip(carry, (x, w, off)))
        cut = int(torch.searchsorted(w, w[-1:]))
        if cut:
            yield x[:cut], w[:cut], off[:cut]
        carry = (x[cut:], w[cut:], off[cut:])
    if done != win.n_rows:
        raise ShapeError(
            f"the activations have {done} rows but the tokens have {win.n_rows} non-special positions", "activations"
        )
    if carry is not None and carry[0].shape[0]:
        yield carry


def _active(sae, x: Tensor, lookup: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(row, tracked position, value) of every non-zero activation of a tracked latent in x, by row."""
    found = []
    for s, values, indices in sparse_parts(sae, x):  # row ranges, each padded to its own widest row
        pos = lookup[indices.cpu()]
        values = values.cpu().float()
        keep = (values != 0) & (pos >= 0)
        found.append((keep.nonzero()[:, 0] + s.start, pos[keep], values[keep]))
    rows, pos, vals = (torch.cat(t) for t in zip(*found))
    return rows, pos, vals


def count_windows(sae, batches, win, progress) -> Tensor:
    """Activating windows per latent (a window counts once however many of its tokens fire)."""
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    everything = torch.arange(sae.cfg.d_sae)
    for x, w, _ in _groups(batches, win, progress):
        rows, pos, _ = _active(sae, x, everything)
        pairs = torch.unique(w[rows].long() * sae.cfg.d_sae + pos)  # one (window, latent) pair per window
        counts += torch.bincount(pairs % sae.cfg.d_sae, minlength=sae.cfg.d_sae)
    return counts


def neighbours(W_dec: Tensor, latents: Sequence[int], n: int) -> np.ndarray:
    """[len(latents), n] nearest other latents by decoder cosine, nearest first."""
    n = min(n, W_dec.shape[0] - 1)
    if n <= 0 or not latents:
        return np.zeros((len(latents), 0), dtype=np.int64)
    unit = torch.nn.functional.normalize(W_dec.detach().float(), dim=1)
    out = []
    for start in range(0, len(latents), _COSINE_BLOCK):
        ids = torch.tensor(latents[start : start + _COSINE_BLOCK], device=unit.device)
        cos = unit[ids] @ unit.T
        cos[torch.arange(len(ids), device=unit.device), ids] = -math.inf
        out.append(cos.topk(n, dim=1).indices.cpu())
    return torch.cat(out).numpy()


def _top(pos: np.ndarray, win: np.ndarray, mx: np.ndarray, m: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Each position's ``m`` strongest windows (ties: lower window first), ordered by position then strength."""
    order = np.lexsort((win, -mx, pos))
    pos, win, mx = pos[order], win[order], mx[order]
    first = np.searchsorted(pos, pos, side="left")
    keep = np.arange(pos.size) - first < m
    return pos[keep], win[keep], mx[keep]


def scan(sae, batches, win: Windows, chunk: list[int], others: list[int], m: int, progress):
    """Pass 1. Per chunk latent: its activating windows (ascending) with their max, and its token count.
    Per neighbour (chunk latent or not): its ``m`` strongest windows, strongest first. Also the chunk's
    non-zero token activations as (window·c + position, offset, value), or None past TOKEN_BUDGET."""
    tracked = chunk + others
    c, t = len(chunk), len(tracked)
    lookup = torch.full((sae.cfg.d_sae,), -1, dtype=torch.long)
    lookup[torch.tensor(tracked, dtype=torch.long)] = torch.arange(t)
    counts = torch.zeros(c, dtype=torch.long)
    mine: list[tuple[np.ndarray, ...]] = []
    theirs: list[tuple[np.ndarray, ...]] = []
    tokens: list[tuple[np.ndarray, ...]] | None = []
    stored, buffered, budget = 0, 0, NEIGHBOUR_BUFFER
    for x, w, off in _groups(batches, win, progress):
        rows, pos, val = _active(sae, x, lookup)
        own_token = pos < c
        counts += torch.bincount(pos[own_token], minlength=c)
        if tokens is not None:
            r = rows[own_token]
            tokens.append(((w[r] * c + pos[own_token]).numpy(), off[r].numpy(), val[own_token].numpy()))
            stored += tokens[-1][0].size
            tokens = tokens if stored <= TOKEN_BUDGET else None
        keys, inverse = torch.unique(w[rows] * t + pos, return_inverse=True)
        mx = torch.zeros(keys.numel()).scatter_reduce_(0, inverse, val, "amax", include_self=False).numpy()
        p, ww = (keys % t).numpy(), (keys // t).numpy()
        own = p < c
        mine.append((p[own], ww[own], mx[own]))
        if others:
            theirs.append((p[~own], ww[~own], mx[~own]))
            buffered += int((~own).sum())
            if buffered > budget:  # neighbours only need their strongest windows: prune as we go
                theirs = [_top(*_cat(theirs), m)]
                buffered = theirs[0][0].size
                budget = max(NEIGHBOUR_BUFFER, 2 * buffered)  # so that pruning costs O(1) per entry
    p, ww, mx = _cat(mine)
    order = np.lexsort((ww, p))
    p, ww, mx = p[order], ww[order], mx[order]
    bounds = np.searchsorted(p, np.arange(c + 1))
    acts = [(ww[a:b], mx[a:b]) for a, b in zip(bounds[:-1], bounds[1:])]
    tops: dict[int, np.ndarray] = {}
    if m:
        tp, tw, _ = _top(*_cat([(p, ww, mx)] + theirs), m)
        bounds = np.searchsorted(tp, np.arange(t + 1))
        tops = {tracked[i]: tw[a:b] for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:]))}
    return acts, counts.numpy(), tops, None if tokens is None else _cat(tokens)


def _cat(parts: list[tuple[np.ndarray, ...]]) -> tuple[np.ndarray, ...]:
    """Concatenate lists of (int, int, float) array triples, component by component."""
    if not parts:
        return np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32)
    return tuple(np.concatenate(a) for a in zip(*parts))


def fill(sae, batches, win: Windows, chunk: list[int], wanted: np.ndarray, progress) -> tuple[np.ndarray, ...]:
    """Pass 2, when pass 1 could not keep every token: the token entries of the ``wanted`` keys, re-encoding
    only the groups that hold one (the same groups as pass 1, hence bit-identical values)."""
    c = len(chunk)
    need = np.zeros(win.n, dtype=bool)
    need[wanted // c] = True
    lookup = torch.full((sae.cfg.d_sae,), -1, dtype=torch.long)
    lookup[torch.tensor(chunk, dtype=torch.long)] = torch.arange(c)
    found = []
    for x, w, off in _groups(batches, win, progress):
        if need[w.numpy()].any():
            rows, pos, val = _active(sae, x, lookup)
            key = (w[rows] * c + pos).numpy()
            hit = np.isin(key, wanted)
            found.append((key[hit], off[rows].numpy()[hit], val.numpy()[hit]))
    return _cat(found)


def token_values(entries: tuple[np.ndarray, ...], wanted: np.ndarray, size: int) -> np.ndarray:
    """[len(wanted), size] per-token activations of each wanted key from (key, offset, value) entries."""
    key, off, val = entries
    out = np.zeros((wanted.size, size), dtype=np.float32)
    if wanted.size:
        order = np.argsort(wanted)
        at = np.minimum(np.searchsorted(wanted[order], key), wanted.size - 1)
        hit = wanted[order][at] == key
        out[order[at[hit]], off[hit]] = val[hit]
    return out
