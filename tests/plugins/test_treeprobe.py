"""TreeProbe on a task with a known answer: classes built from planted latent directions.

Six classes in two groups; latent 0 fires on every token of group A, latent 1 on group B, latents
2..7 mark one class each (on 60% of its tokens), the other latents are sparse noise. The "SAE" is the identity with a
ReLU, so its latents are the planted ones. The induced tree must split A from B at the root, the
root's rule must name latent 0 or 1 (through the explainer the runner passes), ablating the rule
must flip far more decisions than ablating frequency-matched random latents, and the tree must
agree with the planted taxonomy where random trees do not."""

import json

import pytest
import torch

import saebench
from saebench.errors import ConfigError
from saebench.interfaces import EvalInputs
from saebench.probes.tasks import ProbeData
from test_sparse_probing import identity_sae

D = 40
GROUP = {0: "A", 1: "A", 2: "A", 3: "B", 4: "B", 5: "B"}


def planted_data(n=3000, seed=0):
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 6, (n,), generator=g)
    x = torch.relu(torch.randn(n, D, generator=g) - 1.8)  # sparse noise everywhere
    group_b = (y >= 3).long()
    x[torch.arange(n), group_b] += 2.0 + torch.rand(n, generator=g)  # latent 0: group A, latent 1: group B
    # latents 2..7 mark the class on 60% of its tokens: the group latent carries real weight in the head
    marked = torch.rand(n, generator=g) < 0.6
    x[torch.arange(n)[marked], 2 + y[marked]] += 1.0 + torch.rand(int(marked.sum()), generator=g)
    sequence = torch.arange(n) // 10
    train = (torch.rand(int(sequence.max()) + 1, generator=g) < 0.8)[sequence]
    taxonomy = {f"c{c}": GROUP[c] for c in range(6)} | {"A": "root", "B": "root"}
    return ProbeData("planted", "token", [f"c{c}" for c in range(6)], x, torch.arange(n) % 97, sequence, y, train,
                     {}, taxonomy)


def score(data, explain=None, **options):
    scorer = saebench.plugin_manager.get("scorer", "treeprobe")(tasks=["python_syntax"], **options)
    inputs = EvalInputs(hookpoint="layers.0", activations=lambda bt: iter(()), tokens=torch.zeros(0, 0, dtype=torch.long),
                        probe_data=lambda task, **kw: data, explain=explain)
    return scorer.score(identity_sae(D), inputs)


@pytest.fixture(scope="module")
def planted_result():
    asked = []

    def explain(latents):
        asked.extend(latents)
        return {j: f"planted latent {j}" for j in latents}

    return score(planted_data(), explain, finetune_epochs=20, seeds=3), asked


def test_tree_recovers_the_planted_grouping_and_rules_name_the_planted_latents(planted_result):
    result, asked = planted_result
    tree = result.details["tasks"]["python_syntax"]["tree"]
    json.dumps(tree)  # exportable as is
    sides = sorted(sorted(child["leaves"]) if "leaves" in child else [child["name"]] for child in tree["children"])
    assert sides == [["c0", "c1", "c2"], ["c3", "c4", "c5"]]
    assert tree["latents"] and set(tree["latents"][:1]) <= {0, 1} and len(tree["latents"]) <= 3
    assert tree["rule"] == f"Is there planted latent {tree['latents'][0]}?"
    assert set(asked) >= set(tree["latents"])
    m = result.metrics
    assert m["taxonomy_agreement"] == 1.0 and m["random_taxonomy_agreement"] < 0.6
    assert m["rule_flip_rate"] > 5 * m["random_flip_rate"] + 0.05
    # bootstrap trees agree on the groups; within a group the order is arbitrary
    assert m["head_accuracy"] > 0.7 and m["tree_hard_accuracy"] > 0.65 and m["stability"] > 0.75
    assert m["tree_gap"] == pytest.approx(m["head_accuracy"] - m["tree_hard_accuracy"])


def test_every_inner_node_has_a_rule_and_a_faithfulness_test(planted_result):
    result, _ = planted_result

    def inner(node):
        if "children" in node:
            yield node
            for child in node["children"]:
                yield from inner(child)

    nodes = list(inner(result.details["tasks"]["python_syntax"]["tree"]))
    assert len(nodes) == 5
    for node in nodes:
        assert node["latents"] and node["rule"].startswith("Is there planted latent")
        assert node["rule_accuracy"] >= node["bias_accuracy"] + 0.9 * (node["accuracy"] - node["bias_accuracy"]) - 1e-9
        # a class's own marker latent, or the group latent, decides the lower nodes
        assert set(node["latents"]) & set(range(8))


def test_without_an_explainer_rules_name_the_strongest_task_tokens():
    data = planted_data(n=1200)
    data.token_text = {i: f"tok{i}" for i in range(97)}
    result = score(data, None, finetune_epochs=0, seeds=1)
    tree = result.details["tasks"]["python_syntax"]["tree"]
    assert tree["rule"].startswith("Is there tokens 'tok")
    assert "ft_tree_hard_accuracy" not in result.metrics and "stability" not in result.metrics or \
        result.metrics.get("stability") is None


