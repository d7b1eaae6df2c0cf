"""The Ray executor (``executor: {ray: {address: auto}}``): the same run, its stages fanned out as Ray tasks.

The driver (the process running ``saebench run``) plans, checks and owns the results database;
workers compute. A worker builds its own Runner from the matrix (models and plugins load once per
worker process and serve its later tasks), works in the driver's working directory, and reads and
writes artifacts (activation caches, trained SAEs, latent records, the LLM response cache) under the
run's output and cache folders: every node must see them at the same path (shared storage). Workers
never write results.sqlite: a task returns the writes it would have made and the driver applies them
as each task finishes, so results stay incremental.

Stages and their tasks, each with the matrix's resource request (``resources.STAGE``):
  activations  one per model (every eval and train cache the run needs from it)
  train        one per SAE to train
  records      one per SAE with interpretability cells, or one per ``latents_per_records_task`` of its
               latents (a file each) when ``interp.latents`` is all or a list
  latents      ``latents_per_task`` latents of one SAE (reading only their records part): their
               explanations and per-latent scores
  cells        the intrinsic and probe cells of one SAE, after its interpretability cells
Ray retries a task whose worker died (``max_retries``); a task that still fails stores its cells or
latents as failed, so a re-run retries only those. Cell configuration hashes do not include the
executor: a run started locally resumes on Ray and back.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import socket
import time
import uuid
from dataclasses import dataclass
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any, Callable

import torch

from saebench.errors import ConfigError, SaebenchError
from saebench.progress import Progress
from saebench.store import CellKey, ResultsStore

if TYPE_CHECKING:
    from saebench.matrix import RaySpec
    from saebench.runner import Cell, Runner

INTERP = ("explain", "interp")


@dataclass(frozen=True)
class Job:
    """What every task gets: the matrix (as JSON) and where the driver runs."""

    matrix: dict[str, Any]
    source: str
    cwd: str
    token: str  # one per driver run: a long-lived worker must not reuse state planned for an earlier run
    run_id: int = 0

    @property
    def key(self) -> str:
        return hashlib.sha256(json.dumps([self.matrix, self.source, self.cwd, self.token], sort_keys=True).encode()).hexdigest()


class BufferStore:
    """A worker's results store: what the driver read for the task (``known``: per cell, its stored
    latent results and errors) and the writes the task would make, returned to the driver. Workers
    never open results.sqlite, so it can stay on the driver's disk (SQLite's WAL mode does not work
    over a network file system)."""

    def __init__(self, known: dict[CellKey, tuple[dict, dict]] | None = None) -> None:
        self.known = known or {}
        self.writes: list[tuple] = []

    def write_cell(self, key: CellKey, **kwargs) -> None:
        self.writes.append(("write_cell", key, kwargs))

    def write_latent(self, key: CellKey, latent: int, **kwargs) -> None:
        self.writes.append(("write_latent", key, latent, kwargs))

    def latent_results(self, key: CellKey, config_hash: str) -> dict[int, dict[str, Any]]:
        return dict(self.known.get(key, ({}, {}))[0])  # read by the driver with this cell's hash

    def latent_errors(self, key: CellKey, config_hash: str) -> dict[int, str]:
        return dict(self.known.get(key, ({}, {}))[1])


class _NoBar:
    def update(self, n: int = 1) -> None:
        pass

    def set_description(self, text: str) -> None:
        pass


# -- worker side ----------------------------------------------------------------------------------
_RUNNERS: dict[str, "Runner"] = {}
#: the last SAE and latent records a worker used, kept for its next task (a share of the same SAE)
_LAST: dict[str, tuple[Any, Any]] = {}


def _last(kind: str, key: Any, make: Callable[[], Any]) -> Any:
    if kind not in _LAST or _LAST[kind][0] != key:
        _LAST.pop(kind, None)  # free the previous one before loading the next
        _LAST[kind] = (key, make())
    return _LAST[kind][1]


def _worker(job: Job) -> "Runner":
    """This worker's Runner for the job's matrix, built once (its loaded models serve later tasks)."""
    import ray

    from saebench.matrix import Matrix
    from saebench.runner import Runner

    os.chdir(job.cwd)  # relative paths in a matrix are relative to where the driver runs
    threads = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    torch.set_num_threads(max(1, threads))
    if job.key not in _RUNNERS:
        _RUNNERS.clear()
        _LAST.clear()
        runner = Runner(Matrix.model_validate(job.matrix), source=job.source, progress=Progress(enabled=False))
        runner.all_cells = runner.plan()
        for client in runner.llms.values():
            client.use_cache(runner.cache_dir / "llm-responses.sqlite")
        _RUNNERS[job.key] = runner
    return _RUNNERS[job.key]


def _guarded(work: Callable[[BufferStore], Any], known: dict | None = None) -> dict[str, Any]:
    """Run ``work``; return what it returned, its buffered writes and, for bad input, the error to
    raise on the driver."""
    store = BufferStore(known)
    value = error = None
    try:
        value = work(store)
    except SaebenchError as exc:
        error = {"problem": exc.problem, "where": None if exc.where is None else str(exc.where), "type": type(exc).__name__}
    return {"value": value, "writes": store.writes, "error": error}


def _cells(runner: "Runner", keys: list[CellKey]) -> list["Cell"]:
    wanted = set(keys)
    return [c for c in runner.all_cells if c.key in wanted]


def activations_task(job: Job, model: str, keys: list[CellKey]) -> dict[str, Any]:
    runner = _worker(job)
    return _guarded(lambda _: runner.ensure_caches(_cells(runner, keys), only=model))


def train_task(job: Job, sae_name: str) -> dict[str, Any]:
    runner = _worker(job)
    spec = next(s for s in runner.m.saes if s.name == sae_name)
    return _guarded(lambda _: runner.train_one(spec))


def _stage(runner: "Runner", store, run_id: int, sae_name: str, with_sae: bool = True, bar: Any = None):
    from saebench.activations import ActivationCache
    from saebench.interp_stage import InterpStage

    spec = next(s for s in runner.m.saes if s.name == sae_name)
    cache = ActivationCache(runner.eval_cache_folder(runner.models[spec.model], spec.hookpoint))
    sae = _last("sae", sae_name, lambda: runner.load_cell_sae(spec)) if with_sae else None
    return InterpStage(runner, store, run_id, spec, sae, cache, bar or _NoBar())


@dataclass
class RecordSummary:
    """What the driver needs of an SAE's latent records (its latents, not their examples)."""

    records: list[SimpleNamespace]
    skipped: dict[int, int]
    n_alive: int | None = None
    n_eligible: int | None = None


