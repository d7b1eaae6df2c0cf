"""The plan: cells, their configuration hashes and the stage graph, from a matrix alone.

The hashes below were computed by saebench 0.1.0 before the restructuring into plan, stages and
executors (commit b04b171, ``Runner.plan()``). The test sets the version back to 0.1.0 and expects
them exactly: what a cell's hash covers changes only deliberately. (0.2.0 stores per-unit
statistics with every cell, so a 0.1.0 store's cells are recomputed once.)
"""

from pathlib import Path

from saebench.run.components import build_components
from saebench.run.execute import describe
from saebench.run.matrix import Matrix
from saebench.run.plan import make_plan
from saebench.run.stages import Work
from saebench.run.sweep import expand_sweeps

MATRIX = {
    "name": "golden",
    "output": "/tmp/golden-out",
    "seed": 3,
    "data": {"source": "python-stdlib", "tokens": 4096, "context_length": 64},
    "models": [
        {
            "name": "gemma",
            "adapter": "hf-causal-lm",
            "path": "embedded:gemma-3-270m",
            "hookpoints": ["layers.6", "layers.3"],
            "options": {"dtype": "float32"},
        }
    ],
    "saes": [
        {"name": "ckpt", "model": "gemma", "hookpoint": "layers.6", "path": "no/such/checkpoint", "format": "saelens"},
        {
            "name": "topk",
            "model": "gemma",
            "hookpoint": "layers.3",
            "train": {"arch": "topk", "d_sae": 64, "k": 8, "tokens": 1000},
        },
    ],
    "scorers": [
        "sparsity",
        {"name": "reconstruction", "options": {"batch_tokens": 1024}},
        {"name": "downstream", "options": {"tokens": 256}},
        "detection",
        {"name": "fuzzing", "llm": "judge"},
        {"name": "treeprobe", "options": {"finetune_epochs": 0}},
        "sparse_probing",
    ],
    "llms": {
        "judge": {"client": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "m", "max_concurrency": 2},
        "explainer": {"client": "openai", "base_url": "http://127.0.0.1:9/v1", "model": "e"},
    },
    "explainers": [{"name": "llm", "options": {"n_examples": 10}}, "top-tokens"],
    "interp": {"latents": 10, "window": 16},
}

HASHES_BEFORE_THE_RESTRUCTURING = {
    "gemma|layers.3|topk|detection[llm]": "205d2b2c0b40debb0595",
    "gemma|layers.3|topk|detection[top-tokens]": "00b86139b34433282d23",
    "gemma|layers.3|topk|downstream": "1ee960350f32a1771401",
    "gemma|layers.3|topk|explain[llm]": "61aeb69cbe1e1c44dc69",
    "gemma|layers.3|topk|explain[top-tokens]": "f0ccb9c899262104f4a4",
    "gemma|layers.3|topk|fuzzing[llm]": "6c7c09cae817dd8fe88d",
    "gemma|layers.3|topk|fuzzing[top-tokens]": "3261eb5fa1202a6f515c",
    "gemma|layers.3|topk|reconstruction": "bbb90e76d8a83b76d0af",
    "gemma|layers.3|topk|sparse_probing": "589ca766512caab5b7c1",
    "gemma|layers.3|topk|sparsity": "f77d58d5493a0849d4b3",
    "gemma|layers.3|topk|treeprobe": "89e08a9eb6fcbdbd91bc",
    "gemma|layers.6|ckpt|detection[llm]": "c684a30a299ddf0bf654",
    "gemma|layers.6|ckpt|detection[top-tokens]": "453b6184d5241840314a",
    "gemma|layers.6|ckpt|downstream": "9fe2dab4af6de89b8747",
    "gemma|layers.6|ckpt|explain[llm]": "96f255f236df3add5a8b",
    "gemma|layers.6|ckpt|explain[top-tokens]": "4bf98c61cc1d70a3a5dd",
    "gemma|layers.6|ckpt|fuzzing[llm]": "05a714610877ad191678",
    "gemma|layers.6|ckpt|fuzzing[top-tokens]": "6a980f1c6aa196ecc542",
    "gemma|layers.6|ckpt|reconstruction": "68719e825d474bee25e8",
    "gemma|layers.6|ckpt|sparse_probing": "c198f283b7e6a587b300",
    "gemma|layers.6|ckpt|sparsity": "3db03d7a9f2c12d233a6",
    "gemma|layers.6|ckpt|treeprobe": "11d625c59a9e41b5611a",
}


