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
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from torch import Tensor

from saebench.errors import ConfigError, SaebenchError, ShapeError, validation_error
from saebench.files import write_atomic
from saebench.interp.scan import Windows, count_windows, fill, neighbours, scan, token_values
from saebench.interp.types import Example, LatentRecord


class RecordConfig(BaseModel):
    """Which latents get records and how their examples are drawn (the matrix's ``interp:`` options)."""

    model_config = ConfigDict(extra="forbid")

    latents: int | list[int] | Literal["all"] = Field(
        100, description="N: a seeded sample of N live latents; a list: exactly those; all: every latent"
    )
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
    def from_options(cls, options: Mapping[str, Any], where: str = "interp") -> RecordConfig:
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
    n_eligible: int | None = Field(
        None, description="latents with at least min_activating windows (when a sample was drawn)"
    )
    seconds: dict[str, float] = Field(default_factory=dict)
    config: RecordConfig

    def save(self, path: str | Path) -> None:
        """Write JSON (gzip when ``path`` ends in .gz) through a temporary file, so readers never see half."""
        path = Path(path)
        data = self.model_dump_json().encode()
        if path.suffix == ".gz":
            data = gzip.compress(data, compresslevel=6, mtime=0)
        write_atomic(path, data)

    @classmethod
    def load(cls, path: str | Path) -> RecordSet:
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


def _negatives(
    windows, neighbour_tops: list[np.ndarray], ineligible: np.ndarray, n_windows: int, cfg: RecordConfig, rng
) -> tuple[list, list]:
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


@dataclass(frozen=True)
class Corpus:
    """The evaluation contexts as examples show them: token ids [contexts, length], which positions are
    special (BOS/EOS/PAD), and the text of each token (``ModelAdapter.token_strings``)."""

    tokens: Tensor
    special: Tensor
    token_strings: Callable[[Sequence[int]], list[str]]

    @classmethod
    def of(cls, adapter: Any, tokens: Tensor) -> Corpus:
        return cls(tokens, adapter.special_mask(tokens), adapter.token_strings)


def build_records(
    sae,
    batches: Callable[[int], Iterator[Tensor]],
    corpus: Corpus,
    latents: Sequence[int] | int | Literal["all"],
    cfg: RecordConfig,
    progress: Callable[[int], None] | None = None,
    *,
    window_counts: Tensor | None = None,
) -> RecordSet:
    """Records of ``latents``: a list, "all", or an int N: N explainable latents sampled with ``cfg.seed``.

    ``batches(n)`` yields the cached activations [≤ n, d] of the non-special positions of
    ``corpus.tokens`` in context order; the special positions have activation 0 and keep their token
    string. ``window_counts`` [d_sae] (activating windows per latent) spares the counting pass a sample
    needs. ``progress(n)`` gets every batch's token count, over :func:`planned_passes` passes in all.
    Records come in the order of ``latents``.
    """
    clock = _Clock()
    win = Windows(corpus.tokens, corpus.special, cfg.window)
    with torch.no_grad():
        counted = isinstance(latents, int) and window_counts is None
        if counted:
            window_counts = count_windows(sae, batches, win, progress)
        spec = latents if isinstance(latents, (int, str)) else list(latents)
        chosen = select_latents(sae.cfg.d_sae, cfg.model_copy(update={"latents": spec}), window_counts)
        f = cfg.hard_negative_fraction
        # keep each neighbour's windows to several times the hard negatives wanted: the latent itself fires
        # in some of them (decoder neighbours often fire together)
        top_m = 4 * (round(f * cfg.n_negatives) + round(f * cfg.n_train_negatives))
        nearest = neighbours(sae.W_dec, chosen, cfg.n_neighbours if top_m else 0)
        clock.lap("select")
        build = _Build(sae, batches, win, corpus.token_strings, cfg, top_m, progress, clock)
        n = cfg.latent_chunk
        chunks = [_Chunk(build, chosen[i : i + n], nearest[i : i + n]) for i in range(0, len(chosen), n)]
    counts = {} if window_counts is None else {
        "n_alive": int((window_counts > 0).sum()),
        "n_eligible": int((window_counts >= max(cfg.min_activating, 1)).sum()),
    }  # fmt: skip
    return RecordSet(records=[r for c in chunks for r in c.records],
                     skipped={k: v for c in chunks for k, v in c.skipped.items()}, n_windows=win.n,
                     n_tokens=win.n_rows, passes=int(counted) + sum(c.passes for c in chunks), seconds=clock.seconds,
                     config=cfg, **counts)  # fmt: skip


