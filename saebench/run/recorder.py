"""How stages write results: the ``Results`` protocol, the driver's ``Recorder`` and a worker's ``BufferStore``.

A stage writes through the :class:`Results` it is given and never opens the store: in the process
that owns the store that is the :class:`Recorder` (every write goes to the store, and each cell row
counts in the run's :class:`RunReport`), in a worker a :class:`BufferStore` whose writes the driver
applies through its Recorder.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from saebench.run.store import CellKey, ResultsStore


class Results(Protocol):
    """What a stage reads and writes of the results: the store itself, or a worker's buffer."""

    def write_cell(self, key: CellKey, **kwargs: Any) -> None: ...

    def write_latent(self, key: CellKey, latent: int, **kwargs: Any) -> None: ...

    def write_sae(self, model: str, hookpoint: str, sae: str, config: dict[str, Any]) -> None: ...

    def latent_results(self, key: CellKey, config_hash: str) -> dict[int, dict[str, Any]]: ...

    def latent_errors(self, key: CellKey, config_hash: str) -> dict[int, str]: ...


class BufferStore:
    """A worker's results: what the driver read for the task (``known``: per cell, its stored latent
    results and errors) and the writes the task would make, returned to the driver to apply. Workers
    never open results.sqlite, so it can stay on the driver's disk (SQLite's WAL mode does not work
    over a network file system)."""

    def __init__(self, known: dict[CellKey, tuple[dict, dict]] | None = None) -> None:
        self.known = known or {}
        self.writes: list[tuple] = []

    def write_cell(self, key: CellKey, **kwargs: Any) -> None:
        self.writes.append(("write_cell", key, kwargs))

    def write_latent(self, key: CellKey, latent: int, **kwargs: Any) -> None:
        self.writes.append(("write_latent", key, latent, kwargs))

    def write_sae(self, model: str, hookpoint: str, sae: str, config: dict[str, Any]) -> None:
        self.writes.append(("write_sae", (model, hookpoint, sae), config))

    def latent_results(self, key: CellKey, config_hash: str) -> dict[int, dict[str, Any]]:
        return dict(self.known.get(key, ({}, {}))[0])  # read by the driver with this cell's hash

    def latent_errors(self, key: CellKey, config_hash: str) -> dict[int, str]:
        return dict(self.known.get(key, ({}, {}))[1])


@dataclass
class RunReport:
    """What a run did, counted from what was written: cells computed, skipped, failed; latents unfinished."""

    done: int = 0
    skipped: int = 0
    failed: list[tuple[CellKey, str]] = field(default_factory=list)
    failed_latents: int = 0
    timings: dict[str, float] = field(default_factory=dict)
    pending: int = 0  # cells the run set out to compute
    run_id: int | None = None  # its row in the store's runs, once opened

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.failed_latents else 0

    def summary(self) -> str:
        """What an interrupted run had finished, in one line."""
        left = self.pending - self.done - len(self.failed) - self.skipped
        return f"{self.done} cell(s) computed and stored, {len(self.failed)} failed, {max(left, 0)} not started"


class Recorder:
    """The one writer of a run's results: every write goes to the store, and each cell row counts in the
    run's :class:`RunReport` and says so (a failed cell, a cell with unfinished latents)."""

    def __init__(
        self,
        store: ResultsStore,
        report: RunReport,
        note: Callable[[str], None],
        on_cell: Callable[[CellKey], None] = lambda key: None,
    ):
        self.store, self.report, self.note, self.on_cell = store, report, note, on_cell

    def write_cell(self, key: CellKey, **kwargs: Any) -> None:
        self.store.write_cell(key, **kwargs)
        error, metrics = kwargs.get("error"), kwargs.get("metrics") or {}
        if error:
            self.report.failed.append((key, error))
            self.note(f"cell {key.sae} × {key.scorer} failed: {error}")
        else:
            self.report.done += 1
            unfinished = int(metrics.get("failed_latents") or 0)
            self.report.failed_latents += unfinished
            if unfinished:
                first = next(iter((kwargs.get("details") or {}).get("failed", {}).items()), None)
                why = f" (latent {first[0]}: {first[1]})" if first else ""
                self.note(f"{key.sae} × {key.scorer}: {unfinished} latent(s) unfinished{why}; re-run to retry them")
        self.on_cell(key)

    def write_latent(self, key: CellKey, latent: int, **kwargs: Any) -> None:
        self.store.write_latent(key, latent, **kwargs)

    def write_sae(self, model: str, hookpoint: str, sae: str, config: dict[str, Any]) -> None:
        self.store.write_sae(model, hookpoint, sae, config)

    def latent_results(self, key: CellKey, config_hash: str) -> dict[int, dict[str, Any]]:
        return self.store.latent_results(key, config_hash)

    def latent_errors(self, key: CellKey, config_hash: str) -> dict[int, str]:
        return self.store.latent_errors(key, config_hash)

    def apply(self, writes: list[tuple]) -> None:
        """A worker's buffered writes: its latents in one transaction, then its SAE configurations and cells."""
        self.store.write_latents([w[1:] for w in writes if w[0] == "write_latent"])
        for w in writes:
            if w[0] == "write_sae":
                self.write_sae(*w[1], w[2])
            elif w[0] == "write_cell":
                self.write_cell(w[1], **w[2])
