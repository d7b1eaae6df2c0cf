"""Explaining and testing an NBDT's decisions, and comparing hierarchies: pure tensor code, no I/O.

Each inner node of a :class:`~saebench.plugins.scorers.treeprobe.nbdt.Tree` over SAE latents asks
a linear question; :func:`rule_latents` finds the few latents that carry it, :func:`flip_rate`
tests them by ablation, and :func:`matched_random` draws the control (as many random latents of
matched activation frequency).

:func:`triplet_agreement` compares two hierarchies over the same leaves (an induced tree against a
reference taxonomy such as a syntax-node grammar, or against :func:`random_tree`, the control).
"""

from __future__ import annotations

import itertools
import random
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from saebench.plugins.scorers.treeprobe.nbdt import Tree, build_tree, node_decisions

__all__ = [
    "rule_latents",
    "flip_rate",
    "flips",
    "matched_random",
    "random_tree",
    "triplet_agreement",
]


# --------------------------------------------------------------------------------------------------
# Explaining a node's decision with latents


def _side(tree: Tree, node: int, y: Tensor) -> Tensor:
    """``[N]`` the child (0|1) of ``node`` holding each point's true class; -1 for points not under it."""
    lookup = torch.full((tree.n_classes,), -1, dtype=torch.long)
    for j, child in enumerate(tree.children_of(node)):
        lookup[tree.leaves(child)] = j
    return lookup.to(y.device)[y.long()]


# long: a third of it is the docstring, which states the selection criterion in full
def rule_latents(
    tree: Tree, X: Tensor, y: Tensor, node: int, target: float = 0.9, max_latents: int = 64
) -> dict[str, Any]:
    """The fewest latents whose contributions alone make ``node``'s decision about as well as all.

    Over the points whose true class is under ``node``, ``accuracy`` is the fraction routed to the
    child holding the true class. The rule keeps only a set S of features (the others set to 0):
    decide child 1 iff ``sum_{j in S} x_j (w1_j - w0_j) + (b1 - b0) > 0``.

    Criterion: candidates are the features whose contribution ``x_j (w1_j - w0_j)`` is on average
    larger on child-1 points than on child-0 points (i.e. pushes each side the right way), ranked by
    that mean difference; the pool is the top ``max(4 * max_latents, 256)``. S grows by forward
    selection: each step adds the candidate that maximises the rule's accuracy (ties: the higher
    ranked), stopping once it recovers ``target`` of the accuracy the features add over the bias
    alone (``bias_accuracy + target x (accuracy - bias_accuracy)``) or holds ``max_latents``. Forward
    selection on the accuracy itself finds smaller sets than taking a ranked prefix, since it skips
    features redundant with ones already chosen (e.g. several that fire on the same points).

    Returns ``{"latents", "accuracy", "rule_accuracy", "bias_accuracy" (S empty), "reached_target",
    "n_tokens"}``; accuracies are None when no point is under ``node``.
    """
    side = _side(tree, node, y)
    at = side >= 0
    n = int(at.sum())
    if n == 0:
        unknown = {"accuracy": None, "rule_accuracy": None, "bias_accuracy": None}
        return {"latents": [], **unknown, "reached_target": False, "n_tokens": 0}
    a, b = tree.children_of(node)
    dw = tree.weight[b] - tree.weight[a]
    db = tree.bias[b] - tree.bias[a]
    Xf = X.to(dw.dtype)
    s = side[at]
    full = float((((Xf @ dw)[at] + db > 0).long() == s).float().mean())

    # mean contribution on child-1 points minus on child-0 points, as one [N] @ [N, D] product
    n1 = int((s == 1).sum())
    n0 = n - n1
    signed = torch.zeros(X.shape[0], dtype=dw.dtype, device=X.device)
    signed[at] = torch.where(s == 1, 1.0 / max(n1, 1), -1.0 / max(n0, 1)).to(dw.dtype)
    separation = (signed @ Xf) * dw
    order = torch.argsort(separation, descending=True)
    pool = order[: max(4 * max_latents, 256)]
    pool = pool[separation[pool] > 0]
    contrib = Xf[:, pool][at] * dw[pool]  # [n, |pool|]

    margin = torch.full((n,), float(db), dtype=dw.dtype, device=X.device)
    bias_acc = rule_acc = float(((margin > 0).long() == s).float().mean())
    chosen: list[int] = []
    free = torch.ones(pool.numel(), dtype=torch.bool, device=X.device)
    # the latents must carry `target` of what they add over the bias alone: on an unbalanced node the
    # bias by itself can score above target × accuracy, and an empty rule explains nothing
    goal = bias_acc + target * (full - bias_acc)
    while rule_acc < goal and len(chosen) < max_latents and bool(free.any()):
        acc = (((margin[:, None] + contrib) > 0).long() == s[:, None]).float().mean(0)
        acc[~free] = -1.0
        best = int(torch.argmax(acc))  # the first maximum: the higher-ranked candidate
        free[best] = False
        margin = margin + contrib[:, best]
        chosen.append(int(pool[best]))
        rule_acc = float(acc[best])
    return {
        "latents": chosen,
        "accuracy": full,
        "rule_accuracy": rule_acc,
        "bias_accuracy": bias_acc,
        "reached_target": rule_acc >= goal,
        "n_tokens": n,
    }


