"""The results store: one SQLite file per output folder, written one finished cell at a time.

A cell is (model, hook point, SAE, scorer). Its row carries the hash of everything that
determines its result; re-running a matrix skips cells whose hash matches a finished row and
recomputes the rest. Each cell is written in one transaction, so a crash loses at most the cell
being computed, never a finished one. Beside the results the store keeps what the leaderboard and
the report need to know about them: each run's matrix, versions and plan, each SAE's resolved
configuration (``saes``) and each scorer's declared headline metrics (``scorers``). Stages write
to it through saebench.run.recorder.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saebench.errors import ConfigError
from saebench.files import SQLITE_BUSY_S
from saebench.uncertainty import Units

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id INTEGER PRIMARY KEY AUTOINCREMENT,
    started REAL NOT NULL,
    finished REAL,
    status TEXT NOT NULL,
    matrix TEXT NOT NULL,
    versions TEXT NOT NULL,
    seed INTEGER NOT NULL,
    timings TEXT
);
CREATE TABLE IF NOT EXISTS cells (
    model TEXT NOT NULL,
    hookpoint TEXT NOT NULL,
    sae TEXT NOT NULL,
    scorer TEXT NOT NULL,
    config_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    error TEXT,
    seconds REAL,
    finished REAL NOT NULL,
    run_id INTEGER NOT NULL,
    config TEXT NOT NULL,
    details TEXT,
    PRIMARY KEY (model, hookpoint, sae, scorer)
);
CREATE TABLE IF NOT EXISTS metrics (
    model TEXT NOT NULL,
    hookpoint TEXT NOT NULL,
    sae TEXT NOT NULL,
    scorer TEXT NOT NULL,
    metric TEXT NOT NULL,
    value REAL,
    PRIMARY KEY (model, hookpoint, sae, scorer, metric)
);
CREATE TABLE IF NOT EXISTS latents (
    model TEXT NOT NULL,
    hookpoint TEXT NOT NULL,
    sae TEXT NOT NULL,
    scorer TEXT NOT NULL,
    latent INTEGER NOT NULL,
    config_hash TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('done', 'failed')),
    result TEXT,
    error TEXT,
    finished REAL NOT NULL,
    PRIMARY KEY (model, hookpoint, sae, scorer, latent)
);
CREATE TABLE IF NOT EXISTS plans (
    run_id INTEGER PRIMARY KEY,
    plan TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS saes (
    model TEXT NOT NULL,
    hookpoint TEXT NOT NULL,
    sae TEXT NOT NULL,
    config TEXT NOT NULL,
    updated REAL NOT NULL,
    PRIMARY KEY (model, hookpoint, sae)
);
CREATE TABLE IF NOT EXISTS units (
    model TEXT NOT NULL,
    hookpoint TEXT NOT NULL,
    sae TEXT NOT NULL,
    scorer TEXT NOT NULL,
    unit TEXT NOT NULL,
    n INTEGER NOT NULL,
    data BLOB NOT NULL,
    PRIMARY KEY (model, hookpoint, sae, scorer)
);
CREATE TABLE IF NOT EXISTS scorers (
    scorer TEXT PRIMARY KEY,
    plugin TEXT NOT NULL,
    family TEXT NOT NULL,
    headline TEXT NOT NULL
);
"""

DB_NAME = "results.sqlite"


@dataclass(frozen=True)
class CellKey:
    model: str
    hookpoint: str
    sae: str
    scorer: str


