"""Sparse probing on data with a known answer, and the ProbeData it reads.

A planted task: class c is signalled by latent c alone (the "SAE" is the identity with a ReLU), so
the 1-latent probe must pick a signalling latent, k = n_classes latents must classify perfectly,
and the 1-D probe loss must be far below the prior's."""

import pytest
import torch

import saebench
from saebench.errors import ConfigError
from saebench.interfaces import EvalInputs, TaskExample
from saebench.probes.tasks import ProbeData, build_probe_data, token_labels


def identity_sae(d):
    eye = torch.eye(d)
    return saebench.build_sae("relu", {"W_enc": eye, "W_dec": eye, "b_enc": torch.zeros(d), "b_dec": torch.zeros(d)},
                              hook_name="layers.0")


def planted(n_rows=1200, d=24, classes=3, level="token", noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, classes, (n_rows,), generator=g)
    acts = torch.relu(torch.randn(n_rows, d, generator=g) * noise)
    acts[torch.arange(n_rows), labels] += 2.0
    sequence = torch.arange(n_rows) // 4  # texts of 4 tokens
    if level == "sequence":
        labels_seq = labels.view(-1, 4)[:, 0]
        acts[:, :classes] = 0  # only the text's label signals, on every token of it
        acts[torch.arange(n_rows), labels_seq[sequence]] += 2.0
        labels = labels_seq
    n_texts = int(sequence.max()) + 1
    train_text = torch.rand(n_texts, generator=g) < 0.8
    train = train_text[sequence] if level == "token" else train_text
    return ProbeData("planted", level, [f"c{i}" for i in range(classes)], acts, torch.arange(n_rows) % 50, sequence,
                     labels, train)


def inputs_for(data):
    return EvalInputs(hookpoint="layers.0", activations=lambda bt: iter(()), tokens=torch.zeros(0, 0, dtype=torch.long),
                      probe_data=lambda task, **kw: data)


@pytest.mark.parametrize("level", ["token", "sequence"])
def test_planted_latents_are_found(level):
    data = planted(level=level)
    scorer = saebench.plugin_manager.get("scorer", "sparse_probing")(tasks=["python_syntax"], ks=[1, 3])
    result = scorer.score(identity_sae(24), inputs_for(data))
    m = result.metrics
    assert m["k3_accuracy"] > 0.97 and m["dense_accuracy"] > 0.97
    assert 0.33 < m["k1_accuracy"] < 0.8  # one signalling latent separates one class from the rest
    assert m["probe_loss"] < 0.3 * m["probe_loss_prior"]
    assert result.details["tasks"]["python_syntax"]["metrics"]["k3_accuracy"] == m["k3_accuracy"]  # one task


def test_noise_latents_probe_at_chance():
    data = planted()
    data.acts[:, :3] = torch.relu(torch.randn(data.acts.shape[0], 3))  # destroy the signal
    scorer = saebench.plugin_manager.get("scorer", "sparse_probing")(tasks=["python_syntax"], ks=[1, 3])
    m = scorer.score(identity_sae(24), inputs_for(data)).metrics
    assert m["k3_accuracy"] < 0.5 and m["dense_accuracy"] < 0.5
    assert m["probe_loss"] > 0.9 * m["probe_loss_prior"]


def test_sequence_features_pool_after_encoding():
    data = planted(level="sequence", n_rows=40)
    sae = identity_sae(24)
    data.acts[:] -= 1.0  # the ReLU now matters: mean of latents != latents of the mean
    pooled = data.features(lambda x: sae.encode(x))
    manual = torch.stack([torch.relu(data.acts[data.sequence == s]).mean(0) for s in range(10)])
    assert torch.allclose(pooled, manual, atol=1e-6)


def test_probe_data_round_trip(tmp_path):
    data = planted(n_rows=64)
    data.token_text = {1: " def", 2: "<"}
    data.taxonomy = {"c0": "g", "c1": "g"}
    data.save(tmp_path / "p")
    back = ProbeData.load(tmp_path / "p")
    assert torch.equal(back.acts, data.acts) and torch.equal(back.train, data.train)
    assert back.token_text == data.token_text and back.classes == data.classes and back.taxonomy == data.taxonomy


