"""Latent records: the example windows an explainer and the interpretability scorers see of each latent.

Each evaluation context is cut into consecutive windows of ``window`` tokens (the last window of a
context is shorter when the context length is not a multiple). For every chosen latent:

- its *activating* windows (max activation > 0) are ranked by max activation and binned into
  ``quantiles`` equal-count bins (0 = weakest). Each bin is shuffled once and cut into a train part
  and a test part, so train and test are disjoint by construction; both are stratified over the bins.
- *negatives* are windows where the latent is 0 on every token: "hard" ones where its nearest
  decoder neighbours (cosine of ``W_dec`` rows) are strongest, the rest drawn at random from the
  windows with at least one non-special token. The four sets share no window.
- a latent with fewer than ``min_activating`` activating windows gets no record: it is listed in
  ``RecordSet.skipped`` with its count.

Cost: the chosen latents are handled ``latent_chunk`` at a time, one pass of ``sae.encode_sparse``
over the cached activations per chunk. A pass keeps only sparse entries: (window, latent, max) for
the chunk's latents, each neighbour's few strongest windows, and the chunk's non-zero token
activations up to ``TOKEN_BUDGET``; past that budget a second pass re-encodes the batches that hold
a chosen example (the same batches, so the values are bit-identical). ``latents: N`` adds one
counting pass unless the caller has firing counts. Randomness comes from a generator seeded by
(seed, latent), so a latent's record does not depend on ``latent_chunk`` or on the other latents.
"""

from __future__ import annotations

import gzip
import math
import os
import time
from pathlib import Path
from typing import Any, Callable, Iterator, Literal, Mapping, Sequence

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from saebench.errors import ConfigError, SaebenchError, ShapeError, validation_error
from saebench.interfaces import Example, LatentRecord

#: tokens per batch read from the activation cache
BATCH_TOKENS = 8192
#: non-zero token activations kept in the first pass (~20 bytes each); past it, a second pass fetches
#: only the chosen examples' tokens
TOKEN_BUDGET = 1 << 23
#: neighbours' window entries buffered before they are cut to each neighbour's strongest windows
NEIGHBOUR_BUFFER = 1 << 20
#: selected latents per block when computing decoder cosines (bounds a [block, d_sae] temporary)
_COSINE_BLOCK = 256


class RecordConfig(BaseModel):
    """Which latents get records and how their examples are drawn (the matrix's ``interp:`` options)."""

    model_config = ConfigDict(extra="forbid")

    latents: int | list[int] | Literal["all"] = Field(
        100, description="N: a seeded sample of N live latents; a list: exactly those; all: every latent")
    seed: int = 0
    window: int = Field(32, ge=1, description="tokens per example window")
    n_train: int = Field(40, ge=1, description="activating examples shown to the explainer")
    n_test: int = Field(50, ge=1, description="activating examples for the scorers")
    n_negatives: int = Field(50, ge=0, description="non-activating examples for the scorers")
    # explainers mostly ignore negatives; a contrastive prompt needs a handful, not as many as the scorers
    n_train_negatives: int = Field(20, ge=0, description="non-activating examples for contrastive explainers")
    hard_negative_fraction: float = Field(0.5, ge=0, le=1, description="share of each negative set that is hard")
    n_neighbours: int = Field(10, ge=0, description="decoder-cosine neighbours whose windows give hard negatives")
    quantiles: int = Field(10, ge=1, description="activation-quantile bins for stratified sampling")
    # 20 windows split 9:11 at 40:50, about the least that scores a latent; delphi's 200 suits its 10M
    # tokens, while a quickstart's ~20k tokens make only ~600 windows of 32
    min_activating: int = Field(20, ge=2, description="fewer activating windows: the latent is skipped")
    latent_chunk: int = Field(4096, ge=1, description="latents per pass over the cache (bounds memory)")

    @classmethod
    def from_options(cls, options: Mapping[str, Any], where: str = "interp") -> "RecordConfig":
        try:
            return cls(**options)
        except ValidationError as exc:
            raise validation_error(exc, where) from None


