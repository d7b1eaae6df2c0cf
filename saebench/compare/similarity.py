"""How similar two SAEs are: their decoder directions and their latents' activations on the same tokens.

Motivation: Paulo et al. 2024 ("Automatically interpreting millions of features in large language models",
arXiv:2410.13928) compare SAEs trained independently and on nearby layers, asking whether they learn the same
latents; these pure functions make such comparisons. The choices made:

- Every measure is per latent of A (``per_latent``, NaN where undefined) and averages over A's
  latents, so a caller can bootstrap over them; it is directional (A's latents found in B).
- Cosines are of decoder rows (the directions latents write), normalised in float64, signed (a flipped
  direction is another latent: activations are non-negative); a zero row has cosine 0.
- ``decoder_max_cosine`` lets many A latents share one B latent; ``hungarian_cosine`` is one-to-one
  (maximising the total), so a B latent split in two, or absorbed, scores lower: scipy's exact
  ``linear_sum_assignment`` up to ``max_assignment_cells``, as it needs the whole float32 matrix plus a
  float64 copy (12 bytes a cell) and ~O(n^3) time. Wider pairs (two 16k SAEs: 268M cells) are matched on
  candidates, one pass over row blocks: each A latent's ``candidates`` most similar B latents and each B
  latent's A latents (so a B latent nobody ranks first stays reachable), matched exactly on those edges
  (``min_weight_full_bipartite_matching``), which also gives a bound on the exact optimum
  (``details["matching_bound"]``); greedily, best edge first, when the edges admit no full matching.
- Activation similarity is Pearson's r, which also works across hook points of different widths.
  Latents constant on the tokens (dead) have r = 0 and are left out of A's averages; a max over B is
  over B's varying latents. The matched r uses the decoder assignment when there is one (the same
  pairs both ways), else an assignment on r itself. "Above" a threshold is strict (> t).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment
from scipy.sparse import csr_matrix
from scipy.sparse.csgraph import min_weight_full_bipartite_matching
from torch import Tensor

from saebench.sae import SAE

Pairs = Iterable[tuple[Tensor, Tensor]]
THRESHOLDS = (0.7, 0.9)
MAX_CELLS = 64_000_000  # 768 MB for the assignment (float32 matrix + scipy's float64 copy)
CANDIDATES = 32  # per latent and side: 2 x 32 x 16k edges for two 16k SAEs, ~20 MB
PRODUCT_CELLS = 1 << 24  # float32 cells of one per-batch product slice [latents of A, d_b]: 64 MB
HISTOGRAM_EDGES = np.linspace(-1.0, 1.0, 11).round(6)  # rounded so details read -0.8, not -0.7999999


def _unit_rows(W_a: Tensor, W_b: Tensor) -> tuple[Tensor, Tensor]:
    """(A, B) float64 with unit rows, B on A's device; checks shapes before anything is allocated."""
    W_a, W_b = torch.as_tensor(W_a).detach(), torch.as_tensor(W_b).detach()
    if W_a.ndim != 2 or W_b.ndim != 2:
        raise ValueError(f"decoders must be 2-D [d_sae, d_in], got {list(W_a.shape)} and {list(W_b.shape)}")
    if W_a.shape[1] != W_b.shape[1]:
        raise ValueError(f"decoders have different d_in ({W_a.shape[1]} vs {W_b.shape[1]}): directions not comparable")
    A, B = W_a.double(), W_b.to(W_a.device).double()
    # a zero row divided by the floor stays zero, so its cosines are 0 rather than NaN
    return A / A.norm(dim=1, keepdim=True).clamp_min(1e-300), B / B.norm(dim=1, keepdim=True).clamp_min(1e-300)


def cosine_matrix(W_a: Tensor, W_b: Tensor, chunk: int = 2048) -> np.ndarray:
    """float32 [d_a, d_b] cosines of A's rows with B's, at most [chunk, d_b] float64 at a time."""
    A, B = _unit_rows(W_a, W_b)
    out = np.empty((A.shape[0], B.shape[0]), dtype=np.float32)
    for lo in range(0, A.shape[0], chunk):
        out[lo : lo + chunk] = (A[lo : lo + chunk] @ B.T).clamp_(-1.0, 1.0).cpu().numpy()
    return out