def test_token_labels_anchor_on_first_non_space_character():
    strings = ["def", " foo", "(", "x", "):", " \n", "  y"]
    spans = [(0, 3, "kw"), (4, 7, "name"), (8, 9, "arg"), (15, 16, "late")]
    assert token_labels(strings, spans) == ["kw", "name", None, "arg", None, None, "late"]


class CharClassTask(saebench.ProbeTask):
    """Character class of each character: letter, digit, space or other."""

    name = "char-class-test"
    level = "token"

    def examples(self):
        import random

        rng = random.Random(0)
        for _ in range(30):
            text = "".join(rng.choice("ab cd 12 x=y+1, ") for _ in range(40))
            spans = tuple((i, i + 1, "letter" if c.isalpha() else "digit" if c.isdigit() else "space" if c == " "
                          else "other") for i, c in enumerate(text))
            yield TaskExample(text, spans=spans)


def test_build_probe_data_rows_are_the_models_activations(tiny_llama):
    from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter

    adapter = HFCausalLMAdapter(str(tiny_llama))
    [data] = build_probe_data(adapter, CharClassTask(), ["layers.1"], context_length=32, max_rows=10_000).values()
    examples = list(CharClassTask().examples())
    assert data.stats["texts"] == 30 and data.acts.shape == (30 * 31, 32)  # BOS + 31 tokens kept of each text
    # independent: capture the first text alone and compare its rows
    ids = adapter.tokenize(examples[0].text)[:31]
    tokens = torch.tensor([[adapter.bos_token_id] + ids])
    direct = adapter.capture(tokens, ["layers.1"])["layers.1"][0, 1:]
    assert torch.allclose(data.acts[data.sequence == 0], direct, atol=1e-5)
    expect = ["letter" if c.isalpha() else "digit" if c.isdigit() else "space" if c == " " else "other"
              for c in examples[0].text[:31]]
    assert [data.classes[i] for i in data.labels[data.sequence == 0]] == expect
    train_texts = set(data.sequence[data.train].tolist())
    test_texts = set(data.sequence[~data.train].tolist())
    assert train_texts and test_texts and not train_texts & test_texts


def test_bad_options():
    cls = saebench.plugin_manager.get("scorer", "sparse_probing")
    with pytest.raises(ConfigError, match="ks"):
        cls(ks=[0])
    with pytest.raises(saebench.SaebenchError, match="unknown probe task 'no-such-task'.*known"):
        cls(tasks=["no-such-task"])
    with pytest.raises(ConfigError, match="a name or"):
        cls(tasks=[{"nam": "x"}])


# -- per-unit statistics (intervals) -------------------------------------------------------------------

def noisy_sae(d, seed=1):
    g = torch.Generator().manual_seed(seed)
    w = torch.eye(d) + 0.4 * torch.randn(d, d, generator=g)
    return saebench.build_sae("relu", {"W_enc": w, "W_dec": torch.eye(d), "b_enc": torch.zeros(d),
                                       "b_dec": torch.zeros(d)}, hook_name="layers.0")


@pytest.fixture(scope="module")
def two_tasks():
    """A token task and a sequence task (different data), scored for two SAEs."""
    datas = {"python_syntax": planted(n_rows=800, noise=0.8, seed=1),
             "text_source": planted(n_rows=800, level="sequence", noise=0.8, seed=2)}
    scorer = saebench.plugin_manager.get("scorer", "sparse_probing")(tasks=["python_syntax", "text_source"], ks=[1, 3])
    inputs = EvalInputs(hookpoint="layers.0", activations=lambda bt: iter(()), tokens=torch.zeros(0, 0, dtype=torch.long),
                        probe_data=lambda task, **kw: datas[task.name])
    return datas, [scorer.score(sae, inputs) for sae in (identity_sae(24), noisy_sae(24))]


def test_units_recompute_every_metric_they_cover(two_tasks):
    _, results = two_tasks
    for result in results:
        u = result.units
        assert u.unit == "text" and set(u.metrics) == {"dense_accuracy", "k1_accuracy", "k3_accuracy", "probe_loss",
                                                       "probe_loss_prior"}
        assert "token_identity_accuracy" not in result.metrics  # undefined on the sequence task: no metric, no units
        for m in u.metrics:
            assert u.value(m) == pytest.approx(result.metrics[m], abs=1e-9), m
        assert not any(m.endswith("_f1") for m in u.metrics)  # macro F1 is no mean over examples