def flip_rate(tree: Tree, X: Tensor, y: Tensor, node: int, latents: Sequence[int]) -> float:
    """Among points under ``node`` that it routes correctly, the fraction that ``latents`` = 0 reroutes.

    NaN when ``node`` routes no point correctly (nothing to flip).
    """
    correct, flipped = flips(tree, X, y, node, latents)
    if not bool(correct.any()):
        return float("nan")
    return float(flipped[correct].float().mean())


def flips(tree: Tree, X: Tensor, y: Tensor, node: int, latents: Sequence[int]) -> tuple[Tensor, Tensor]:
    """Per point (bool [N] each): whether ``node`` routes it correctly (it is under the node), and
    whether ``latents`` = 0 reroutes it (only ever True where correct): the rows of :func:`flip_rate`."""
    side = _side(tree, node, y)
    full = node_decisions(tree, X, node)
    correct = (side >= 0) & (full == side)
    if not latents:
        return correct, torch.zeros_like(correct)
    ablated = node_decisions(tree, X, node, ablate=latents)
    return correct, correct & (ablated != full)


def matched_random(
    latents: Sequence[int], frequency: Tensor, exclude: Sequence[int] = (), seed: int = 0, n_bins: int = 20
) -> list[int]:
    """One random feature per latent from the same activation-frequency quantile bin: the control.

    Bins are frequency quantiles over all features (tied frequencies share a bin). Picks avoid
    ``exclude``, the latents themselves and each other; when a latent's bin is used up, the nearest
    bins (both sides, widening) supply the pick.
    """
    freq = frequency.detach().double().cpu().flatten()
    edges = torch.quantile(freq, torch.linspace(0, 1, n_bins + 1, dtype=torch.float64)[1:-1])
    bins = torch.bucketize(freq, edges, right=True).tolist()
    taken = set(int(j) for j in exclude) | set(int(j) for j in latents)
    members: dict[int, list[int]] = {}
    for j, bin_ in enumerate(bins):
        members.setdefault(bin_, []).append(j)
    rng = random.Random(seed)
    picks = []
    for latent in latents:
        home = bins[int(latent)]
        for width in range(n_bins + 1):
            options = [
                j for bin_ in range(home - width, home + width + 1) for j in members.get(bin_, []) if j not in taken
            ]
            if options:
                break
        else:
            raise ValueError("no feature left to match: every feature is excluded or already picked")
        pick = rng.choice(options)
        taken.add(pick)
        picks.append(pick)
    return picks


# --------------------------------------------------------------------------------------------------
# Comparing hierarchies


