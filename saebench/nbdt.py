"""Neural-backed decision trees (NBDT, SegNBDT) over a linear head: pure tensor code, no I/O.

A linear head (K classes x D features, plus biases) is turned into a binary decision tree whose
leaves are the classes (the *induced hierarchy*): the class rows are clustered by Ward
agglomerative clustering, and every inner node scores a point with the mean of its leaves' rows
(and biases). Descending the tree asks one question per inner node: "which child scores higher?".
On SAE latents these questions are linear in sparse, hopefully interpretable features, so each
decision can be explained by the few latents that carry it (:func:`rule_latents`) and tested by
ablating them (:func:`flip_rate`, with :func:`matched_random` as the control).

Inference is *hard* (:func:`hard_predict`: greedy descent) or *soft* (:func:`soft_log_probs`: the
probability of a class is the product, along its root-to-leaf path, of each node's softmax over
its two children's scores). :func:`finetune_head` adds the tree supervision loss (-log of the soft
path probability of the true class) to the head's cross-entropy, with the hierarchy induced once
from the initial head and kept fixed.

The *normalised* variant L2-normalises each class row before clustering and averaging; the class
bias is divided by the same norm, so a leaf's score is its logit divided by its row norm (the
signed distance to the class hyperplane) and biases stay on the weights' scale.

:func:`triplet_agreement` compares two hierarchies over the same leaves (an induced tree against a
reference taxonomy such as a syntax-node grammar, or against :func:`random_tree`, the control).

Node ids: classes are leaves ``0..K-1``; inner node ``i`` (the ``i``-th merge) has id ``K + i``, as in
scipy's linkage matrix; the root is the last merge. A node decision is ``1`` when the second child
scores strictly higher, else ``0``.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, field
from typing import Any, Hashable, Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Tree",
    "build_tree",
    "induce_tree",
    "random_tree",
    "soft_log_probs",
    "hard_predict",
    "node_decisions",
    "tree_loss",
    "finetune_head",
    "rule_latents",
    "flip_rate",
    "matched_random",
    "triplet_agreement",
]


# --------------------------------------------------------------------------------------------------
# The tree


@dataclass(eq=False)
class Tree:
    """A binary hierarchy over ``n_classes`` leaves with a linear scorer at every node.

    ``children[i]`` holds the two child ids of inner node ``n_classes + i``; a child's id is always
    smaller than its parent's (merge order), and the root is the last inner node. ``weight`` and
    ``bias`` score every node, leaves first (``[n_nodes, D]`` and ``[n_nodes]``). Treat a Tree as
    immutable: derived structure is cached.
    """

    n_classes: int
    children: list[tuple[int, int]]
    weight: Tensor
    bias: Tensor
    #: whether the leaf rows were L2-normalised (see the module docstring)
    normalised: bool = False
    _leaves: list[list[int]] = field(default_factory=list, init=False, repr=False)

    def __post_init__(self) -> None:
        k = self.n_classes
        if k < 2:
            raise ValueError(f"a tree needs at least 2 classes, got {k}")
        self.children = [(int(a), int(b)) for a, b in self.children]
        if len(self.children) != k - 1:
            raise ValueError(f"{k} leaves need {k - 1} merges, got {len(self.children)}")
        seen: set[int] = set()
        leaves: list[list[int]] = [[c] for c in range(k)]
        for i, pair in enumerate(self.children):
            node = k + i
            for child in pair:
                if not 0 <= child < node or child in seen:
                    raise ValueError(f"inner node {node} has invalid or reused child {child}")
                seen.add(child)
            leaves.append(sorted(leaves[pair[0]] + leaves[pair[1]]))
        n_nodes = 2 * k - 1
        if tuple(self.weight.shape[:1]) != (n_nodes,) or tuple(self.bias.shape) != (n_nodes,):
            raise ValueError(f"weight/bias must have {n_nodes} rows, got {tuple(self.weight.shape)} "
                             f"and {tuple(self.bias.shape)}")
        self._leaves = leaves

    @property
    def n_nodes(self) -> int:
        return 2 * self.n_classes - 1

    @property
    def root(self) -> int:
        return self.n_nodes - 1

    def is_leaf(self, node: int) -> bool:
        return 0 <= node < self.n_classes

    def children_of(self, node: int) -> tuple[int, int]:
        """The two children of an inner node."""
        if not self.n_classes <= node < self.n_nodes:
            raise ValueError(f"{node} is not an inner node (inner ids are {self.n_classes}..{self.root})")
        return self.children[node - self.n_classes]

    def leaves(self, node: int) -> list[int]:
        """The classes under ``node``, ascending (a leaf: itself)."""
        return list(self._leaves[node])

    @property
    def parent(self) -> dict[int, int]:
        """``{node: its parent}`` for every node but the root."""
        return {child: self.n_classes + i for i, pair in enumerate(self.children) for child in pair}

    def path(self, cls: int) -> list[tuple[int, int]]:
        """The root-to-leaf path of class ``cls``: ``(inner node, child index 0|1)`` per step."""
        if not self.is_leaf(cls):
            raise ValueError(f"{cls} is not a class (0..{self.n_classes - 1})")
        parent = self.parent
        steps = []
        node = cls
        while node in parent:
            up = parent[node]
            steps.append((up, self.children_of(up).index(node)))
            node = up
        return steps[::-1]

    @property
    def depth(self) -> int:
        """The number of decisions on the longest root-to-leaf path."""
        return max(len(self.path(c)) for c in range(self.n_classes))

    def to_dict(self, class_names: Sequence[str] | None = None,
                node_info: Mapping[int, Mapping[str, Any]] | None = None) -> dict[str, Any]:
        """The tree as nested JSON-able dicts from the root.

        An inner node is ``{"id", "leaves": [class names], "children": [two dicts]}``, a leaf
        ``{"id", "name"}``; ``node_info[id]`` (e.g. a node's rule latents) is merged into its dict.
        """
        names = [str(c) for c in range(self.n_classes)] if class_names is None else list(class_names)
        if len(names) != self.n_classes:
            raise ValueError(f"{len(names)} class names for {self.n_classes} classes")
        info = node_info or {}

        def node_dict(node: int) -> dict[str, Any]:
            if self.is_leaf(node):
                out: dict[str, Any] = {"id": node, "name": names[node]}
            else:
                out = {"id": node, "leaves": [names[c] for c in self.leaves(node)],
                       "children": [node_dict(c) for c in self.children_of(node)]}
            out.update(info.get(node, {}))
            return out

        return node_dict(self.root)


def _leaf_rows(weight: Tensor, bias: Tensor, normalise: bool) -> tuple[Tensor, Tensor]:
    """The class rows the tree averages: as given, or divided (with their bias) by the row norm."""
    if weight.ndim != 2 or bias.shape != weight.shape[:1]:
        raise ValueError(f"expected weight [K, D] and bias [K], got {tuple(weight.shape)} and {tuple(bias.shape)}")
    if not normalise:
        return weight, bias
    norm = weight.norm(dim=1).clamp_min(1e-12)
    return weight / norm[:, None], bias / norm


def _mean_matrix(n_classes: int, children: Sequence[tuple[int, int]], dtype: torch.dtype,
                 device: torch.device | str | None = None) -> Tensor:
    """``[n_nodes, K]``: row ``n`` averages the classes under node ``n`` (so node rows = M @ leaf rows)."""
    rows = [torch.zeros(n_classes, dtype=dtype, device=device) for _ in range(n_classes)]
    counts = [1] * n_classes
    for c in range(n_classes):
        rows[c][c] = 1.0
    for a, b in children:
        # a count-weighted mean of the children's means is the mean over all leaves below
        counts.append(counts[a] + counts[b])
        rows.append((rows[a] * counts[a] + rows[b] * counts[b]) / counts[-1])
    return torch.stack(rows)


def build_tree(children: Sequence[tuple[int, int]], weight: Tensor, bias: Tensor,
               normalise: bool = False) -> Tree:
    """A tree of the given merge structure whose node rows are the means of their leaves' rows.

    Also re-weights a fixed structure after the head changed, e.g. after :func:`finetune_head`:
    ``build_tree(tree.children, new_weight, new_bias, tree.normalised)``.
    """
    rows, biases = _leaf_rows(weight, bias, normalise)
    mean = _mean_matrix(rows.shape[0], children, rows.dtype, rows.device)
    return Tree(rows.shape[0], list(children), mean @ rows, mean @ biases, normalise)


def induce_tree(weight: Tensor, bias: Tensor, normalise: bool = False) -> Tree:
    """The induced hierarchy of a linear head: Ward agglomerative clustering of its class rows."""
    from scipy.cluster.hierarchy import linkage

    rows, _ = _leaf_rows(weight, bias, normalise)
    if rows.shape[0] < 2:
        raise ValueError(f"a tree needs at least 2 classes, got {rows.shape[0]}")
    merges = linkage(rows.detach().double().cpu().numpy(), method="ward", metric="euclidean")
    children = [(int(a), int(b)) for a, b in merges[:, :2]]
    return build_tree(children, weight, bias, normalise)


def random_tree(n_classes: int, weight: Tensor, bias: Tensor, seed: int = 0,
                normalise: bool = False) -> Tree:
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


# --------------------------------------------------------------------------------------------------
# Inference


def _node_scores(tree: Tree, X: Tensor) -> Tensor:
    """``[N, n_nodes]``: every node's score, in one matmul."""
    return X.to(tree.weight.dtype) @ tree.weight.T + tree.bias


def _log_probs_from_scores(tree: Tree, scores: Tensor) -> Tensor:
    """Soft inference from ``[N, n_nodes]`` node scores: ``[N, K]`` log class probabilities."""
    k = tree.n_classes
    pairs = torch.tensor(tree.children, device=scores.device)  # [K-1, 2]
    # one log-softmax per inner node over its children's scores...
    branch = torch.log_softmax(scores[:, pairs], dim=-1).reshape(scores.shape[0], -1)
    # ...summed along each class's path: on_path[2i + j, c] = 1 when class c lies under child j of node K+i
    on_path = torch.zeros(2 * (k - 1), k, dtype=scores.dtype, device=scores.device)
    for c in range(k):
        for node, j in tree.path(c):
            on_path[2 * (node - k) + j, c] = 1.0
    return branch @ on_path


def soft_log_probs(tree: Tree, X: Tensor) -> Tensor:
    """``[N, K]`` log class probabilities of soft inference (each row's exp sums to 1)."""
    return _log_probs_from_scores(tree, _node_scores(tree, X))


def hard_predict(tree: Tree, X: Tensor) -> Tensor:
    """``[N]`` classes reached by greedy descent from the root (ties go to the first child)."""
    scores = _node_scores(tree, X)
    n = scores.shape[0]
    # kids[node] = its two children; leaves point to themselves so finished rows stay put
    kids = torch.arange(tree.n_nodes, device=scores.device)[:, None].repeat(1, 2)
    kids[tree.n_classes:] = torch.tensor(tree.children, device=scores.device)
    node = torch.full((n,), tree.root, dtype=torch.long, device=scores.device)
    rows = torch.arange(n, device=scores.device)
    for _ in range(tree.depth):
        pair = kids[node]
        go_second = scores[rows, pair[:, 1]] > scores[rows, pair[:, 0]]
        node = pair[rows, go_second.long()]
    return node


def node_decisions(tree: Tree, X: Tensor, node: int, ablate: Sequence[int] | None = None) -> Tensor:
    """``[N]`` the child (0|1) each point goes to at inner ``node``, features ``ablate`` set to 0.

    Zeroing features of the input equals zeroing those columns of the node's two rows, which avoids
    copying ``X``.
    """
    pair = list(tree.children_of(node))
    rows = tree.weight[pair]
    if ablate:
        rows = rows.clone()
        rows[:, list(ablate)] = 0.0
    scores = X.to(rows.dtype) @ rows.T + tree.bias[pair]
    return (scores[:, 1] > scores[:, 0]).long()


# --------------------------------------------------------------------------------------------------
# Tree supervision


def tree_loss(tree: Tree, X: Tensor, y: Tensor) -> Tensor:
    """Mean over points of -log(soft path probability of the true class)."""
    return -soft_log_probs(tree, X).gather(1, y.long()[:, None]).mean()


def finetune_head(weight: Tensor, bias: Tensor, X: Tensor, y: Tensor, *, epochs: int = 50,
                  lr: float = 1e-2, tree_weight: float = 1.0, normalise: bool = False, seed: int = 0,
                  batch_size: int | None = None,
                  children: Sequence[tuple[int, int]] | None = None) -> tuple[Tensor, Tensor]:
    """Finetune a head with cross-entropy + ``tree_weight`` x the tree supervision loss.

    The hierarchy is induced once from the initial head and kept fixed; every step recomputes the
    inner nodes as means of the current leaves, so the tree loss moves the head rows themselves.
    Adam, full batch by default (``epochs`` = steps); ``batch_size`` switches to shuffled
    minibatches (``seed`` orders them) when ``X`` is too large for a full-batch graph. Returns the new
    ``(weight, bias)``; the finetuned tree is ``build_tree(tree.children, new_weight, new_bias, normalise)``
    with ``tree = induce_tree(weight, bias, normalise)`` (re-inducing may give another hierarchy).
    ``children`` supervises with a given hierarchy instead of the one induced from ``weight``.
    """
    y = y.long()
    if children is None:
        children = induce_tree(weight, bias, normalise).children
    k = weight.shape[0]
    mean = _mean_matrix(k, children, weight.dtype, weight.device)
    skeleton = Tree(k, children, torch.zeros(2 * k - 1, 0), torch.zeros(2 * k - 1), normalise)
    w = weight.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=lr)
    gen = torch.Generator().manual_seed(seed)
    n = X.shape[0]

    def step(index: Tensor | None) -> None:
        xs, ys = (X, y) if index is None else (X[index], y[index])
        logits = xs.to(w.dtype) @ w.T + b
        # node scores are linear in the leaf scores, so one [N, K] matmul serves both losses
        leaf = logits / w.norm(dim=1).clamp_min(1e-12) if normalise else logits
        tree_nll = -_log_probs_from_scores(skeleton, leaf @ mean.T).gather(1, ys[:, None]).mean()
        loss = F.cross_entropy(logits, ys) + tree_weight * tree_nll
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.enable_grad():  # callers often score under no_grad
        for _ in range(epochs):
            if batch_size is None or batch_size >= n:
                step(None)
            else:
                for index in torch.randperm(n, generator=gen).split(batch_size):
                    step(index)
    return w.detach(), b.detach()