def test_units_against_per_example_values_by_hand(two_tasks):
    datas, results = two_tasks
    import numpy as np

    for result in results:
        u = result.units
        ids, strata = np.array(u.ids), np.array(u.strata)
        tasks = result.details["tasks"]
        for m in ("k1_accuracy", "dense_accuracy", "probe_loss"):
            col, weight = np.array(u.columns[m]), np.array(u.columns["weight"])
            per_task = []
            for t, name in enumerate(["python_syntax", "text_source"]):
                data = datas[name]
                here = strata == t
                m_t = int(here.sum())
                assert np.allclose(weight[here], 1 / (2 * m_t))
                if data.level == "sequence":
                    # one unit per test example, ids task:row; its column is its value / (m_t T)
                    test_rows = np.flatnonzero(~data.train.numpy())
                    assert list(ids[here]) == [f"{name}:{i}" for i in test_rows]
                    values = col[here] * m_t * 2
                    if m != "probe_loss":
                        assert np.allclose(values, np.round(values), atol=1e-9) and set(np.round(values)) <= {0, 1}
                    task_value = values.mean()
                else:
                    # one unit per test text; its count of correct tokens comes back from the column
                    seq = data.sequence[~data.train].numpy()
                    texts, n_i = np.unique(seq, return_counts=True)
                    assert list(ids[here]) == [f"{name}:{i}" for i in texts]
                    r, n = tasks[name]["metrics"][m], n_i.sum()
                    hits = (col[here] * 2 - r / m_t) * n + r * n_i
                    if m != "probe_loss":
                        assert np.allclose(hits, np.round(hits), atol=1e-6)
                        assert (np.round(hits) >= 0).all() and (np.round(hits) <= n_i).all()
                    task_value = hits.sum() / n
                assert task_value == pytest.approx(tasks[name]["metrics"][m], abs=1e-9)
                per_task.append(task_value)
            assert np.mean(per_task) == pytest.approx(result.metrics[m], abs=1e-9)


def test_a_resample_is_the_exact_mean_of_per_task_accuracies_to_first_order(two_tasks):
    import numpy as np

    datas, results = two_tasks
    u = results[1].units
    rng = np.random.default_rng(3)
    w = np.zeros(u.n)
    strata = np.array(u.strata)
    for t in (0, 1):
        members = np.flatnonzero(strata == t)
        np.add.at(w, rng.choice(members, members.size), 1.0)
    # exact: each task's accuracy on the resampled texts, from the per-text hits recovered above
    col, m = np.array(u.columns["k1_accuracy"]), "k1_accuracy"
    exact = []
    for t, name in enumerate(["python_syntax", "text_source"]):
        here = strata == t
        m_t, r = int(here.sum()), results[1].details["tasks"][name]["metrics"][m]
        if datas[name].level == "token":
            _, n_i = np.unique(datas[name].sequence[~datas[name].train].numpy(), return_counts=True)
        else:
            n_i = np.ones(m_t)
        hits = (col[here] * 2 - r / m_t) * n_i.sum() + r * n_i
        exact.append((w[here] * hits).sum() / (w[here] * n_i).sum())
    got = float(u.values(m, w[None])[0])
    assert got == pytest.approx(np.mean(exact), abs=5e-3)  # delta method: first order in the resampling
    assert abs(got - u.value(m)) > 1e-4  # the resample did move it


def test_ids_pair_across_saes_and_intervals_bracket_the_point(two_tasks):
    from saebench.uncertainty import compare, interval

    _, (a, b) = two_tasks
    assert a.units.ids == b.units.ids and a.units.strata == b.units.strata
    for m in ("k1_accuracy", "k3_accuracy"):
        ci = interval(a.units, m, resamples=300)
        assert ci.low <= a.metrics[m] <= ci.high and ci.low < ci.high
    c = compare(a.units, b.units, "k1_accuracy", resamples=300)
    assert c.paired and c.diff == pytest.approx(a.metrics["k1_accuracy"] - b.metrics["k1_accuracy"], abs=1e-9)
