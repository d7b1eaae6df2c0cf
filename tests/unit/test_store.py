"""The results store: one atomic write per cell, replace on recompute, NaN stored as missing."""

import sqlite3

from saebench.run.store import CellKey, ResultsStore


def test_cells_are_replaced_atomically(tmp_path):
    store = ResultsStore(tmp_path)
    run = store.start_run({"name": "m"}, {"saebench": "0"}, seed=0)
    key = CellKey("m", "layers.1", "sae", "scorer")
    store.write_cell(key, config_hash="h1", config={}, run_id=run, seconds=1.0, metrics={"a": 1.0, "b": float("nan")})
    assert store.finished_hash(key) == "h1"
    assert list(store.metrics()) == [("m", "layers.1", "sae", "scorer", "a", 1.0), ("m", "layers.1", "sae", "scorer", "b", None)]
    store.write_cell(key, config_hash="h2", config={}, run_id=run, seconds=1.0, error="RuntimeError: x")
    assert store.finished_hash(key) is None  # failed cells are not finished: a re-run retries them
    assert list(store.metrics()) == []
    assert store.cells()[0]["error"] == "RuntimeError: x"
    assert store.integrity_ok()
    store.close()


def test_a_failed_transaction_leaves_the_previous_result(tmp_path, monkeypatch):
    store = ResultsStore(tmp_path)
    key = CellKey("m", "h", "s", "c")
    store.write_cell(key, config_hash="h1", config={}, run_id=1, seconds=0.1, metrics={"a": 1.0})
    try:
        store.write_cell(key, config_hash="h2", config={}, run_id=1, seconds=0.1, metrics={"a": object()})
    except TypeError:
        pass
    assert store.finished_hash(key) == "h1" and [m[-1] for m in store.metrics()] == [1.0]
    store.close()
    db = sqlite3.connect(tmp_path / "results.sqlite")
    assert db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