@dataclass(frozen=True)
class _Build:
    """What every chunk of one build_records call shares."""

    sae: Any
    batches: Callable[[int], Iterator[Tensor]]
    win: Windows
    token_strings: Callable[[Sequence[int]], list[str]]
    cfg: RecordConfig
    top_m: int  # windows kept per neighbour, for hard negatives
    progress: Callable[[int], None] | None
    clock: _Clock


class _Clock:
    """Seconds spent per step of building records (``RecordSet.seconds``)."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = {}
        self.last = time.perf_counter()

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.seconds[stage] = self.seconds.get(stage, 0.0) + now - self.last
        self.last = now


class _Chunk:
    """The records of one chunk of latents: one scan of the cache, the samples, then (if needed) a second
    pass for the chosen examples' token activations."""

    def __init__(self, b: _Build, chunk: list[int], nbrs: np.ndarray):
        sae, batches, win, cfg, progress, clock = b.sae, b.batches, b.win, b.cfg, b.progress, b.clock
        self.win, self.token_strings, self.chunk = win, b.token_strings, chunk
        others = sorted(set(nbrs.ravel().tolist()) - set(chunk))
        self.acts, counts, tops, token_entries = scan(sae, batches, win, chunk, others, b.top_m, progress)
        self.passes = 1
        clock.lap("scan")
        ineligible = np.flatnonzero(~win.eligible)
        plans, self.skipped = {}, {}
        for i, latent in enumerate(chunk):
            windows, maxes = self.acts[i]
            if windows.size < cfg.min_activating:
                self.skipped[latent] = int(windows.size)
                continue
            rng = np.random.default_rng([cfg.seed, latent])
            train, test = _split_activating(windows, maxes, cfg, rng)
            test_neg, train_neg = _negatives(windows, [tops[int(j)] for j in nbrs[i]], ineligible, win.n, cfg, rng)
            plans[i] = (train, test, train_neg, test_neg)
        wanted = [(i, w) for i, plan in plans.items() for w, _ in plan[0] + plan[1]]
        keys = np.array([w * len(chunk) + i for i, w in wanted], dtype=np.int64)
        clock.lap("sample")
        if token_entries is None:
            token_entries = fill(sae, batches, win, chunk, keys, progress)
            self.passes += 1
        elif progress is not None:
            progress(win.n_rows)  # the planned second pass was not needed
        self.values = token_values(token_entries, keys, win.size)
        clock.lap("fill")
        self.row = {key: r for r, key in enumerate(wanted)}
        self.strings: dict[int, list[str]] = {}  # per chunk: windows recur across latents
        self.records = [self.record(i, counts[i], *plan) for i, plan in plans.items()]
        clock.lap("examples")

    def record(self, i: int, count: int, train, test, train_neg, test_neg) -> LatentRecord:
        windows, maxes = self.acts[i]
        strongest = lambda pairs: sorted(pairs, key=lambda e: (-e.max_activation, e.window))  # noqa: E731
        return LatentRecord(
            latent=self.chunk[i],
            n_activating=int(windows.size),
            density=float(count) / max(self.win.n_rows, 1),
            max_activation=float(maxes.max()),
            train=strongest([self.example(i, w, "activating", q) for w, q in train]),
            test=strongest([self.example(i, w, "activating", q) for w, q in test]),
            train_negatives=[self.example(i, w, kind, None) for w, kind in train_neg],
            test_negatives=[self.example(i, w, kind, None) for w, kind in test_neg],
        )

    def example(self, i: int, w: int, kind: str, quantile: int | None) -> Example:
        if w not in self.strings:
            ids = self.win.ids(w)
            strings = list(self.token_strings(ids))
            if len(strings) != len(ids):
                raise ShapeError(f"token_strings gave {len(strings)} strings for {len(ids)} tokens", "token_strings")
            # BOS/EOS/PAD are not text: shown to a judge, "<bos>" is noise it may try to explain
            self.strings[w] = ["" if sp else t for t, sp in zip(strings, self.win.special_at(w))]
        n = len(self.strings[w])
        acts = self.values[self.row[(i, w)], :n].tolist() if kind == "activating" else [0.0] * n
        return Example(tokens=self.strings[w], activations=acts, window=w, kind=kind, quantile=quantile)