def max_cosines(W_a: Tensor, W_b: Tensor, chunk: int = 2048) -> np.ndarray:
    """float64 [d_a]: each A row's largest cosine with any B row, without keeping the whole matrix."""
    A, B = _unit_rows(W_a, W_b)
    out = np.empty(A.shape[0], dtype=np.float64)
    for lo in range(0, A.shape[0], chunk):
        out[lo : lo + chunk] = (A[lo : lo + chunk] @ B.T).clamp_(-1.0, 1.0).amax(dim=1).cpu().numpy()
    return out


def hungarian_match(similarity: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """(rows, cols) int64 of the one-to-one assignment of largest total similarity, rows ascending;
    a rectangular matrix matches min(d_a, d_b) pairs."""
    sim = np.asarray(similarity)
    if sim.ndim != 2 or 0 in sim.shape:
        raise ValueError(f"similarity must be a non-empty 2-D matrix, got shape {list(sim.shape)}")
    rows, cols = linear_sum_assignment(sim, maximize=True)  # scipy returns the rows sorted
    return rows.astype(np.int64), cols.astype(np.int64)


@dataclass
class Matching:
    """``rows`` matched one-to-one to ``cols`` (int64) with similarity ``values``; ``best``: each row's largest
    similarity; ``bound``: an upper bound on the exact optimum's mean, from the candidate matching."""

    rows: np.ndarray
    cols: np.ndarray
    values: np.ndarray
    method: str
    best: np.ndarray | None = None
    bound: float | None = None


def top_candidates(blocks: Iterable[Tensor], d_b: int, m: int) -> tuple[np.ndarray, ...]:
    """(rows, cols, values) of each row's ``m`` largest values and each column's, each pair once, sorted by row
    then column; each row's largest value; each row's and each column's m-th largest (what no other pair of it
    exceeds): from consecutive row blocks [rows, d_b] of the matrix, which never exists whole."""
    edges: list[tuple[Tensor, Tensor, Tensor]] = []
    ends: list[Tensor] = []  # each row's largest and m-th largest
    col: tuple[Tensor, Tensor] | None = None  # a running top m of each column (values, row indices) [m, d_b]
    lo = 0
    for s in blocks:
        v, j = s.topk(min(m, d_b), dim=1)
        edges.append(
            (torch.arange(lo, lo + len(s), device=s.device).repeat_interleave(v.shape[1]), j.flatten(), v.flatten())
        )
        ends.append(v[:, [0, -1]])
        cv, ci = s.topk(min(m, len(s)), dim=0)
        ci += lo
        if col is not None:
            cv, ci = torch.cat([col[0], cv]), torch.cat([col[1], ci])
        top, keep = cv.topk(min(m, len(cv)), dim=0)
        col, lo = (top, ci.gather(0, keep)), lo + len(s)
    if col is None:
        raise ValueError("no rows to match")
    edges.append((col[1].flatten(), torch.arange(d_b, device=col[1].device).repeat(len(col[1])), col[0].flatten()))
    r, c, w = (torch.cat(t).cpu().numpy() for t in zip(*edges))
    r, c = r.astype(np.int64), c.astype(np.int64)
    _, first = np.unique(r * d_b + c, return_index=True)  # sorted by that key: rows ascending, then columns
    best, floor_r = torch.cat(ends).T.cpu().double().numpy()
    return r[first], c[first], w[first].astype(np.float64), best, floor_r, col[0][-1].cpu().double().numpy()


def greedy_match(rows: np.ndarray, cols: np.ndarray, values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A one-to-one matching on the edges, taking the largest remaining edge first."""
    rl, cl, taken = rows.tolist(), cols.tolist(), []
    free_r, free_c = [True] * (max(rl, default=-1) + 1), [True] * (max(cl, default=-1) + 1)
    for e in np.argsort(-values, kind="stable").tolist():
        if free_r[rl[e]] and free_c[cl[e]]:
            free_r[rl[e]] = free_c[cl[e]] = False
            taken.append(e)
    return rows[taken], cols[taken]


Dense = Callable[[np.ndarray, np.ndarray], np.ndarray]  # (rows, cols) -> float64 similarities of that sub-matrix
Edges = tuple[np.ndarray, np.ndarray, np.ndarray]  # rows, cols, similarities


def candidate_match(blocks: Iterable[Tensor], shape: tuple[int, int], m: int, dense: Dense, max_cells: int) -> Matching:
    """The one-to-one matching on candidates described in the module docstring, of min(shape) pairs unless it is
    greedy; ``dense`` gives the pairs the candidates leave, joined when there are ``max_cells`` or fewer."""
    rows, cols, vals, best, floor_r, floor_c = top_candidates(blocks, shape[1], m)
    if shape[0] <= shape[1]:
        found = _solve((rows, cols, vals), shape, floor_r, m, dense, max_cells)
        found.best = best
        return found
    found = _solve((cols, rows, vals), shape[::-1], floor_c, m, lambda r, c: dense(c, r).T, max_cells)
    return Matching(found.cols, found.rows, found.values, found.method, best, found.bound)


def _solve(edges: Edges, shape: tuple[int, int], floor: np.ndarray, m: int, dense: Dense, max_cells: int) -> Matching:
    """``candidate_match`` with n rows <= n_l columns; ``floor`` [n] bounds each row's pairs that are not edges."""
    (rows, cols, vals), (n, n_l), method, bound = edges, shape, f"sparse candidates (m={m})", None
    if m < n_l:
        # A row may take a reserve worth its floor instead of an edge: no pair outside the edges beats that, so
        # the best total with reserves bounds the exact optimum. The pairs among the rows it leaves on reserves
        # and the unused columns join the edges, which then have a full matching at least as good as that one.
        ends = (np.r_[rows, np.arange(n)], np.r_[cols, n_l + np.arange(n)])
        reserve = csr_matrix((np.r_[2.0 - vals, 2.0 - floor], ends), shape=(n, n_l + n))
        r, c = min_weight_full_bipartite_matching(reserve)
        bound = float(2.0 - reserve[r, c].mean())
        left_r, left_c = r[c >= n_l], np.setdiff1d(np.arange(n_l), c[c < n_l])
        if 0 < len(left_r) * len(left_c) <= max_cells // 4:  # ~40 bytes a cell here, 12 in the dense assignment
            keep = ~(np.isin(rows, left_r) & np.isin(cols, left_c))  # they are added again: csr would sum them
            grid = np.meshgrid(left_r, left_c, indexing="ij")
            rows, cols = np.r_[rows[keep], grid[0].ravel()], np.r_[cols[keep], grid[1].ravel()]
            vals = np.r_[vals[keep], dense(left_r, left_c).ravel()]
    graph = csr_matrix((2.0 - vals, (rows, cols)), shape=shape)  # costs in [1, 3]: an explicit 0 is no edge
    try:  # every full matching has n pairs, so the least total cost is the largest total similarity
        r, c = min_weight_full_bipartite_matching(graph)
    except ValueError:  # the edges admit no matching of all n rows
        r, c = greedy_match(rows, cols, vals)
        method = f"greedy candidates (m={m})"
    r, c = np.asarray(r, dtype=np.int64), np.asarray(c, dtype=np.int64)
    values = 2.0 - np.asarray(graph[r, c], dtype=np.float64).ravel()
    return Matching(r, c, values, method, None, float(values.mean()) if m >= n_l else bound)  # all pairs: exact


@dataclass
class Correlations:
    """float64 moments of two SAEs' latents over the same ``n`` tokens; ``cov`` [d_a, d_b] (8 bytes a cell)."""

    n: int
    mean_a: np.ndarray
    mean_b: np.ndarray
    var_a: np.ndarray
    var_b: np.ndarray
    cov: np.ndarray

    @property
    def alive_a(self) -> np.ndarray:
        """bool [d_a]: A's latent varies on these tokens."""
        return self.var_a > 0

    @property
    def alive_b(self) -> np.ndarray:
        """bool [d_b]: B's latent varies on these tokens."""
        return self.var_b > 0

    def pearson(self, rows: int = 2048) -> np.ndarray:
        """float32 [d_a, d_b] Pearson r of each latent pair (0 where either is constant), ``rows`` of A at a time."""
        va, vb = self.var_a, self.var_b
        inv_a, inv_b = (np.divide(1.0, np.sqrt(v), out=np.zeros_like(v), where=v > 0) for v in (va, vb))
        out = np.empty((len(inv_a), len(inv_b)), dtype=np.float32)
        for lo in range(0, len(inv_a), rows):
            out[lo : lo + rows] = np.clip(self.cov[lo : lo + rows] * inv_a[lo : lo + rows, None] * inv_b, -1.0, 1.0)
        return out


@torch.no_grad()
def activation_statistics(pairs: Pairs, sae_a: SAE, sae_b: SAE, *, product_cells: int = PRODUCT_CELLS) -> Correlations:
    """Moments of both SAEs' latents (dense ``SAE.encode``) over pairs (x_a [n, d_in_a], x_b [n, d_in_b]), one token a row.

    Per-latent sums are of values shifted by the first batch's means, so a constant latent's variance is exactly 0
    and a large mean beside a small spread does not cancel. The cross sums Σ aᵀb are raw, in float64: as a sparse
    product when A's latents are sparse (k of d_sae per token: exact, and 1.7x faster than the dense float32 GEMM
    at d_sae 4096, k 32), else as a float32 GEMM of ``product_cells // d_b`` of A's latents at a time; the shift is
    applied to them once at the end (Σ(a-s)(b-t)ᵀ = Σabᵀ - s(Σb)ᵀ - (Σa)tᵀ + n·stᵀ)."""
    d_a, d_b = sae_a.cfg.d_sae, sae_b.cfg.d_sae
    step = max(1, product_cells // d_b)
    acc: list[Tensor] = []  # shift_a, shift_b, sums of the shifted a, b, a², b², raw sums of a, b, raw Σ aᵀb
    n = 0
    for x_a, x_b in pairs:
        a, b = (sae.encode(x.reshape(-1, x.shape[-1])).double() for sae, x in ((sae_a, x_a), (sae_b, x_b)))
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"a pair of batches has {a.shape[0]} and {b.shape[0]} tokens, not the same tokens")
        if a.shape[0] == 0:
            continue
        b = b.to(a.device)
        if not acc:
            acc = [a.mean(0), b.mean(0)]
            acc += [torch.zeros_like(t) for t in acc * 3] + [a.new_zeros(d_a, d_b)]
        _cross(acc[8], a, b, step)
        acc[6] += a.sum(0)
        acc[7] += b.sum(0)
        a, b = a - acc[0], b - acc[1]
        for i, t in enumerate((a, b, a * a, b * b)):
            acc[2 + i] += t.sum(0)
        n += a.shape[0]
    if n < 2:
        raise ValueError(f"correlations need at least two tokens, got {n}")
    shift_a, shift_b, m_a, m_b, q_a, q_b, raw_a, raw_b, cov = acc
    cov.addr_(shift_a, raw_b, alpha=-1.0).addr_(raw_a, shift_b, alpha=-1.0).addr_(shift_a, shift_b, alpha=float(n))
    m_a, m_b = m_a / n, m_b / n
    cov.div_(n).addr_(m_a, m_b, alpha=-1.0)  # in place: no second [d_a, d_b] float64 temporary
    var_a, var_b = (q_a / n - m_a * m_a).clamp_min_(0.0), (q_b / n - m_b * m_b).clamp_min_(0.0)
    numpy = [t.cpu().numpy() for t in (shift_a + m_a, shift_b + m_b, var_a, var_b, cov)]
    return Correlations(n, numpy[0], numpy[1], numpy[2], numpy[3], numpy[4])


SPARSE_DENSITY = 0.05  # below this fraction of non-zero activations, the sparse product wins


def _cross(out: Tensor, a: Tensor, b: Tensor, step: int) -> None:
    """out += aᵀ b (a [n, d_a], b [n, d_b] float64)."""
    if (a != 0).float().mean() < SPARSE_DENSITY:
        out += torch.sparse.mm(a.to_sparse().t(), b)
        return
    b32 = b.float()
    for lo in range(0, a.shape[1], step):
        out[lo : lo + step] += a[:, lo : lo + step].float().T @ b32


@dataclass
class SimilarityResult:
    """Metrics (None when skipped), per-A-latent values (NaN where undefined), JSON-able details, and
    ``assignment`` [d_a]: the B latent matched to each A latent (-1 if none)."""

    metrics: dict[str, float | None]
    per_latent: dict[str, np.ndarray]
    details: dict[str, Any]
    assignment: np.ndarray

    def summarise(self, names: list[str], values: np.ndarray, thresholds: Iterable[float]) -> None:
        """Store ``values`` [d_a] under names[0], its NaN-free mean, then the fraction above each threshold."""
        self.per_latent[names[0]] = values
        ok = values[~np.isnan(values)]
        self.metrics[names[0]] = float(ok.mean()) if ok.size else None
        for name, t in zip(names[1:], thresholds):
            self.metrics[name] = float((ok > t).mean()) if ok.size else None
        self.details["histograms"][names[0]] = np.histogram(ok, bins=HISTOGRAM_EDGES)[0].tolist()

    def skip(self, names: list[str], reason: str) -> None:
        """Mark ``names`` as not computed (None), saying why in ``details["skipped"]``."""
        for name in names:
            self.metrics[name] = None
            self.details["skipped"][name] = reason


def _names(prefix: str, main: str, thresholds: Iterable[float]) -> list[str]:
    return [main] + [f"{prefix}_frac_above_{t:g}" for t in thresholds]


def decoder_match(W_a: Tensor, W_b: Tensor, max_cells: int = MAX_CELLS, candidates: int = CANDIDATES) -> Matching:
    """The one-to-one matching of decoder cosines: exact up to ``max_cells`` cells, else on candidates."""
    d_a, d_b = W_a.shape[0], W_b.shape[0]
    if d_a * d_b <= max_cells:
        cos = cosine_matrix(W_a, W_b)
        rows, cols = hungarian_match(cos)
        return Matching(rows, cols, cos[rows, cols].astype(np.float64), "linear_sum_assignment", cos.max(axis=1))
    A, B = _unit_rows(W_a, W_b)
    step = max(1, PRODUCT_CELLS // d_b)  # a float64 block of 128 MB
    blocks = ((A[lo : lo + step] @ B.T).clamp_(-1.0, 1.0) for lo in range(0, d_a, step))
    dense = lambda r, c: cosine_matrix(W_a[r], W_b[c]).astype(np.float64)  # noqa: E731
    return candidate_match(blocks, (d_a, d_b), candidates, dense, max_cells)


def compare_decoders(
    sae_a: SAE,
    sae_b: SAE,
    thresholds: tuple[float, ...] = THRESHOLDS,
    *,
    max_assignment_cells: int = MAX_CELLS,
    candidates: int = CANDIDATES,
) -> SimilarityResult:
    """The decoder metrics (``decoder_*``, ``hungarian_*``) and the decoder assignment."""
    (d_a, d_in_a), (d_b, d_in_b) = (sae_a.cfg.d_sae, sae_a.cfg.d_in), (sae_b.cfg.d_sae, sae_b.cfg.d_in)
    details = {"n_latents": {"a": d_a, "b": d_b}, "d_in": {"a": d_in_a, "b": d_in_b}, "matching": None}
    details |= {"matching_method": None, "matching_bound": None, "skipped": {}, "histograms": {}}
    details["histogram_edges"] = HISTOGRAM_EDGES.tolist()
    res = SimilarityResult({}, {}, details, np.full(d_a, -1, dtype=np.int64))
    best_names = _names("decoder", "decoder_max_cosine", thresholds)
    hung_names = _names("hungarian", "hungarian_cosine", thresholds)
    if d_in_a != d_in_b:
        res.skip(best_names + hung_names, f"decoders have different d_in ({d_in_a} vs {d_in_b})")
        return res
    found = decoder_match(sae_a.W_dec, sae_b.W_dec, max_assignment_cells, candidates)
    assert found.best is not None
    res.summarise(best_names, found.best.astype(np.float64), thresholds)
    matched = np.full(d_a, np.nan)
    matched[found.rows] = found.values
    res.assignment[found.rows] = found.cols
    res.details.update(matching="decoder", matching_method=found.method, matching_bound=found.bound)
    res.summarise(hung_names, matched, thresholds)
    return res


def _activation_match(r: np.ndarray, ia: np.ndarray, ib: np.ndarray, max_cells: int, m: int) -> Matching:
    """The one-to-one matching of r between A's alive latents ``ia`` and B's ``ib``, as indices into r."""
    if len(ia) * len(ib) <= max_cells:
        rows, cols = hungarian_match(r[np.ix_(ia, ib)])
        found = Matching(rows, cols, r[ia[rows], ib[cols]].astype(np.float64), "linear_sum_assignment")
    else:  # r exists already: the candidates come from row blocks of it, the alive columns copied a block at a time
        step = max(1, PRODUCT_CELLS // len(ib))
        blocks = (torch.from_numpy(r[ia[lo : lo + step]][:, ib]) for lo in range(0, len(ia), step))
        dense = lambda i, j: r[np.ix_(ia[i], ib[j])].astype(np.float64)  # noqa: E731
        found = candidate_match(blocks, (len(ia), len(ib)), m, dense, max_cells)
    found.rows, found.cols = ia[found.rows], ib[found.cols]
    return found


def _add_activations(
    res: SimilarityResult, corr: Correlations | None, ts: tuple[float, ...], cells: int, m: int
) -> None:
    """The activation metrics from ``corr``, matching on r itself unless the decoders were matched."""
    names = ["activation_correlation"] + _names("activation", "activation_max_correlation", ts)
    if corr is None:
        res.skip(names, "no activations given")
        return
    alive_a, alive_b = corr.alive_a, corr.alive_b
    res.details.update(n_tokens=corr.n, n_alive={"a": int(alive_a.sum()), "b": int(alive_b.sum())})
    if not alive_a.any() or not alive_b.any():
        res.skip(names, "no latent of " + ("A" if not alive_a.any() else "B") + " varies on these tokens")
        return
    r = corr.pearson()
    best = np.where(alive_a, (r if alive_b.all() else r[:, alive_b]).max(axis=1), np.nan)
    res.summarise(names[1:], best, ts)
    if res.details["matching"] == "decoder":
        rows, cols = np.flatnonzero(res.assignment >= 0), res.assignment[res.assignment >= 0]
    else:
        found = _activation_match(r, np.flatnonzero(alive_a), np.flatnonzero(alive_b), cells, m)
        rows, cols = found.rows, found.cols
        res.assignment[rows] = cols
        res.details.update(matching="activation", matching_method=found.method, matching_bound=found.bound)
    matched = np.full(len(alive_a), np.nan)
    matched[rows] = r[rows, cols]
    res.summarise(names[:1], np.where(alive_a, matched, np.nan), ())


def compare(
    sae_a: SAE,
    sae_b: SAE,
    pairs: Callable[[], Pairs] | None = None,
    thresholds: tuple[float, ...] = THRESHOLDS,
    *,
    max_assignment_cells: int = MAX_CELLS,
    candidates: int = CANDIDATES,
) -> SimilarityResult:
    """Decoder and, when ``pairs()`` yields batches of the same tokens for A and B, activation similarity."""
    res = compare_decoders(sae_a, sae_b, thresholds, max_assignment_cells=max_assignment_cells, candidates=candidates)
    corr = None if pairs is None else activation_statistics(pairs(), sae_a, sae_b)
    _add_activations(res, corr, thresholds, max_assignment_cells, candidates)
    return res