# --------------------------------------------------------------------------------------------------
# Explaining a node's decision with latents


def _side(tree: Tree, node: int, y: Tensor) -> Tensor:
    """``[N]`` the child (0|1) of ``node`` holding each point's true class; -1 for points not under it."""
    lookup = torch.full((tree.n_classes,), -1, dtype=torch.long)
    for j, child in enumerate(tree.children_of(node)):
        lookup[tree.leaves(child)] = j
    return lookup.to(y.device)[y.long()]


def rule_latents(tree: Tree, X: Tensor, y: Tensor, node: int, target: float = 0.9,
                 max_latents: int = 64) -> dict[str, Any]:
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
        return {"latents": [], "accuracy": None, "rule_accuracy": None, "bias_accuracy": None,
                "reached_target": False, "n_tokens": 0}
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
    return {"latents": chosen, "accuracy": full, "rule_accuracy": rule_acc, "bias_accuracy": bias_acc,
            "reached_target": rule_acc >= goal, "n_tokens": n}


def flip_rate(tree: Tree, X: Tensor, y: Tensor, node: int, latents: Sequence[int]) -> float:
    """Among points under ``node`` that it routes correctly, the fraction that ``latents`` = 0 reroutes.

    NaN when ``node`` routes no point correctly (nothing to flip).
    """
    side = _side(tree, node, y)
    full = node_decisions(tree, X, node)
    correct = (side >= 0) & (full == side)
    if not bool(correct.any()):
        return float("nan")
    if not latents:
        return 0.0
    ablated = node_decisions(tree, X, node, ablate=latents)
    return float((ablated[correct] != full[correct]).float().mean())


def matched_random(latents: Sequence[int], frequency: Tensor, exclude: Sequence[int] = (),
                   seed: int = 0, n_bins: int = 20) -> list[int]:
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
            options = [j for bin_ in range(home - width, home + width + 1)
                       for j in members.get(bin_, []) if j not in taken]
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


def triplet_agreement(a: Tree | Mapping[Hashable, Hashable], b: Tree | Mapping[Hashable, Hashable],
                      leaves: Sequence[Hashable]) -> float | None:
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