class RecordSet(BaseModel):
    """The records of one SAE on one evaluation set, with what was skipped and what it cost."""

    records: list[LatentRecord]
    skipped: dict[int, int] = Field(description="latent -> its activating windows, too few for a record")
    n_windows: int
    n_tokens: int = Field(description="evaluation tokens (non-special positions)")
    passes: int = Field(description="passes over the cached activations")
    n_alive: int | None = Field(None, description="latents active in at least one window (when a sample was drawn)")
    n_eligible: int | None = Field(None, description="latents with at least min_activating windows (when a sample was drawn)")
    seconds: dict[str, float] = Field(default_factory=dict)
    config: RecordConfig

    def save(self, path: str | Path) -> None:
        """Write JSON (gzip when ``path`` ends in .gz) through a temporary file, so readers never see half."""
        path = Path(path)
        data = self.model_dump_json().encode()
        if path.suffix == ".gz":
            data = gzip.compress(data, compresslevel=6, mtime=0)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)

    @classmethod
    def load(cls, path: str | Path) -> "RecordSet":
        data = Path(path).read_bytes()
        try:
            return cls.model_validate_json(gzip.decompress(data) if data[:2] == b"\x1f\x8b" else data)
        except (ValidationError, OSError, EOFError) as exc:
            problem = f"not a latent-records file ({type(exc).__name__}); delete it to rebuild"
            raise SaebenchError(problem, path) from None


def select_latents(d_sae: int, cfg: RecordConfig, window_counts: Tensor | None = None) -> list[int] | int:
    """The latents ``cfg.latents`` names: an explicit list (checked against ``d_sae``), every latent, or a sample.

    A sample of N is drawn with ``cfg.seed`` among the latents that can be explained: those with at
    least ``cfg.min_activating`` activating windows (``window_counts`` [d_sae]); asking for 100 gives
    100 records whenever 100 latents qualify (all of them when fewer do). Without counts it returns
    the int N and :func:`build_records` counts them in an extra pass. An explicit list or "all" keeps
    every latent asked for and reports the ones with too few windows as skipped.
    """
    spec = cfg.latents
    if spec == "all":
        return list(range(d_sae))
    if isinstance(spec, list):
        return _checked(spec, d_sae)
    if spec < 1:
        raise ConfigError(f"latents must be at least 1, got {spec}", "interp.latents")
    if window_counts is None:
        return spec
    eligible = np.flatnonzero(torch.as_tensor(window_counts).cpu().numpy() >= max(cfg.min_activating, 1))
    rng = np.random.default_rng(cfg.seed)
    return sorted(int(i) for i in rng.choice(eligible, size=min(spec, eligible.size), replace=False))


def _checked(latents: Sequence[int], d_sae: int) -> list[int]:
    if not latents:
        raise ConfigError("the latent list is empty", "interp.latents")
    seen: set[int] = set()
    for i in latents:
        if not 0 <= i < d_sae:
            raise ConfigError(f"latent {i} does not exist: the SAE has latents 0..{d_sae - 1}", "interp.latents")
        if i in seen:
            raise ConfigError(f"latent {i} is listed twice", "interp.latents")
        seen.add(i)
    return [int(i) for i in latents]


def planned_passes(n_latents: int, cfg: RecordConfig, *, counting: bool = False) -> int:
    """The most passes over the cache :func:`build_records` makes: its ``progress`` adds up to
    n_tokens × this (a second pass found unnecessary is reported as done)."""
    return 2 * math.ceil(n_latents / cfg.latent_chunk) + int(counting)


class _Windows:
    """Where each cached activation row sits: its window and its offset in that window."""

    def __init__(self, tokens: Tensor, special_mask: Tensor, size: int):
        if tokens.ndim != 2:
            raise ShapeError(f"tokens must be [contexts, length], got {list(tokens.shape)}", "tokens")
        if tuple(special_mask.shape) != tuple(tokens.shape):
            raise ShapeError(f"special_mask is {list(special_mask.shape)} but tokens are {list(tokens.shape)}",
                             "special_mask")
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