def test_a_rule_wider_than_half_the_sae_has_no_random_control_and_does_not_fail():
    data = planted_data(n=1200)
    data.acts = data.acts[:, :8].contiguous()  # eight latents: rules can use more than half of them
    scorer = saebench.plugin_manager.get("scorer", "treeprobe")(tasks=["python_syntax"], rule_target=1.0,
                                                                 max_rule_latents=8, finetune_epochs=0, seeds=1)
    inputs = EvalInputs(hookpoint="layers.0", activations=lambda bt: iter(()), tokens=torch.zeros(0, 0, dtype=torch.long),
                        probe_data=lambda task, **kw: data)
    tree = scorer.score(identity_sae(8), inputs).details["tasks"]["python_syntax"]["tree"]
    nodes, todo = [], [tree]
    while todo:
        node = todo.pop()
        if "children" in node:
            nodes.append(node)
            todo.extend(node["children"])
    wide = [n for n in nodes if 2 * len(n["latents"]) > 8]
    assert wide, [len(n["latents"]) for n in nodes]  # the case under test occurred
    for node in nodes:
        assert node["flip_rate"] is not None
        assert (node["random_flip_rate"] is None) == (node in wide)


def test_sequence_tasks_and_two_class_tasks_are_refused():
    with pytest.raises(ConfigError, match="token-level"):
        saebench.plugin_manager.get("scorer", "treeprobe")(tasks=["text_source"])
    data = planted_data(n=400)
    data.labels = (data.labels >= 3).long()
    data.classes = ["A", "B"]
    with pytest.raises(ConfigError, match="fewer than 3"):
        score(data)


# -- per-unit statistics (intervals) -------------------------------------------------------------------

HEADLINE = ("head_accuracy", "tree_hard_accuracy", "rule_flip_rate")
TWO_TASKS = ["python_syntax", "char-class-test"]


@pytest.fixture(scope="module")
def two_saes():
    """Two token tasks with different planted data, scored for the identity SAE and a noisy one."""
    import types

    from saebench.testing import registered
    from test_sparse_probing import CharClassTask

    datas = {"python_syntax": planted_data(n=1500, seed=0), "char-class-test": planted_data(n=1200, seed=1)}
    g = torch.Generator().manual_seed(3)
    noisy = saebench.build_sae("relu", {"W_enc": torch.eye(D) + 0.3 * torch.randn(D, D, generator=g),
                                        "W_dec": torch.eye(D), "b_enc": torch.zeros(D), "b_dec": torch.zeros(D)})
    plugin = types.SimpleNamespace(register_probe_tasks=saebench.hookimpl(lambda register: register(CharClassTask)))
    with registered(plugin, "treeprobe-units-test"):
        scorer = saebench.plugin_manager.get("scorer", "treeprobe")(tasks=TWO_TASKS, finetune_epochs=5, seeds=1)
    inputs = EvalInputs(hookpoint="layers.0", activations=lambda bt: iter(()), tokens=torch.zeros(0, 0, dtype=torch.long),
                        probe_data=lambda task, **kw: datas[task.name])
    return datas, [scorer.score(sae, inputs) for sae in (identity_sae(D), noisy)]


def test_units_recompute_the_headline_metrics(two_saes):
    _, results = two_saes
    for result in results:
        u = result.units
        assert u.unit == "text" and set(HEADLINE) <= set(u.metrics) and {"tree_gap", "random_flip_rate"} <= set(u.metrics)
        for m in u.metrics:
            assert u.value(m) == pytest.approx(result.metrics[m], abs=1e-9), m
        # not means over test tokens: no units
        assert set(result.metrics) - set(u.metrics) == {"head_f1", "taxonomy_agreement", "random_taxonomy_agreement",
                                                        "rule_latents_per_node"}
    assert all(m.no_interval is None for m in saebench.plugin_manager.get("scorer", "treeprobe").headline)


def test_head_accuracy_and_flip_rate_by_hand(two_saes):
    import numpy as np

    from saebench.probes.linear import fit_logistic

    datas, (result, _) = two_saes
    u = result.units
    ids, strata = np.array(u.ids), np.array(u.strata)
    col = np.array(u.columns["head_accuracy"])
    flip_col = np.array(u.columns["rule_flip_rate"])
    accs = []
    for t, name in enumerate(TWO_TASKS):
        data = datas[name]
        tr, te = data.train, ~data.train
        head = fit_logistic(data.acts[tr], data.labels[tr], 6, l2=1e-3)  # the identity SAE's latents are the acts
        hit = (head.predict(data.acts[te]) == data.labels[te]).numpy().astype(np.float64)
        seq = data.sequence[te].numpy()
        texts, inverse = np.unique(seq, return_inverse=True)
        hits, n_i = np.bincount(inverse, weights=hit), np.bincount(inverse).astype(np.float64)
        here = strata == t
        assert list(ids[here]) == [f"{name}:{i}" for i in texts]
        m_t, n, r = len(texts), n_i.sum(), hits.sum() / n_i.sum()
        assert np.allclose(col[here], ((hits - r * n_i) / n + r / m_t) / 2, atol=1e-12)
        accs.append(r)
        # the flip rate: per task the mean over inner nodes of the nodes' rates in the details
        nodes, todo = [], [result.details["tasks"][name]["tree"]]
        while todo:
            node = todo.pop()
            if "children" in node:
                nodes.append(node["flip_rate"])
                todo.extend(node["children"])
        assert 2 * flip_col[here].sum() == pytest.approx(np.mean([f for f in nodes if f is not None]), abs=1e-12)
    assert np.mean(accs) == pytest.approx(result.metrics["head_accuracy"], abs=1e-12)


def test_ids_pair_across_saes_and_intervals_bracket_the_point(two_saes):
    from saebench.uncertainty import compare, interval

    _, (a, b) = two_saes
    assert a.units.ids == b.units.ids and a.units.strata == b.units.strata
    for m in HEADLINE:
        ci = interval(a.units, m, resamples=300)
        assert ci.low <= a.metrics[m] <= ci.high and ci.low < ci.high, m
    c = compare(a.units, b.units, "head_accuracy", resamples=300)
    assert c.paired and c.diff == pytest.approx(a.metrics["head_accuracy"] - b.metrics["head_accuracy"], abs=1e-9)
