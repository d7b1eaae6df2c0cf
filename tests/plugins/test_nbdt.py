"""Neural-backed decision trees over a linear head (the treeprobe package's nbdt and rules modules)."""

import itertools
import json
import math

import numpy as np
import pytest
import torch

from saebench.plugins.scorers.treeprobe.nbdt import (
    Finetune,
    Tree,
    build_tree,
    finetune_head,
    hard_predict,
    induce_tree,
    node_decisions,
    soft_log_probs,
    tree_loss,
)
from saebench.plugins.scorers.treeprobe.rules import (
    flip_rate,
    matched_random,
    random_tree,
    rule_latents,
    triplet_agreement,
)

# --------------------------------------------------------------------------------------------------
# Helpers


def leaf_sets(tree):
    """The set of leaf sets of the inner nodes: the merge structure, independent of node ids."""
    return {frozenset(tree.leaves(n)) for n in range(tree.n_classes, tree.n_nodes)}


def naive_ward(rows):
    """Textbook Ward: repeatedly merge the pair whose merge least increases within-cluster variance."""
    clusters = {i: [i] for i in range(len(rows))}
    merged = set()
    next_id = len(rows)
    while len(clusters) > 1:
        best = None
        for a, b in itertools.combinations(sorted(clusters), 2):
            ra, rb = rows[clusters[a]], rows[clusters[b]]
            na, nb = len(ra), len(rb)
            cost = na * nb / (na + nb) * float(((ra.mean(0) - rb.mean(0)) ** 2).sum())
            if best is None or cost < best[0]:
                best = (cost, a, b)
        _, a, b = best
        clusters[next_id] = clusters.pop(a) + clusters.pop(b)
        merged.add(frozenset(clusters[next_id]))
        next_id += 1
    return merged


def descend(tree, x):
    """Greedy descent for one point, in float64 python."""
    node = tree.root
    while not tree.is_leaf(node):
        a, b = tree.children_of(node)
        sa = float(tree.weight[a].double() @ x.double() + tree.bias[a])
        sb = float(tree.weight[b].double() @ x.double() + tree.bias[b])
        node = b if sb > sa else a
    return node


GROUP_A, GROUP_B = (0, 1, 2), (3, 4, 5)
NAMES = [f"c{c}" for c in range(6)]
TAXONOMY = {**{f"c{c}": "A" for c in GROUP_A}, **{f"c{c}": "B" for c in GROUP_B}, "A": "root", "B": "root"}