def records_task(job: Job, sae_name: str, part: tuple[int, ...] | None) -> dict[str, Any]:
    """The records of an SAE (of the latents in ``part``, when the run splits them); returns their summary."""
    runner = _worker(job)

    def work(_) -> RecordSummary:
        rs = _stage(runner, None, job.run_id, sae_name).records(part)
        return RecordSummary([SimpleNamespace(latent=r.latent) for r in rs.records], rs.skipped, rs.n_alive, rs.n_eligible)

    return _guarded(work)


def latents_task(job: Job, sae_name: str, keys: list[CellKey], latents: list[int], known: dict,
                 part: tuple[int, ...] | None) -> dict[str, Any]:
    runner = _worker(job)
    cells = _cells(runner, keys)

    def work(store: BufferStore) -> None:
        stage = _stage(runner, store, job.run_id, sae_name)
        # the records (or the records part) holding these latents, kept for this worker's next share
        records = _last("records", stage.records_path(part), lambda: stage.records(part))
        stage.run(cells, latents=latents, records=records)

    return _guarded(work, known)


def cells_task(job: Job, sae_name: str, keys: list[CellKey], known: dict) -> dict[str, Any]:
    runner = _worker(job)
    cells = _cells(runner, keys)
    return _guarded(lambda store: runner._score_group(store, job.run_id, cells, _NoBar()), known)


