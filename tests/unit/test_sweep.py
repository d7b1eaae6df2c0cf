"""``sweep:`` on an SAE entry: a grid of training settings expanded into named SAEs before validation."""

from __future__ import annotations

import pytest

from saebench.errors import ConfigError
from saebench.run.components import build_components
from saebench.run.matrix import parse_matrix
from saebench.run.plan import make_plan

BASE = {
    "name": "sweep",
    "output": "/tmp/sweep-out",
    "data": {"source": "python-stdlib", "tokens": 4096, "context_length": 64},
    "models": [{"name": "m", "adapter": "hf-causal-lm", "path": "embedded:gemma-3-270m", "hookpoints": ["layers.6"]}],
    "scorers": ["sparsity", "reconstruction"],
}


def matrix(*saes):
    return {**BASE, "saes": list(saes)}


def grid(**sweep):
    return {
        "name": "topk-{d_sae}-k{k}",
        "model": "m",
        "hookpoint": "layers.6",
        "train": {"arch": "topk", "tokens": 2000, "d_sae": 8, "k": 2, "lr": 1e-3},
        "sweep": sweep,
    }


def test_a_grid_becomes_one_sae_per_point_in_order_with_formatted_names():
    m = parse_matrix(matrix(grid(d_sae=[64, 128], k=[4, 8, 16])), "m.yaml")
    assert [s.name for s in m.saes] == [
        "topk-64-k4", "topk-64-k8", "topk-64-k16", "topk-128-k4", "topk-128-k8", "topk-128-k16",
    ]
    by_name = {s.name: s for s in m.saes}
    assert by_name["topk-128-k8"].train == {"arch": "topk", "tokens": 2000, "d_sae": 128, "k": 8, "lr": 1e-3}
    assert all(s.train["lr"] == 1e-3 and s.hookpoint == "layers.6" for s in m.saes)


def test_entries_around_a_sweep_keep_their_place_and_every_point_trains_once():
    fixed = {"name": "relu", "model": "m", "hookpoint": "layers.6",
             "train": {"arch": "relu", "d_sae": 32, "tokens": 2000}}
    m = parse_matrix(matrix(fixed, grid(d_sae=[16, 32], k=[2]), dict(fixed, name="last")), "m.yaml")
    assert [s.name for s in m.saes] == ["relu", "topk-16-k2", "topk-32-k2", "last"]
    plan = make_plan(m, "m.yaml", build_components(m, "m.yaml"))
    trained = sorted(s.key for s in plan.stages if s.kind == "train")
    assert trained == ["last", "relu", "topk-16-k2", "topk-32-k2"]
    assert len({c.key for c in plan.cells}) == len(plan.cells) == 4 * 2


def test_a_one_key_grid_needs_only_that_key_in_the_name():
    entry = dict(grid(k=[4, 8]), name="k{k}")
    assert [s.name for s in parse_matrix(matrix(entry), "m.yaml").saes] == ["k4", "k8"]


@pytest.mark.parametrize(
    ("entry", "where", "problem"),
    [
        (grid(d_sea=[64]), "m.yaml: saes[0].sweep.d_sea", "not a training setting"),
        (grid(), "m.yaml: saes[0].sweep", "non-empty mapping"),
        (grid(d_sae=[]), "m.yaml: saes[0].sweep.d_sae", "non-empty list"),
        (grid(d_sae=64), "m.yaml: saes[0].sweep.d_sae", "non-empty list"),
        (dict(grid(d_sae=[64]), sweep=[64]), "m.yaml: saes[0].sweep", "non-empty mapping"),
        (dict(grid(d_sae=[64, 128]), name="topk"), "m.yaml: saes[0].name", "distinct names"),
        (dict(grid(d_sae=[64]), name="topk-{width}"), "m.yaml: saes[0].name", "cannot format"),
        (dict(grid(d_sae=[64, -1]), name="t{d_sae}"), "m.yaml: saes[0].sweep.d_sae", "-1"),
        ({k: v for k, v in grid(d_sae=[64]).items() if k != "train"}, "m.yaml: saes[0].sweep", "train"),
    ],
    ids=["unknown-key", "empty-grid", "empty-list", "not-a-list", "not-a-mapping", "same-names",
         "name-key-unknown", "bad-value", "no-train"],
)
def test_bad_sweeps_name_the_key(entry, where, problem):
    with pytest.raises(ConfigError) as err:
        parse_matrix(matrix(entry), "m.yaml")
    assert err.value.where == where
    assert problem in err.value.problem


def test_later_errors_name_the_entry_of_the_file_and_the_point():
    fixed = {"name": "topk-64-k2", "model": "m", "hookpoint": "layers.6",
             "train": {"arch": "relu", "d_sae": 32, "tokens": 2000}}
    with pytest.raises(ConfigError) as err:  # the second point's name collides with the entry after the sweep
        parse_matrix(matrix(grid(d_sae=[32, 64], k=[2]), fixed), "m.yaml")
    assert err.value.where == "m.yaml: saes[1].name" and "duplicate" in err.value.problem
    with pytest.raises(ConfigError) as err:
        parse_matrix(matrix(dict(grid(d_sae=[32, 64], k=[2]), hookpoint="layers.9")), "m.yaml")
    assert err.value.where == "m.yaml: saes[0] (sweep point topk-32-k2).hookpoint"