def planted_data(n=3000, d=40, seed=0):
    """6 classes in groups A = {0, 1, 2} and B = {3, 4, 5}.

    Feature 0 fires on group A tokens, feature 1 on group B tokens (95%); feature 2 + c fires on
    class c (60%) and sometimes on its siblings (15%); features 8.. are sparse noise.
    """
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 6, (n,), generator=g)
    group = (y >= 3).long()

    def fires(p):
        return (torch.rand(n, generator=g) < p).float() * (0.5 + torch.rand(n, generator=g))

    X = torch.zeros(n, d)
    X[:, 0] = (group == 0).float() * fires(0.95)
    X[:, 1] = (group == 1).float() * fires(0.95)
    for c in range(6):
        own = (y == c).float() * fires(0.6)
        sibling = ((group == c // 3) & (y != c)).float() * fires(0.15)
        X[:, 2 + c] = torch.maximum(own, sibling)
    X[:, 8:] = (torch.rand(n, d - 8, generator=g) < 0.05).float() * torch.rand(n, d - 8, generator=g)
    return X, y


def fit_head(X, y, k, steps=300, lr=0.1):
    torch.manual_seed(0)
    w = torch.zeros(k, X.shape[1], requires_grad=True)
    b = torch.zeros(k, requires_grad=True)
    opt = torch.optim.Adam([w, b], lr=lr)
    for _ in range(steps):
        loss = torch.nn.functional.cross_entropy(X @ w.T + b, y) + 1e-3 * (w ** 2).sum()
        opt.zero_grad()
        loss.backward()
        opt.step()
    return w.detach(), b.detach()


@pytest.fixture(scope="module")
def planted():
    X, y = planted_data()
    w, b = fit_head(X, y, 6)
    return X, y, w, b


# --------------------------------------------------------------------------------------------------
# Hand-computed


W4 = torch.tensor([[2.0, 0.0], [2.0, 0.5], [0.0, 2.0], [0.5, 2.0]], dtype=torch.float64)
B4 = torch.tensor([0.0, 0.1, -0.1, 0.2], dtype=torch.float64)
POINTS = torch.tensor([[1.0, 0.2], [0.3, 1.5], [1.0, 1.1], [-0.5, 0.4]], dtype=torch.float64)


def test_induce_tree_pairs_obvious_pairs_and_averages_rows():
    tree = induce_tree(W4, B4)
    assert leaf_sets(tree) == {frozenset({0, 1}), frozenset({2, 3}), frozenset({0, 1, 2, 3})}
    assert tree.root == 6 and tree.depth == 2 and len(tree.children) == 3
    for node in range(4, 7):
        members = tree.leaves(node)
        torch.testing.assert_close(tree.weight[node], W4[members].mean(0))
        torch.testing.assert_close(tree.bias[node], B4[members].mean())
    torch.testing.assert_close(tree.weight[:4], W4)


def test_hard_and_soft_inference_match_hand_computation():
    tree = induce_tree(W4, B4)
    log_probs = soft_log_probs(tree, POINTS)
    hard = hard_predict(tree, POINTS)
    for x, lp, h in zip(POINTS, log_probs, hard):
        s = [float(W4[c] @ x + B4[c]) for c in range(4)]
        g01, g23 = (s[0] + s[1]) / 2, (s[2] + s[3]) / 2
        p_group = {0: 1 / (1 + math.exp(g23 - g01))}
        p_group[1] = 1 - p_group[0]
        p01 = 1 / (1 + math.exp(s[1] - s[0]))
        p23 = 1 / (1 + math.exp(s[3] - s[2]))
        expected = [p_group[0] * p01, p_group[0] * (1 - p01), p_group[1] * p23, p_group[1] * (1 - p23)]
        torch.testing.assert_close(lp.exp(), torch.tensor(expected, dtype=torch.float64))
        if g01 > g23:
            want = 0 if s[0] > s[1] else 1
        else:
            want = 2 if s[2] > s[3] else 3
        assert int(h) == want
    torch.testing.assert_close(log_probs.exp().sum(1), torch.ones(len(POINTS), dtype=torch.float64))


def test_soft_probabilities_sum_to_one_and_hard_matches_descent():
    g = torch.Generator().manual_seed(1)
    w, b = torch.randn(7, 5, generator=g), torch.randn(7, generator=g)
    X = torch.randn(50, 5, generator=g)
    for tree in (induce_tree(w, b), random_tree(7, w, b, seed=3), induce_tree(w, b, normalise=True)):
        torch.testing.assert_close(soft_log_probs(tree, X).exp().sum(1), torch.ones(50))
        assert hard_predict(tree, X).tolist() == [descend(tree, x) for x in X]


def test_tree_structure_accessors():
    tree = induce_tree(W4, B4)
    parent = tree.parent
    assert set(parent) == set(range(6)) and tree.root not in parent
    for c in range(4):
        path = tree.path(c)
        assert path[0][0] == tree.root
        for node, j in path:
            assert c in tree.leaves(tree.children_of(node)[j])
    with pytest.raises(ValueError):
        Tree(3, [(0, 1), (0, 2)], torch.zeros(5, 2), torch.zeros(5))
    with pytest.raises(ValueError):
        tree.children_of(0)


def test_to_dict_is_json_and_merges_node_info():
    tree = induce_tree(W4, B4)
    out = tree.to_dict(["a", "b", "c", "d"], {tree.root: {"latents": [3, 1]}})
    json.dumps(out)
    assert out["id"] == 6 and out["latents"] == [3, 1]
    assert sorted(out["leaves"]) == ["a", "b", "c", "d"]
    assert sorted(sorted(child["leaves"]) for child in out["children"]) == [["a", "b"], ["c", "d"]]
    leaf = out["children"][0]["children"][0]
    assert set(leaf) == {"id", "name"}


def test_normalised_variant_uses_unit_rows():
    # raw rows: 3 sits near 1 and 2; by direction it sits with 0
    w = torch.tensor([[10.0, 0.0], [0.0, 1.0], [0.0, 1.1], [1.0, 0.05]])
    b = torch.tensor([2.0, 0.1, 0.0, 0.0])
    assert frozenset({0, 3}) not in leaf_sets(induce_tree(w, b))
    tree = induce_tree(w, b, normalise=True)
    torch.testing.assert_close(tree.weight[:4].norm(dim=1), torch.ones(4))
    torch.testing.assert_close(tree.bias[:4], b / w.norm(dim=1))
    assert frozenset({0, 3}) in leaf_sets(tree) and frozenset({1, 2}) in leaf_sets(tree)


# --------------------------------------------------------------------------------------------------
# Ward agreement


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_induced_merges_equal_scipy_ward_and_textbook_ward(seed):
    from scipy.cluster.hierarchy import linkage, to_tree

    g = torch.Generator().manual_seed(seed)
    w = torch.randn(11, 6, generator=g, dtype=torch.float64)
    tree = induce_tree(w, torch.zeros(11, dtype=torch.float64))

    root = to_tree(linkage(w.numpy(), method="ward"))
    scipy_sets, stack = set(), [root]
    while stack:
        node = stack.pop()
        if not node.is_leaf():
            scipy_sets.add(frozenset(node.pre_order()))
            stack += [node.get_left(), node.get_right()]
    assert leaf_sets(tree) == scipy_sets
    assert leaf_sets(tree) == naive_ward(w)


# --------------------------------------------------------------------------------------------------
# Planted hierarchy


def test_planted_root_splits_groups(planted):
    X, y, w, b = planted
    tree = induce_tree(w, b)
    a, b_ = tree.children_of(tree.root)
    assert {frozenset(tree.leaves(a)), frozenset(tree.leaves(b_))} == {frozenset(GROUP_A), frozenset(GROUP_B)}
    assert (hard_predict(tree, X) == y).float().mean() > 0.6


def test_planted_root_rule_is_the_group_features(planted):
    X, y, w, b = planted
    tree = induce_tree(w, b)
    rule = rule_latents(tree, X, y, tree.root)
    assert rule["n_tokens"] == len(y)
    assert rule["accuracy"] > 0.95
    assert 1 <= len(rule["latents"]) <= 3
    assert {0, 1} & set(rule["latents"])
    assert rule["reached_target"] and rule["rule_accuracy"] >= 0.9 * rule["accuracy"]
    assert rule["rule_accuracy"] > rule["bias_accuracy"]


def test_planted_rule_flips_far_more_than_matched_random(planted):
    X, y, w, b = planted
    tree = induce_tree(w, b)
    latents = rule_latents(tree, X, y, tree.root)["latents"]
    ruled = flip_rate(tree, X, y, tree.root, latents)
    frequency = (X > 0).float().mean(0)
    # the control draws from features with no planted role (else it may draw the other group feature)
    controls = [flip_rate(tree, X, y, tree.root, matched_random(latents, frequency, exclude=range(8), seed=s))
                for s in range(10)]
    # the class features also carry the group, so a minimal sufficient rule is only partly necessary
    assert ruled > 0.05
    assert ruled > 10 * float(np.mean(controls)) + 0.02


def test_planted_triplet_agreement(planted):
    X, y, w, b = planted
    assert triplet_agreement(induce_tree(w, b), TAXONOMY, NAMES) == 1.0
    randoms = [triplet_agreement(random_tree(6, w, b, seed=s), TAXONOMY, NAMES) for s in range(20)]
    assert float(np.mean(randoms)) < 0.8


def test_finetune_keeps_hard_accuracy_and_reduces_tree_loss(planted):
    X, y, _, _ = planted
    w0, b0 = fit_head(X, y, 6, steps=60)  # an underfit head leaves room to improve
    tree0 = induce_tree(w0, b0)
    w1, b1 = finetune_head(w0, b0, X, y, Finetune(epochs=60, lr=0.05))
    tree1 = build_tree(tree0.children, w1, b1)
    acc0 = float((hard_predict(tree0, X) == y).float().mean())
    acc1 = float((hard_predict(tree1, X) == y).float().mean())
    assert acc1 >= acc0
    assert float(tree_loss(tree1, X, y)) < float(tree_loss(tree0, X, y)) - 0.05
    assert w1.shape == w0.shape and not w1.requires_grad


def test_finetune_normalised_reduces_its_tree_loss(planted):
    # unit-norm rows keep node scores small, where the soft loss rewards mean margin more than
    # correct routing: only the loss is promised here (hard accuracy can drop, see the report)
    X, y, _, _ = planted
    w0, b0 = fit_head(X, y, 6, steps=60)
    tree0 = induce_tree(w0, b0, normalise=True)
    w1, b1 = finetune_head(w0, b0, X, y, Finetune(epochs=60, lr=0.05, normalise=True))
    tree1 = build_tree(tree0.children, w1, b1, normalise=True)
    assert float(tree_loss(tree1, X, y)) < float(tree_loss(tree0, X, y)) - 0.02


def test_finetune_minibatch_is_seeded(planted):
    X, y, w, b = planted
    with torch.no_grad():  # finetuning turns gradients back on for itself
        runs = [finetune_head(w, b, X, y, Finetune(epochs=2, lr=0.01, batch_size=512, seed=s)) for s in (0, 0, 1)]
    torch.testing.assert_close(runs[0][0], runs[1][0])
    assert not torch.equal(runs[0][0], runs[2][0])


# --------------------------------------------------------------------------------------------------
# Triplet agreement


def test_triplet_agreement_identical_and_disagreeing_trees():
    w, b = torch.zeros(4, 1), torch.zeros(4)
    balanced = build_tree([(0, 1), (2, 3), (4, 5)], w, b)
    crossed = build_tree([(0, 2), (1, 3), (4, 5)], w, b)
    caterpillar = build_tree([(0, 1), (4, 2), (5, 3)], w, b)
    labels = range(4)
    assert triplet_agreement(balanced, balanced, labels) == 1.0
    assert triplet_agreement(crossed, balanced, labels) == 0.0
    # 012 and 013 agree (01 first); 023 and 123 do not (the caterpillar joins 2 before 3)
    assert triplet_agreement(caterpillar, balanced, labels) == 0.5


def test_triplet_agreement_dict_taxonomies():
    w, b = torch.zeros(4, 1), torch.zeros(4)
    tree = build_tree([(0, 1), (2, 3), (4, 5)], w, b)
    names = ["Name", "Call", "FunctionDef", "Return"]
    grammar = {"Name": "expr", "Call": "expr", "FunctionDef": "stmt", "Return": "stmt", "expr": "AST", "stmt": "AST"}
    assert triplet_agreement(tree, grammar, names) == 1.0
    # no common root: a virtual one joins them
    assert triplet_agreement(tree, {"Name": "expr", "Call": "expr", "FunctionDef": "stmt", "Return": "stmt"}, names) == 1.0
    assert triplet_agreement(tree, grammar, ["Name", "FunctionDef", "Call", "Return"]) == 0.0
    # flat: nothing resolved
    assert triplet_agreement(tree, {n: "AST" for n in names}, names) is None
    # a leaf missing from the map hangs off the root: resolves (Name, Call | Return) only
    assert triplet_agreement(tree, {"Name": "expr", "Call": "expr"}, names) == 1.0
    # dict vs dict, non-binary
    assert triplet_agreement(grammar, grammar, names) == 1.0
    with pytest.raises(ValueError):
        triplet_agreement(tree, grammar, names[:3])


# --------------------------------------------------------------------------------------------------
# Edge cases


def test_two_classes_is_one_softmax():
    g = torch.Generator().manual_seed(0)
    w, b = torch.randn(2, 3, generator=g), torch.randn(2, generator=g)
    X = torch.randn(20, 3, generator=g)
    tree = induce_tree(w, b)
    assert tree.children == [(0, 1)] and tree.root == 2 and tree.depth == 1
    logits = X @ w.T + b
    torch.testing.assert_close(soft_log_probs(tree, X), torch.log_softmax(logits, 1))
    assert torch.equal(hard_predict(tree, X), logits.argmax(1))
    y = logits.argmax(1)
    assert flip_rate(tree, X, y, 2, []) == 0.0
    with pytest.raises(ValueError):
        induce_tree(w[:1], b[:1])


def test_node_without_tokens_and_missing_class(planted):
    X, y, w, b = planted
    tree = induce_tree(w, b)
    keep = y != 5  # class 5 never occurs: the root's rule is unaffected
    rule = rule_latents(tree, X[keep], y[keep], tree.root)
    assert rule["n_tokens"] == int(keep.sum()) and {0, 1} & set(rule["latents"])
    # only group A tokens: the node above class 5 (inside group B) sees none
    node = tree.parent[5]
    assert set(tree.leaves(node)) <= set(GROUP_B)
    in_a = y < 3
    empty = rule_latents(tree, X[in_a], y[in_a], node)
    assert empty == {"latents": [], "accuracy": None, "rule_accuracy": None, "bias_accuracy": None,
                     "reached_target": False, "n_tokens": 0}
    assert math.isnan(flip_rate(tree, X[in_a], y[in_a], node, [0]))


def test_ablating_nothing_flips_nothing(planted):
    X, y, w, b = planted
    tree = induce_tree(w, b)
    for node in range(6, 11):
        assert torch.equal(node_decisions(tree, X, node, ablate=[]), node_decisions(tree, X, node))
        assert flip_rate(tree, X, y, node, []) == 0.0


def test_node_decisions_ablation_equals_zeroed_input(planted):
    X, y, w, b = planted
    tree = induce_tree(w, b)
    zeroed = X.clone()
    zeroed[:, [0, 3]] = 0
    assert torch.equal(node_decisions(tree, X, tree.root, ablate=[0, 3]), node_decisions(tree, zeroed, tree.root))


def test_matched_random_same_bin_and_excluded():
    frequency = torch.linspace(0, 1, 100)
    picks = matched_random([5, 50, 95], frequency, exclude=[6, 7], seed=0, n_bins=10)
    assert len(set(picks)) == 3 and not set(picks) & {5, 50, 95, 6, 7}
    assert [p // 10 for p in picks] == [0, 5, 9]
    assert picks == matched_random([5, 50, 95], frequency, exclude=[6, 7], seed=0, n_bins=10)
    # a used-up bin borrows from its neighbours
    tiny = torch.tensor([0.0, 0.0, 0.5, 0.5, 1.0, 1.0])
    assert matched_random([4], tiny, exclude=[5], n_bins=3) in ([2], [3])
    with pytest.raises(ValueError):
        matched_random([0], tiny, exclude=[1, 2, 3, 4, 5], n_bins=3)


def test_rule_is_not_empty_when_the_bias_alone_scores_above_target():
    # node 3 separates class 0 (95% of its tokens) from class 1; feature 0 marks class 1, the bias
    # favours class 0: the bias alone gets 0.95 ≥ 0.9 × 1.0, but explains nothing
    n = 400
    y = torch.zeros(n, dtype=torch.long)
    y[:20] = 1
    x = torch.zeros(n, 3)
    x[:20, 0] = 1.0
    x[:, 1] = torch.rand(n, generator=torch.Generator().manual_seed(0))  # uninformative
    weight = torch.tensor([[0.0, 0, 0], [4.0, 0, 0], [0.0, 0, 1]])
    bias = torch.tensor([1.0, -1.0, -5.0])
    tree = build_tree([(0, 1), (3, 2)], weight, bias)
    rule = rule_latents(tree, x, y, 3, target=0.9)
    assert rule["bias_accuracy"] == pytest.approx(0.95) and rule["accuracy"] == 1.0
    assert rule["latents"] == [0] and rule["reached_target"]