# -- driver side ----------------------------------------------------------------------------------
def connect(spec: "RaySpec", where: str) -> None:
    """Join (or, with ``address: local``, start) the cluster; ConfigError when Ray or the cluster is missing."""
    try:
        import ray
    except ImportError:
        raise ConfigError("the ray executor needs Ray: pip install 'saebench[ray]'", f"{where}: executor") from None
    if ray.is_initialized():
        return
    host, _, port = spec.address.rpartition(":")
    if spec.address not in ("auto", "local") and port.isdigit():  # ray.init spends minutes retrying a dead address
        try:
            socket.create_connection((host.removeprefix("ray://") or "127.0.0.1", int(port)), timeout=5).close()
        except OSError as exc:
            raise ConfigError(f"cannot reach a Ray cluster at {spec.address!r}: {exc.strerror or exc}",
                              f"{where}: executor.ray.address") from None
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    try:
        if spec.address == "local":
            ray.init(include_dashboard=False, **options)
        else:
            ray.init(address=spec.address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        problem = " ".join(str(exc).split())[:300]
        raise ConfigError(f"cannot reach a Ray cluster at {spec.address!r}: {problem}", f"{where}: executor.ray.address") from None


class RayRun:
    """The driver's side of one run on Ray: submit each stage's tasks, apply their writes as they finish."""

    def __init__(self, runner: "Runner", store: ResultsStore, pending: list["Cell"], spec: "RaySpec"):
        import ray

        self.ray = ray
        self.r, self.store, self.pending, self.spec = runner, store, pending, spec
        self.job = Job(runner.m.model_dump(mode="json"), runner.source, os.getcwd(), uuid.uuid4().hex)

    def submit(self, stage: str, fn: Callable, *args):
        res = self.spec.stage(stage)
        options = {"num_cpus": res.num_cpus, "num_gpus": res.num_gpus, "max_retries": self.spec.max_retries,
                   "retry_exceptions": False, "name": f"saebench.{stage}"}
        if res.memory is not None:
            options["memory"] = res.memory
        return self.ray.remote(fn).options(**options).remote(self.job, *args)

    def drain(self, label: str, refs: dict, unit: str, size: Callable[[Any], int] = lambda _: 1,
              on_done: Callable[[Any, dict], None] | None = None, on_lost: Callable[[Any, str], None] | None = None) -> None:
        """Wait for every task in ``refs`` (ref -> what it computes), applying each result as it lands."""
        first_error = None
        with self.r.progress.bar(f"{label} (ray)", total=sum(size(v) for v in refs.values()), unit=unit) as bar:
            waiting = list(refs)
            while waiting:
                ready, waiting = self.ray.wait(waiting, num_returns=1)
                what = refs[ready[0]]
                try:
                    result = self.ray.get(ready[0])
                except self.ray.exceptions.RayError as exc:  # failed past its retries
                    error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]
                    if on_lost is None:
                        raise RuntimeError(f"{label} task {what!r} failed on Ray: {error}") from None
                    on_lost(what, error)
                else:
                    self.apply(result["writes"])
                    if on_done is not None:
                        on_done(what, result)
                    first_error = first_error or result["error"]
                bar.update(size(what))
        if first_error:  # bad input found by a worker: stop with exit 2, after applying what finished
            import saebench.errors as errors

            raise getattr(errors, first_error["type"], SaebenchError)(first_error["problem"], first_error["where"])

    def known(self, cells: list["Cell"]) -> dict[CellKey, tuple[dict, dict]]:
        """The stored latent results and errors of ``cells``, what a task's BufferStore answers."""
        return {c.key: (self.store.latent_results(c.key, c.config_hash), self.store.latent_errors(c.key, c.config_hash))
                for c in cells}

    def fail(self, cells: list["Cell"], run_id: int, error: str) -> None:
        """Store ``cells`` as failed with the error of the task that should have computed them."""
        self.apply([("write_cell", c.key, {"config_hash": c.config_hash, "config": c.config, "run_id": run_id,
                                           "seconds": 0.0, "error": error}) for c in cells])

    def apply(self, writes: list[tuple]) -> None:
        self.store.write_latents([w[1:] for w in writes if w[0] == "write_latent"])
        for _, key, kwargs in (w for w in writes if w[0] == "write_cell"):
            self.store.write_cell(key, **kwargs)
            if kwargs.get("error"):
                self.r.report.failed.append((key, kwargs["error"]))
                self.r.progress.note(f"cell {key.sae} × {key.scorer} failed: {kwargs['error']}")
            else:
                self.r.report.done += 1

    def run(self) -> None:
        r, t0 = self.r, time.perf_counter()
        keys = [c.key for c in self.pending]
        models = sorted({c.key.model for c in self.pending} | {s.model for s in r.untrained()})
        self.drain("activations", {self.submit("activations", activations_task, m, keys): m for m in models}, "model")
        r.report.timings["activations_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.drain("train", {self.submit("train", train_task, s.name): s.name for s in r.untrained()}, "sae")
        r.report.timings["training_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        run_id = self.store.start_run(r.m.model_dump(mode="json"), _versions(), r.m.seed)
        self.job = dataclasses.replace(self.job, run_id=run_id)
        self.interp(run_id)
        groups: dict[str, list["Cell"]] = {}
        for c in self.pending:
            if c.stage not in INTERP:
                groups.setdefault(c.sae.name, []).append(c)
        rules = f"explain[{r.rule_explainer[0]}]"  # what probe scorers that name rules read (interp_stage.explain_latents)
        refs = {}
        for sae, group in groups.items():
            naming = any(getattr(c.scorer, "uses_explanations", False) for c in group)
            explained = self.known([c for c in r.all_cells if c.sae.name == sae and c.key.scorer == rules]) if naming else {}
            refs[self.submit("cells", cells_task, sae, [c.key for c in group], explained)] = sae
        self.drain("cells", refs, "sae", on_lost=lambda sae, error: self.fail(groups[sae], run_id, error))
        r.report.timings["cells_s"] = time.perf_counter() - t2
        r.report.timings["total_s"] = time.perf_counter() - t0
        self.store.finish_run(run_id, "failed cells" if r.report.failed else "ok", r.report.timings)

    def interp(self, run_id: int) -> None:
        """Records per SAE, then its latents in shares, then its explain and interp cells from what is stored."""
        cells = {}
        for c in self.pending:
            if c.stage in INTERP:
                cells.setdefault(c.sae.name, []).append(c)
        if not cells:
            return

        parts = {sae: self.record_parts(sae) for sae in cells}
        summaries: dict[tuple[str, tuple | None], RecordSummary] = {}
        jobs = {self.submit("records", records_task, sae, part): (sae, part) for sae in cells for part in parts[sae]}
        self.drain("latent records", jobs, "task", on_done=lambda what, result: summaries.__setitem__(what, result["value"]),
                   on_lost=lambda what, error: self.fail(cells.pop(what[0], []), run_id, error))
        shares: dict = {}
        for sae, group in cells.items():
            stored = self.known([c for c in self.r.all_cells if c.sae.name == sae and c.stage in INTERP])
            for part in parts[sae]:
                latents = [rec.latent for rec in summaries[(sae, part)].records]
                for i in range(0, len(latents), self.spec.latents_per_task):
                    share = latents[i:i + self.spec.latents_per_task]
                    known = {key: tuple({j: d[j] for j in share if j in d} for d in pair) for key, pair in stored.items()}
                    ref = self.submit("latents", latents_task, sae, [c.key for c in group], share, known, part)
                    shares[ref] = (sae, tuple(share))

        def lost(what: tuple, error: str) -> None:  # every result of the share's latents not stored yet fails
            sae, share = what
            for cell in (c for c in self.r.all_cells if c.sae.name == sae and c.stage in INTERP):
                done = self.store.latent_results(cell.key, cell.config_hash)
                for latent in (j for j in share if j not in done):
                    self.store.write_latent(cell.key, latent, config_hash=cell.config_hash, error=error)

        self.drain("latents", shares, "latent", size=lambda what: len(what[1]), on_lost=lost)
        with self.r.progress.bar("interpretability cells", total=sum(len(g) for g in cells.values()), unit="cell") as bar:
            for sae, group in cells.items():
                stage = _stage(self.r, self.store, run_id, sae, with_sae=False, bar=bar)
                if parts[sae] == [None]:
                    summary = summaries[(sae, None)]
                else:  # the parts in order: the records the one-task build would have listed
                    pieces = [summaries[(sae, part)] for part in parts[sae]]
                    summary = RecordSummary([r for p in pieces for r in p.records], {k: v for p in pieces for k, v in p.skipped.items()})
                    stage.record_files = [str(stage.records_path(part).absolute()) for part in parts[sae]]
                stage.run(group, compute=False, records=summary)

    def record_parts(self, sae_name: str) -> list[tuple[int, ...] | None]:
        """The latents of each records task of an SAE: [None] for one task building them all. A list or
        all of the latents is split into ``latents_per_records_task``; a sample of N is drawn (and built)
        in one task."""
        from saebench.records import select_latents

        cfg = self.r.record_config
        if not (cfg.latents == "all" or isinstance(cfg.latents, list)):
            return [None]
        latents = select_latents(self.r.d_sae(next(s for s in self.r.m.saes if s.name == sae_name)), cfg)
        n = self.spec.latents_per_records_task
        return [None] if len(latents) <= n else [tuple(latents[i:i + n]) for i in range(0, len(latents), n)]


def _versions() -> dict[str, str]:
    from saebench.runner import versions

    return {**versions(), "executor": "ray " + __import__("ray").__version__}
