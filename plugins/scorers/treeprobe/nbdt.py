"""Neural-backed decision trees (NBDT, SegNBDT) over a linear head: pure tensor code, no I/O.

A linear head (K classes x D features, plus biases) is turned into a binary decision tree whose
leaves are the classes (the *induced hierarchy*): the class rows are clustered by Ward
agglomerative clustering, and every inner node scores a point with the mean of its leaves' rows
(and biases). Descending the tree asks one question per inner node: "which child scores higher?".
On SAE latents these questions are linear in sparse, hopefully interpretable features, so each
decision can be explained by the few latents that carry it and tested by ablating them (the
:mod:`~saebench.plugins.scorers.treeprobe.rules` module, which also compares hierarchies).

Inference is *hard* (:func:`hard_predict`: greedy descent) or *soft* (:func:`soft_log_probs`: the
probability of a class is the product, along its root-to-leaf path, of each node's softmax over
its two children's scores). :func:`finetune_head` adds the tree supervision loss (-log of the soft
path probability of the true class) to the head's cross-entropy, with the hierarchy induced once
from the initial head and kept fixed; :class:`Finetune` holds its training settings.

The *normalised* variant L2-normalises each class row before clustering and averaging; the class
bias is divided by the same norm, so a leaf's score is its logit divided by its row norm (the
signed distance to the class hyperplane) and biases stay on the weights' scale.

Node ids: classes are leaves ``0..K-1``; inner node ``i`` (the ``i``-th merge) has id ``K + i``, as in
scipy's linkage matrix; the root is the last merge. A node decision is ``1`` when the second child
scores strictly higher, else ``0``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "Tree",
    "build_tree",
    "induce_tree",
    "soft_log_probs",
    "hard_predict",
    "node_decisions",
    "tree_loss",
    "Finetune",
    "finetune_head",
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
            raise ValueError(
                f"weight/bias must have {n_nodes} rows, got {tuple(self.weight.shape)} and {tuple(self.bias.shape)}"
            )
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

    def to_dict(
        self, class_names: Sequence[str] | None = None, node_info: Mapping[int, Mapping[str, Any]] | None = None
    ) -> dict[str, Any]:
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
                out = {
                    "id": node,
                    "leaves": [names[c] for c in self.leaves(node)],
                    "children": [node_dict(c) for c in self.children_of(node)],
                }
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


def _mean_matrix(
    n_classes: int, children: Sequence[tuple[int, int]], dtype: torch.dtype, device: torch.device | str | None = None
) -> Tensor:
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


def build_tree(children: Sequence[tuple[int, int]], weight: Tensor, bias: Tensor, normalise: bool = False) -> Tree:
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
    kids[tree.n_classes :] = torch.tensor(tree.children, device=scores.device)
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


@dataclass(frozen=True)
class Finetune:
    """The settings of tree-supervised fine-tuning (:func:`finetune_head`).

    Adam at learning rate ``lr`` for ``epochs`` steps, full batch by default; ``batch_size`` switches
    to shuffled minibatches (``seed`` orders them, ``epochs`` then counts passes). The loss is
    cross-entropy + ``tree_weight`` x the tree supervision loss; with ``normalise`` the tree loss is
    on the normalised variant's leaf scores (see the module docstring).
    """

    epochs: int = 50
    lr: float = 1e-2
    tree_weight: float = 1.0
    normalise: bool = False
    seed: int = 0
    batch_size: int | None = None


def finetune_head(
    weight: Tensor,
    bias: Tensor,
    X: Tensor,
    y: Tensor,
    settings: Finetune = Finetune(),
    children: Sequence[tuple[int, int]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Finetune a head with cross-entropy + ``settings.tree_weight`` x the tree supervision loss.

    The hierarchy is induced once from the initial head and kept fixed; every step recomputes the
    inner nodes as means of the current leaves, so the tree loss moves the head rows themselves.
    Returns the new ``(weight, bias)``; the finetuned tree is
    ``build_tree(tree.children, new_weight, new_bias, settings.normalise)`` with
    ``tree = induce_tree(weight, bias, settings.normalise)`` (re-inducing may give another hierarchy).
    ``children`` supervises with a given hierarchy instead of the one induced from ``weight``.
    """
    normalise, batch_size = settings.normalise, settings.batch_size
    y = y.long()
    if children is None:
        children = induce_tree(weight, bias, normalise).children
    k = weight.shape[0]
    mean = _mean_matrix(k, children, weight.dtype, weight.device)
    skeleton = Tree(k, children, torch.zeros(2 * k - 1, 0), torch.zeros(2 * k - 1), normalise)
    w = weight.detach().clone().requires_grad_(True)
    b = bias.detach().clone().requires_grad_(True)
    opt = torch.optim.Adam([w, b], lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    n = X.shape[0]

    def step(index: Tensor | None) -> None:
        xs, ys = (X, y) if index is None else (X[index], y[index])
        logits = xs.to(w.dtype) @ w.T + b
        # node scores are linear in the leaf scores, so one [N, K] matmul serves both losses
        leaf = logits / w.norm(dim=1).clamp_min(1e-12) if normalise else logits
        tree_nll = -_log_probs_from_scores(skeleton, leaf @ mean.T).gather(1, ys[:, None]).mean()
        loss = F.cross_entropy(logits, ys) + settings.tree_weight * tree_nll
        opt.zero_grad()
        loss.backward()
        opt.step()

    with torch.enable_grad():  # callers often score under no_grad
        for _ in range(settings.epochs):
            if batch_size is None or batch_size >= n:
                step(None)
            else:
                for index in torch.randperm(n, generator=gen).split(batch_size):
                    step(index)
    return w.detach(), b.detach()