def random_tree(n_classes: int, weight: Tensor, bias: Tensor, seed: int = 0, normalise: bool = False) -> Tree:
    """The control hierarchy: the same leaves and node scorers, merged in a random order."""
    if weight.shape[0] != n_classes:
        raise ValueError(f"n_classes is {n_classes} but the head has {weight.shape[0]} rows")
    rng = random.Random(seed)
    active = list(range(n_classes))
    children = []
    for new in range(n_classes, 2 * n_classes - 1):
        a, b = rng.sample(active, 2)
        active.remove(a)
        active.remove(b)
        children.append((a, b))
        active.append(new)
    return build_tree(children, weight, bias, normalise)


def _chains(hierarchy: Tree | Mapping[Hashable, Hashable], leaves: Sequence[Hashable]) -> list[list[Hashable]]:
    """Each leaf's root-to-leaf chain of ancestors (itself last), in the hierarchy's own node ids.

    A Tree's class ``i`` is ``leaves[i]``. In a ``{child: parent}`` map, nodes without a parent are
    roots; a leaf absent from the map counts as a root of its own.
    """
    if isinstance(hierarchy, Tree):
        if len(leaves) != hierarchy.n_classes:
            raise ValueError(f"{len(leaves)} leaf labels for a tree of {hierarchy.n_classes} classes")
        return [[node for node, _ in hierarchy.path(c)] + [c] for c in range(hierarchy.n_classes)]
    chains = []
    for leaf in leaves:
        chain = [leaf]
        while chain[-1] in hierarchy:
            chain.append(hierarchy[chain[-1]])
            if len(chain) > len(hierarchy) + 1:
                raise ValueError(f"the parent map has a cycle above {leaf!r}")
        chains.append(chain[::-1])
    return chains


def _lca_depth(chains: list[list[Hashable]]) -> np.ndarray:
    """``[L, L]`` depth of each pair's lowest common ancestor (0: only a virtual root in common)."""
    n = len(chains)
    depth = np.zeros((n, n), dtype=np.int64)
    for i, j in itertools.combinations(range(n), 2):
        shared = 0
        for u, v in zip(chains[i], chains[j]):
            if u != v:
                break
            shared += 1
        depth[i, j] = depth[j, i] = shared
    return depth


def _resolved_pair(depth: np.ndarray, triplets: np.ndarray) -> np.ndarray:
    """Per triplet (i, j, k): 0, 1 or 2 for the pair (ij, ik, jk) strictly deepest in common; -1 if none."""
    i, j, k = triplets.T
    pairs = np.stack([depth[i, j], depth[i, k], depth[j, k]], axis=1)
    top = pairs.max(axis=1)
    unique = (pairs == top[:, None]).sum(axis=1) == 1
    return np.where(unique, pairs.argmax(axis=1), -1)


def triplet_agreement(
    a: Tree | Mapping[Hashable, Hashable], b: Tree | Mapping[Hashable, Hashable], leaves: Sequence[Hashable]
) -> float | None:
    """Over the leaf triplets that hierarchy ``b`` resolves, the fraction ``a`` resolves the same way.

    A triplet is resolved when one of its pairs has a strictly deeper lowest common ancestor than the
    other two (``{x, y}`` split from ``z``). Hierarchies are Trees (class ``i`` labelled ``leaves[i]``)
    or ``{child: parent}`` maps over labels, which may be non-binary and shallow. A binary ``a``
    resolves every triplet, so a random binary tree scores about 1/3. None when ``b`` resolves none.
    """
    if len(set(leaves)) != len(leaves):
        raise ValueError("leaf labels must be distinct")
    if len(leaves) < 3:
        return None
    triplets = np.array(list(itertools.combinations(range(len(leaves)), 3)), dtype=np.int64)
    ref = _resolved_pair(_lca_depth(_chains(b, leaves)), triplets)
    resolved = ref >= 0
    if not resolved.any():
        return None
    ours = _resolved_pair(_lca_depth(_chains(a, leaves)), triplets)
    return float((ours[resolved] == ref[resolved]).mean())