def plan():
    matrix = Matrix.model_validate(MATRIX)
    return make_plan(matrix, "golden.yaml", build_components(matrix, "golden.yaml"))


def test_cell_hashes_are_those_of_runs_started_before_the_restructuring(monkeypatch):
    import saebench
    from saebench import plugin_manager

    monkeypatch.setattr(saebench, "__version__", "0.1.0")
    monkeypatch.setattr(plugin_manager, "distribution_version", lambda: "0.1.0")
    plugin_manager.reset()  # the built-ins' version is read when the registry is built
    try:
        p = plan()
    finally:
        monkeypatch.undo()
        plugin_manager.reset()
    hashes = {"|".join([c.key.model, c.key.hookpoint, c.key.sae, c.key.scorer]): c.config_hash for c in p.cells}
    assert hashes == HASHES_BEFORE_THE_RESTRUCTURING


def test_cache_folders_and_training_hash_are_unchanged_too():
    p = plan()
    assert p.saes["ckpt"].eval_cache.name == "gemma-layers.6-eval-9d47966e7ce8646c61cb"
    assert p.saes["topk"].train_cache.name == "gemma-layers.3-train-3549a397b2ec02a108a9"
    assert p.saes["topk"].train_hash == "cf48d223098179b2808e"
    assert p.saes["topk"].folder == Path("/tmp/golden-out/saes/topk")


def test_cells_are_typed_and_name_their_components():
    p = plan()
    kinds = {c.key.scorer: c.kind for c in p.cells_of("topk")}
    assert kinds["sparsity"] == "intrinsic" and kinds["treeprobe"] == "probe" and kinds["explain[llm]"] == "explain"
    assert kinds["detection[llm]"] == kinds["fuzzing[top-tokens]"] == "interp"
    fuzzing = next(c for c in p.cells if c.key.scorer == "fuzzing[llm]")
    assert (fuzzing.plugin, fuzzing.explainer, fuzzing.llm) == ("fuzzing", "llm", "judge")
    explain = next(c for c in p.cells if c.key.scorer == "explain[llm]")
    assert (explain.plugin, explain.llm) == ("llm", "explainer")
    # an interp cell's hash covers its explanations: the explain cell's hash is in its configuration
    assert (
        fuzzing.config["explanations"]
        == next(c for c in p.cells_of(fuzzing.sae) if c.key.scorer == "explain[llm]").config_hash
    )


def test_the_stage_graph_orders_shared_work_before_cells():
    p = plan()
    order = [(s.kind, s.key) for s in p.stages]
    assert order == [
        ("activations", "gemma"),
        ("train", "topk"),
        ("records", "ckpt"),
        ("latents", "ckpt"),
        ("cells", "ckpt"),
        ("records", "topk"),
        ("latents", "topk"),
        ("cells", "topk"),
    ]
    after = {(s.kind, s.key): s.after for s in p.stages}
    assert after[("train", "topk")] == (("activations", "gemma"),)
    assert after[("records", "topk")] == (("train", "topk"),) and after[("records", "ckpt")] == (
        ("activations", "gemma"),
    )
    assert after[("cells", "topk")] == (("latents", "topk"),)
    for i, stage in enumerate(p.stages):  # every stage comes after what it needs
        assert all(dep in order[:i] for dep in stage.after)