class ResultsStore:
    """Thin wrapper over the SQLite file; every write is its own committed transaction."""

    def __init__(self, folder: str | Path, *, create: bool = True):
        self.path = Path(folder) / DB_NAME
        if create:
            self.path.parent.mkdir(parents=True, exist_ok=True)
        self.db = sqlite3.connect(self.path, timeout=SQLITE_BUSY_S, isolation_level=None)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=FULL")
        self.db.executescript(SCHEMA)

    @classmethod
    def existing(cls, folder: str | Path) -> ResultsStore:
        """The store of a finished or running run's output folder; ConfigError when there is none."""
        if not (Path(folder) / DB_NAME).is_file():
            raise ConfigError(f"no results store ({DB_NAME}) here; run 'saebench run' first", Path(folder))
        return cls(folder, create=False)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> ResultsStore:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    # -- runs -------------------------------------------------------------------------------
    def start_run(self, matrix: dict[str, Any], versions: dict[str, str], seed: int) -> int:
        cur = self.db.execute(
            "INSERT INTO runs (started, status, matrix, versions, seed) VALUES (?, 'running', ?, ?, ?)",
            (time.time(), json.dumps(matrix, sort_keys=True), json.dumps(versions, sort_keys=True), seed),
        )
        return int(cur.lastrowid)

    def finish_run(self, run_id: int, status: str, timings: dict[str, float]) -> None:
        self.db.execute(
            "UPDATE runs SET finished = ?, status = ?, timings = ? WHERE run_id = ?",
            (time.time(), status, json.dumps(timings), run_id),
        )

    def write_plan(self, run_id: int, plan: dict[str, Any], scorers: dict[str, dict[str, Any]]) -> None:
        """A run's plan, and what each scorer label of it declares (``{label: {plugin, family, headline}}``)."""
        with self._transaction():
            self.db.execute("INSERT OR REPLACE INTO plans VALUES (?, ?)", (run_id, json.dumps(plan, sort_keys=True)))
            for label, info in scorers.items():
                self.db.execute(
                    "INSERT OR REPLACE INTO scorers VALUES (?, ?, ?, ?)",
                    (label, info["plugin"], info["family"], json.dumps(info["headline"])),
                )

    def sae_order(self) -> list[tuple[str, str, str]]:
        """(model, hookpoint, SAE) in the order of the newest run's plan: the leaderboard's row order, which
        must not depend on which of several concurrent runs finished an SAE first."""
        row = self.db.execute("SELECT plan FROM plans ORDER BY run_id DESC LIMIT 1").fetchone()
        cells = json.loads(row[0])["cells"] if row else []
        return list(dict.fromkeys((c["model"], c["hookpoint"], c["sae"]) for c in cells))

    def scorer_order(self) -> list[str]:
        """Scorer labels in the order of the newest run's plan: the leaderboard's column order, which must
        not depend on which cells a run computed first."""
        row = self.db.execute("SELECT plan FROM plans ORDER BY run_id DESC LIMIT 1").fetchone()
        cells = json.loads(row[0])["cells"] if row else []
        return list(dict.fromkeys(c["scorer"] for c in cells if "scorer" in c))

    def scorer_info(self) -> dict[str, dict[str, Any]]:
        """Scorer label -> its plugin name, family and declared headline metrics."""
        rows = self.db.execute("SELECT scorer, plugin, family, headline FROM scorers")
        return {s: {"plugin": p, "family": f, "headline": json.loads(h)} for s, p, f, h in rows}

    def write_sae(self, model: str, hookpoint: str, sae: str, config: dict[str, Any]) -> None:
        """An SAE's resolved configuration (architecture, widths, k...), as loaded or trained."""
        self.db.execute(
            "INSERT OR REPLACE INTO saes VALUES (?, ?, ?, ?, ?)",
            (model, hookpoint, sae, json.dumps(config, sort_keys=True, default=str), time.time()),
        )

    def sae_configs(self) -> dict[tuple[str, str, str], dict[str, Any]]:
        rows = self.db.execute("SELECT model, hookpoint, sae, config FROM saes")
        return {(m, h, s): json.loads(c) for m, h, s, c in rows}

    def runs(self) -> list[dict[str, Any]]:
        """Every run, oldest first, with its matrix and versions parsed."""
        cur = self.db.execute(
            "SELECT run_id, started, finished, status, matrix, versions, seed FROM runs ORDER BY run_id"
        )
        return [
            {
                "run_id": r,
                "started": st,
                "finished": f,
                "status": status,
                "matrix": json.loads(m),
                "versions": json.loads(v),
                "seed": seed,
            }
            for r, st, f, status, m, v, seed in cur.fetchall()
        ]

    # -- cells ------------------------------------------------------------------------------
    def finished_hash(self, key: CellKey) -> str | None:
        row = self.db.execute(
            "SELECT config_hash FROM cells WHERE model=? AND hookpoint=? AND sae=? AND scorer=? AND status='done'",
            (key.model, key.hookpoint, key.sae, key.scorer),
        ).fetchone()
        return row[0] if row else None

    def cell_stamps(self) -> dict[CellKey, tuple[float, int]]:
        """Every stored cell's (finished, run_id): a changed stamp says another run wrote the cell."""
        rows = self.db.execute("SELECT model, hookpoint, sae, scorer, finished, run_id FROM cells")
        return {CellKey(m, h, s, sc): (f, r) for m, h, s, sc, f, r in rows}

    def has_failed_latents(self, key: CellKey) -> bool:
        """Whether a finished interpretability cell left latents whose LLM calls failed (retried on a re-run)."""
        row = self.db.execute(
            "SELECT value FROM metrics WHERE model=? AND hookpoint=? AND sae=? AND scorer=? "
            "AND metric='failed_latents'",
            (key.model, key.hookpoint, key.sae, key.scorer),
        ).fetchone()
        return bool(row and row[0])

    def write_cell(
        self,
        key: CellKey,
        *,
        config_hash: str,
        config: dict[str, Any],
        run_id: int,
        seconds: float,
        metrics: dict[str, float | None] | None = None,
        details: dict[str, Any] | None = None,
        error: str | None = None,
        units: Units | None = None,
    ) -> None:
        """Replace the cell's row, metrics and per-unit statistics atomically: done with metrics, or failed
        with an error."""
        k = (key.model, key.hookpoint, key.sae, key.scorer)
        with self._transaction():
            self.db.execute("DELETE FROM metrics WHERE model=? AND hookpoint=? AND sae=? AND scorer=?", k)
            self.db.execute("DELETE FROM units WHERE model=? AND hookpoint=? AND sae=? AND scorer=?", k)
            if units is not None and not error:
                self.db.execute(
                    "INSERT INTO units VALUES (?, ?, ?, ?, ?, ?, ?)", (*k, units.unit, units.n, units.to_blob())
                )
            self.db.execute(
                "INSERT OR REPLACE INTO cells VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    *k,
                    config_hash,
                    "failed" if error else "done",
                    error,
                    seconds,
                    time.time(),
                    run_id,
                    json.dumps(config, sort_keys=True),
                    json.dumps(details or {}, default=str),
                ),
            )
            for name, value in (metrics or {}).items():
                value = None if value is None or value != value else float(value)  # NaN is "not computed"
                self.db.execute("INSERT INTO metrics VALUES (?, ?, ?, ?, ?, ?)", (*k, name, value))

    # -- per-latent results (interpretability stages) -----------------------------------------
    def write_latent(
        self,
        key: CellKey,
        latent: int,
        *,
        config_hash: str,
        result: dict[str, Any] | None = None,
        error: str | None = None,
    ) -> None:
        """One latent's explanation or score, committed on its own so an interrupted stage resumes after it."""
        self.db.execute(
            "INSERT OR REPLACE INTO latents VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (
                key.model,
                key.hookpoint,
                key.sae,
                key.scorer,
                int(latent),
                config_hash,
                "failed" if error else "done",
                None if result is None else json.dumps(result, default=str),
                error,
                time.time(),
            ),
        )

    def write_latents(self, rows: list[tuple[CellKey, int, dict[str, Any]]]) -> None:
        """Many latents' results (key, latent, write_latent's keywords) in one transaction: an executor's
        task returns hundreds at once, and one commit each would make the driver the bottleneck."""
        with self._transaction():
            for key, latent, kwargs in rows:
                self.write_latent(key, latent, **kwargs)

    def latent_results(self, key: CellKey, config_hash: str) -> dict[int, dict[str, Any]]:
        """The finished latents of a stage computed with this configuration hash: latent -> result."""
        rows = self.db.execute(
            "SELECT latent, result FROM latents WHERE model=? AND hookpoint=? AND sae=? AND scorer=? "
            "AND config_hash=? AND status='done'",
            (key.model, key.hookpoint, key.sae, key.scorer, config_hash),
        )
        return {int(latent): json.loads(result) for latent, result in rows}

    def latent_errors(self, key: CellKey, config_hash: str) -> dict[int, str]:
        """The failed latents of a stage computed with this configuration hash: latent -> error."""
        rows = self.db.execute(
            "SELECT latent, error FROM latents WHERE model=? AND hookpoint=? AND sae=? AND scorer=? "
            "AND config_hash=? AND status='failed'",
            (key.model, key.hookpoint, key.sae, key.scorer, config_hash),
        )
        return {int(latent): error for latent, error in rows}

    def latent_rows(self) -> list[dict[str, Any]]:
        """Every stored latent result (done and failed), for the detailed export."""
        cur = self.db.execute(
            "SELECT model, hookpoint, sae, scorer, latent, status, result, error FROM latents "
            "ORDER BY model, hookpoint, sae, latent, rowid"
        )
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def cells(self) -> list[dict[str, Any]]:
        cur = self.db.execute("SELECT model, hookpoint, sae, scorer, status, error, seconds FROM cells ORDER BY rowid")
        cols = [c[0] for c in cur.description]
        return [dict(zip(cols, row)) for row in cur.fetchall()]

    def cell_configs(self) -> list[dict[str, Any]]:
        """Every cell's configuration (the inputs its hash covers: model, SAE identity, scorer...)."""
        cur = self.db.execute("SELECT model, hookpoint, sae, scorer, config FROM cells ORDER BY rowid")
        return [{"model": m, "hookpoint": h, "sae": s, "scorer": sc, "config": json.loads(c)} for m, h, s, sc, c in cur]

    def cell_details(self) -> list[dict[str, Any]]:
        """Every finished cell with its details (free-form JSON: trees, per-task results...)."""
        cur = self.db.execute(
            "SELECT model, hookpoint, sae, scorer, details FROM cells WHERE status='done' ORDER BY rowid"
        )
        return [
            {"model": m, "hookpoint": h, "sae": s, "scorer": sc, "details": json.loads(d) if d else {}}
            for m, h, s, sc, d in cur.fetchall()
        ]

    def metrics(self) -> Iterator[tuple[str, str, str, str, str, float | None]]:
        yield from self.db.execute(
            "SELECT m.model, m.hookpoint, m.sae, m.scorer, m.metric, m.value FROM metrics m JOIN cells c "
            "USING (model, hookpoint, sae, scorer) WHERE c.status = 'done' ORDER BY c.rowid, m.rowid"
        )

    def units(self) -> dict[CellKey, Units]:
        """Every finished cell's per-unit statistics (what intervals and comparisons resample)."""
        rows = self.db.execute(
            "SELECT u.model, u.hookpoint, u.sae, u.scorer, u.data FROM units u JOIN cells c "
            "USING (model, hookpoint, sae, scorer) WHERE c.status = 'done'"
        )
        return {CellKey(m, h, s, sc): Units.from_blob(d) for m, h, s, sc, d in rows}

    def units_bytes(self) -> int:
        return int(self.db.execute("SELECT COALESCE(SUM(LENGTH(data)), 0) FROM units").fetchone()[0])

    def integrity_ok(self) -> bool:
        return self.db.execute("PRAGMA integrity_check").fetchone()[0] == "ok"

    def _transaction(self):
        db = self.db

        class _Tx:
            def __enter__(self):
                db.execute("BEGIN IMMEDIATE")

            def __exit__(self, exc_type, exc, tb):
                db.execute("ROLLBACK" if exc_type else "COMMIT")
                return False

        return _Tx()