def _groups(batches: Callable[[int], Iterator[Tensor]], win: _Windows,
            progress: Callable[[int], None] | None) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(activations, window, offset) of consecutive rows, cut at window boundaries: each window lies
    in one group, so a per-group max is final. The cut depends only on the cache, never on latents."""
    done, carry = 0, None
    for x in batches(BATCH_TOKENS):
        m = x.shape[0]
        if m == 0:
            continue
        if done + m > win.n_rows:
            raise ShapeError(f"the activations have more rows than the {win.n_rows} non-special positions "
                             "of the tokens", "activations")
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
        raise ShapeError(f"the activations have {done} rows but the tokens have {win.n_rows} non-special positions",
                         "activations")
    if carry is not None and carry[0].shape[0]:
        yield carry


def _active(sae, x: Tensor, lookup: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """(row, tracked position, value) of every non-zero activation of a tracked latent in x."""
    values, indices = sae.encode_sparse(x)
    pos = lookup[indices.cpu()]
    values = values.cpu().float()
    keep = (values != 0) & (pos >= 0)
    return keep.nonzero()[:, 0], pos[keep], values[keep]


def _count(sae, batches, win, progress) -> Tensor:
    """Activating windows per latent (a window counts once however many of its tokens fire)."""
    counts = torch.zeros(sae.cfg.d_sae, dtype=torch.long)
    everything = torch.arange(sae.cfg.d_sae)
    for x, w, _ in _groups(batches, win, progress):
        rows, pos, _ = _active(sae, x, everything)
        pairs = torch.unique(w[rows].long() * sae.cfg.d_sae + pos)  # one (window, latent) pair per window
        counts += torch.bincount(pairs % sae.cfg.d_sae, minlength=sae.cfg.d_sae)
    return counts


def _neighbours(W_dec: Tensor, latents: Sequence[int], n: int) -> np.ndarray:
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


def _scan(sae, batches, win: _Windows, chunk: list[int], others: list[int], m: int, progress):
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


def _allocate(n: int, capacity: np.ndarray) -> np.ndarray:
    """n items spread over bins in proportion to their capacity (largest remainder), never above it."""
    total = int(capacity.sum())
    if total == 0 or n <= 0:
        return np.zeros_like(capacity)
    share = capacity * min(n, total) / total
    out = np.floor(share).astype(np.int64)
    extra = min(n, total) - int(out.sum())
    out[np.argsort(-(share - out), kind="stable")[:extra]] += 1
    return out


def _split_activating(windows, maxes, cfg: RecordConfig, rng) -> tuple[list, list]:
    """Disjoint stratified (window, bin) lists for train and test."""
    n = windows.size
    ranked = windows[np.lexsort((windows, maxes))]  # weakest first
    bins = np.arange(n) * cfg.quantiles // n
    n_train, n_test = cfg.n_train, cfg.n_test
    if n < n_train + n_test:  # too few: split what there is in the configured proportion
        n_train = min(max(round(n * n_train / (n_train + n_test)), 1), n - 1)
        n_test = n - n_train
    sizes = np.bincount(bins, minlength=cfg.quantiles)
    k_train = _allocate(n_train, sizes)
    k_test = _allocate(n_test, sizes - k_train)
    train, test = [], []
    for b in range(cfg.quantiles):
        members = rng.permutation(ranked[bins == b])
        train += [(int(w), b) for w in members[: k_train[b]]]
        test += [(int(w), b) for w in members[k_train[b] : k_train[b] + k_test[b]]]
    return train, test


def _negatives(windows, neighbour_tops: list[np.ndarray], ineligible: np.ndarray, n_windows: int,
               cfg: RecordConfig, rng) -> tuple[list, list]:
    """(window, kind) lists for test and train negatives; the test set is filled first when windows run short."""
    f = cfg.hard_negative_fraction
    hard_test, hard_train = round(f * cfg.n_negatives), round(f * cfg.n_train_negatives)
    # round robin over the neighbours, nearest first: each one's strongest window, then each one's second...
    rank = np.concatenate([np.arange(a.size) for a in neighbour_tops] + [np.zeros(0, np.int64)])
    cand = np.concatenate(list(neighbour_tops) + [np.zeros(0, np.int64)])[np.argsort(rank, kind="stable")]
    cand = cand[~np.isin(cand, windows)]
    cand = cand[np.sort(np.unique(cand, return_index=True)[1])][: hard_test + hard_train]
    cand = rng.permutation(cand)
    test = [(int(w), "hard") for w in cand[:hard_test]]
    train = [(int(w), "hard") for w in cand[hard_test:]]
    blocked = np.union1d(np.union1d(windows, cand), ineligible)
    free = n_windows - blocked.size
    want_test, want_train = cfg.n_negatives - len(test), cfg.n_train_negatives - len(train)
    ranks = rng.choice(max(free, 0), size=min(max(free, 0), want_test + want_train), replace=False)
    # the r-th window not in ``blocked`` is r plus the number of blocked windows before it
    picked = ranks + np.searchsorted(blocked - np.arange(blocked.size), ranks, side="right")
    test += [(int(w), "random") for w in picked[:want_test]]
    train += [(int(w), "random") for w in picked[want_test:]]
    return test, train


def _fill(sae, batches, win: _Windows, chunk: list[int], wanted: np.ndarray, progress) -> tuple[np.ndarray, ...]:
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


def _values(entries: tuple[np.ndarray, ...], wanted: np.ndarray, size: int) -> np.ndarray:
    """[len(wanted), size] per-token activations of each wanted key from (key, offset, value) entries."""
    key, off, val = entries
    out = np.zeros((wanted.size, size), dtype=np.float32)
    if wanted.size:
        order = np.argsort(wanted)
        at = np.minimum(np.searchsorted(wanted[order], key), wanted.size - 1)
        hit = wanted[order][at] == key
        out[order[at[hit]], off[hit]] = val[hit]
    return out


def build_records(
    sae,
    batches: Callable[[int], Iterator[Tensor]],
    tokens: Tensor,
    special_mask: Tensor,
    token_strings: Callable[[Sequence[int]], list[str]],
    latents: Sequence[int] | int | Literal["all"],
    cfg: RecordConfig,
    progress: Callable[[int], None] | None = None,
    *,
    window_counts: Tensor | None = None,
) -> RecordSet:
    """Records of ``latents``: a list, "all", or an int N: N explainable latents sampled with ``cfg.seed``.

    ``batches(n)`` yields the cached activations [≤ n, d] of the non-special positions of ``tokens``
    [contexts, length] in context order; ``special_mask`` marks the others (BOS/EOS/PAD), which
    have activation 0 and keep their token string. ``window_counts`` [d_sae] (activating windows
    per latent) spares the counting pass a sample needs. ``progress(n)`` gets every batch's token
    count, over :func:`planned_passes` passes in all. Records come in the order of ``latents``.
    """
    clock = time.perf_counter()
    seconds: dict[str, float] = {}

    def lap(stage: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        seconds[stage] = seconds.get(stage, 0.0) + now - clock
        clock = now

    win = _Windows(tokens, special_mask, cfg.window)
    ineligible = np.flatnonzero(~win.eligible)
    passes = 0
    n_alive = n_eligible = None
    with torch.no_grad():
        if isinstance(latents, int) and window_counts is None:
            window_counts = _count(sae, batches, win, progress)
            passes += 1
        spec = latents if isinstance(latents, (int, str)) else list(latents)
        latents = select_latents(sae.cfg.d_sae, cfg.model_copy(update={"latents": spec}), window_counts)
        if window_counts is not None:
            n_alive = int((window_counts > 0).sum())
            n_eligible = int((window_counts >= max(cfg.min_activating, 1)).sum())
        f = cfg.hard_negative_fraction
        # keep each neighbour's windows to several times the hard negatives wanted: the latent itself fires
        # in some of them (decoder neighbours often fire together)
        top_m = 4 * (round(f * cfg.n_negatives) + round(f * cfg.n_train_negatives))
        neighbours = _neighbours(sae.W_dec, latents, cfg.n_neighbours if top_m else 0)
        lap("select")
        records: list[LatentRecord] = []
        skipped: dict[int, int] = {}
        for start in range(0, len(latents), cfg.latent_chunk):
            chunk = latents[start : start + cfg.latent_chunk]
            nbrs = neighbours[start : start + cfg.latent_chunk]
            others = sorted(set(nbrs.ravel().tolist()) - set(chunk))
            acts, counts, tops, token_entries = _scan(sae, batches, win, chunk, others, top_m, progress)
            passes += 1
            lap("scan")
            plans = {}
            for i, latent in enumerate(chunk):
                windows, maxes = acts[i]
                if windows.size < cfg.min_activating:
                    skipped[latent] = int(windows.size)
                    continue
                rng = np.random.default_rng([cfg.seed, latent])
                train, test = _split_activating(windows, maxes, cfg, rng)
                test_neg, train_neg = _negatives(windows, [tops[int(j)] for j in nbrs[i]], ineligible, win.n, cfg, rng)
                plans[i] = (train, test, train_neg, test_neg)
            wanted = [(i, w) for i, plan in plans.items() for w, _ in plan[0] + plan[1]]
            keys = np.array([w * len(chunk) + i for i, w in wanted], dtype=np.int64)
            lap("sample")
            if token_entries is None:
                token_entries = _fill(sae, batches, win, chunk, keys, progress)
                passes += 1
            elif progress is not None:
                progress(win.n_rows)  # the planned second pass was not needed
            values = _values(token_entries, keys, win.size)
            lap("fill")
            row = {key: r for r, key in enumerate(wanted)}
            strings: dict[int, list[str]] = {}  # per chunk: windows recur across latents

            def example(i: int, w: int, kind: str, quantile: int | None) -> Example:
                if w not in strings:
                    ids = win.ids(w)
                    strings[w] = list(token_strings(ids))
                    if len(strings[w]) != len(ids):
                        raise ShapeError(f"token_strings gave {len(strings[w])} strings for {len(ids)} tokens",
                                         "token_strings")
                    # BOS/EOS/PAD are not text: shown to a judge, "<bos>" is noise it may try to explain
                    strings[w] = ["" if sp else t for t, sp in zip(strings[w], win.special_at(w))]
                n = len(strings[w])
                acts_w = values[row[(i, w)], :n].tolist() if kind == "activating" else [0.0] * n
                return Example(tokens=strings[w], activations=acts_w, window=w, kind=kind, quantile=quantile)

            for i, (train, test, train_neg, test_neg) in plans.items():
                windows, maxes = acts[i]
                strongest = lambda pairs: sorted(pairs, key=lambda e: (-e.max_activation, e.window))  # noqa: E731
                records.append(LatentRecord(
                    latent=chunk[i], n_activating=int(windows.size), density=float(counts[i]) / max(win.n_rows, 1),
                    max_activation=float(maxes.max()),
                    train=strongest([example(i, w, "activating", q) for w, q in train]),
                    test=strongest([example(i, w, "activating", q) for w, q in test]),
                    train_negatives=[example(i, w, kind, None) for w, kind in train_neg],
                    test_negatives=[example(i, w, kind, None) for w, kind in test_neg]))
            lap("examples")
    return RecordSet(records=records, skipped=skipped, n_windows=win.n, n_tokens=win.n_rows, passes=passes,
                     seconds=seconds, config=cfg, n_alive=n_alive, n_eligible=n_eligible)