def test_the_plan_as_stored_is_json_of_every_cell_and_stage():
    stored = plan().to_json()
    assert len(stored["cells"]) == len(HASHES_BEFORE_THE_RESTRUCTURING) and len(stored["stages"]) == 8
    assert {c["kind"] for c in stored["cells"]} == {"intrinsic", "probe", "explain", "interp"}
    assert stored["saes"]["topk"]["identity"]["train_hash"] == "cf48d223098179b2808e"


def test_the_dry_run_lists_stages_and_cells_without_computing(capsys):
    p = plan()
    from saebench.run.context import RunContext

    ctx = RunContext(p, build_components(p.matrix, "golden.yaml"))
    pending = [c for c in p.cells if c.sae == "topk"]
    describe(ctx, Work(pending, ["topk"]))
    out = capsys.readouterr().out
    assert f"{len(p.cells)} cells, {len(pending)} to compute, 1 SAE(s) to train" in out
    assert "stage train topk (after activations gemma)" in out and "stage cells ckpt" not in out
    assert "ckpt × sparsity: finished" in out and "topk × sparsity: to compute" in out


def seeded_plan(**changes):
    m = {k: v for k, v in MATRIX.items() if k != "seed"} | {"seeds": [3, 7]} | changes
    matrix = Matrix.model_validate(m)
    return make_plan(matrix, "golden.yaml", build_components(matrix, "golden.yaml"))


def test_seeds_repeat_the_seeded_cells_with_the_seed_in_their_label():
    p = seeded_plan()
    labels = {c.key.scorer for c in p.cells if c.key.sae == "topk"}
    assert {"sparsity", "reconstruction", "downstream"} <= labels  # deterministic: once
    for seed in (3, 7):
        assert {
            f"treeprobe@s{seed}",
            f"sparse_probing@s{seed}",
            f"explain[llm]@s{seed}",
            f"detection[llm]@s{seed}",
        } <= labels
    assert "sparsity@s3" not in labels and "detection[llm]" not in labels
    # the repeat is a plan entry of its own (its records, latents and cells stages) but stores as the same SAE
    replica = p.saes["topk@s7"]
    assert replica.replica_of == "topk" and replica.seed == 7 and replica.record_config.seed == 7
    assert {c.key.sae for c in p.cells_of("topk@s7")} == {"topk"}
    assert {c.kind for c in p.cells_of("topk@s7")} == {"probe", "explain", "interp"}
    assert p.saes["topk"].seed == 3 and p.saes["topk"].record_config.seed == 3
    seeded = {c.key.scorer: c.config["seed"] for c in p.cells if c.key.sae == "topk"}
    assert seeded["detection[llm]@s7"] == 7 and seeded["detection[llm]@s3"] == seeded["sparsity"] == 3
    # trained once: no train stage for the repeat, whose stages wait for the base SAE's training
    stages = [(s.kind, s.key) for s in p.stages]
    assert ("train", "topk") in stages and ("train", "topk@s7") not in stages
    after = {(s.kind, s.key): s.after for s in p.stages}
    assert after[("records", "topk@s7")] == (("train", "topk"),)
    assert len({c.key for c in p.cells}) == len(p.cells)  # no two cells share a key


def test_seeds_and_seed_are_exclusive():
    import pytest

    with pytest.raises(ValueError, match="give 'seeds' or 'seed'"):
        seeded_plan(seed=1)
    with pytest.raises(ValueError, match="each seed once"):
        seeded_plan(seeds=[1, 1])


def test_every_example_matrix_is_valid():
    import yaml

    examples = sorted((Path(__file__).resolve().parents[2] / "examples").glob("*.yaml"))
    assert len(examples) >= 4
    for path in examples:  # the schema (checkpoints named there exist only after the quickstart)
        raw = yaml.safe_load(path.read_text())
        m = Matrix.model_validate({**raw, "saes": expand_sweeps(raw["saes"], path)[0]})
        assert m.run_seed == 0, path.name
    seeded = Matrix.model_validate(yaml.safe_load((examples[0].parent / "interp_seeds.yaml").read_text()))
    assert seeded.seeds == [0, 1, 2]
