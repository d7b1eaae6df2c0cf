"""The Ray executor (``executor: {ray: {address: auto}}``): the same plan and stage functions, fanned out as Ray tasks.

The driver (the process running ``saebench run``) plans, checks and owns the results database;
workers compute. A worker builds its own RunContext from the matrix (models and plugins load once
per worker process and serve its later tasks), works in the driver's working directory, and reads
and writes artifacts (activation caches, trained SAEs, latent records, the LLM response cache)
under the run's output and cache folders: every node must see them at the same path (shared
storage). Workers never write results.sqlite: a task returns the writes it would have made (a
BufferStore) and the driver applies them through its Recorder as each task finishes, so results
stay incremental.

Each kind of stage runs as tasks with the matrix's resource request (``resources.KIND``):
  activations  one per model (every eval and train cache the run needs from it)
  train        one per SAE to train
  records      one per SAE with interpretability cells, or one per ``latents_per_records_task`` of its
               latents (a file each) when ``interp.latents`` is all or a list
  latents      ``latents_per_task`` latents of one SAE (reading only their records part): their
               explanations and per-latent scores; then the driver writes the SAE's explain and
               interp cells from what is stored
  cells        the intrinsic and probe cells of one SAE
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
from collections.abc import Callable
from contextlib import closing
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch

import saebench.errors as errors
from saebench.errors import ConfigError, SaebenchError, one_line
from saebench.interp.records import select_latents
from saebench.run import latents, stages
from saebench.run.components import build_components
from saebench.run.context import RunContext
from saebench.run.matrix import Matrix, RaySpec
from saebench.run.plan import CELL_KINDS, LATENT_KINDS, Cell, make_plan, versions
from saebench.run.progress import Progress
from saebench.run.recorder import BufferStore, Recorder, RunReport
from saebench.run.sources import fetch_published
from saebench.run.stages import Work
from saebench.run.store import CellKey, ResultsStore


@dataclass(frozen=True)
class Job:
    """What every task gets: the matrix (as JSON), where the driver runs, and the run's id."""

    matrix: dict[str, Any]
    source: str
    cwd: str
    token: str  # one per driver run: a long-lived worker must not reuse state planned for an earlier run
    run_id: int = 0

    @property
    def key(self) -> str:
        return hashlib.sha256(
            json.dumps([self.matrix, self.source, self.cwd, self.token], sort_keys=True).encode()
        ).hexdigest()


# -- worker side ----------------------------------------------------------------------------------
_CONTEXTS: dict[str, RunContext] = {}


def _worker(job: Job) -> RunContext:
    """This worker's RunContext for the job's matrix, built once (its loaded models, last SAE and last
    records serve its later tasks)."""
    import ray

    os.chdir(job.cwd)  # relative paths in a matrix are relative to where the driver runs
    threads = int(ray.get_runtime_context().get_assigned_resources().get("CPU", 1))
    torch.set_num_threads(max(1, threads))
    if job.key not in _CONTEXTS:
        _CONTEXTS.clear()
        matrix = Matrix.model_validate(job.matrix)
        components = build_components(matrix, job.source)
        fetch_published(matrix.saes, job.source)  # this node's cache resolves hf:// revisions as the driver's did
        ctx = RunContext(make_plan(matrix, job.source, components), components, Progress(enabled=False))
        for client in components.llms.values():
            client.use_cache(ctx.plan.cache_dir / "llm-responses.sqlite")
        _CONTEXTS[job.key] = ctx
    return _CONTEXTS[job.key]


def _guarded(work: Callable[[BufferStore], Any], known: dict | None = None) -> dict[str, Any]:
    """Run ``work``; return what it returned, its buffered writes and, for bad input, the error to
    raise on the driver."""
    out = BufferStore(known)
    value = error = None
    try:
        value = work(out)
    except SaebenchError as exc:
        error = {
            "problem": exc.problem,
            "where": None if exc.where is None else str(exc.where),
            "type": type(exc).__name__,
        }
    return {"value": value, "writes": out.writes, "error": error}


def _cells(ctx: RunContext, keys: list[CellKey]) -> list[Cell]:
    wanted = set(keys)
    return [c for c in ctx.plan.cells if c.key in wanted]


def activations_task(job: Job, model: str, keys: list[CellKey], untrained: list[str]) -> dict[str, Any]:
    ctx = _worker(job)
    return _guarded(lambda _: stages.activations(ctx, model, Work(_cells(ctx, keys), untrained)))


def train_task(job: Job, sae: str) -> dict[str, Any]:
    ctx = _worker(job)
    return _guarded(lambda _: stages.train(ctx, sae))


@dataclass
class RecordSummary:
    """What the driver needs of an SAE's latent records (its latents, not their examples)."""

    records: list[SimpleNamespace]
    skipped: dict[int, int]
    n_alive: int | None = None
    n_eligible: int | None = None


def records_task(job: Job, sae: str, part: tuple[int, ...] | None) -> dict[str, Any]:
    """The records of an SAE (of the latents in ``part``, when the run splits them); returns their summary."""
    ctx = _worker(job)

    def work(_) -> RecordSummary:
        rs = latents.records(ctx, sae, part)
        return RecordSummary(
            [SimpleNamespace(latent=r.latent) for r in rs.records], rs.skipped, rs.n_alive, rs.n_eligible
        )

    return _guarded(work)


def latents_task(
    job: Job, sae: str, keys: list[CellKey], share: list[int], known: dict, part: tuple[int, ...] | None
) -> dict[str, Any]:
    ctx = _worker(job)
    return _guarded(
        lambda out: latents.latents(
            ctx, out, job.run_id, sae, _cells(ctx, keys), latents.records(ctx, sae, part), share=share
        ),
        known,
    )


def cells_task(job: Job, sae: str, keys: list[CellKey], known: dict) -> dict[str, Any]:
    ctx = _worker(job)
    return _guarded(lambda out: stages.cells(ctx, out, job.run_id, sae, _cells(ctx, keys)), known)


# -- driver side ----------------------------------------------------------------------------------
def connect(spec: RaySpec, where: str) -> None:
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
            raise ConfigError(
                f"cannot reach a Ray cluster at {spec.address!r}: {exc.strerror or exc}",
                f"{where}: executor.ray.address",
            ) from None
    options: dict[str, Any] = {"log_to_driver": False, "logging_level": "ERROR"}
    try:
        if spec.address == "local":
            ray.init(include_dashboard=False, **options)
        else:
            ray.init(address=spec.address, **options)
    except (ConnectionError, RuntimeError, ValueError) as exc:
        raise ConfigError(
            f"cannot reach a Ray cluster at {spec.address!r}: {one_line(exc, 300, with_type=False)}",
            f"{where}: executor.ray.address",
        ) from None


class RayExecutor:
    """The driver's side of one run on Ray: each stage kind's tasks submitted together, their writes applied as they land."""

    name = "ray"

    def __init__(self, spec: RaySpec):
        import ray

        self.ray, self.spec = ray, spec

    def run(self, ctx: RunContext, work: Work, store: ResultsStore, report: RunReport, t0: float) -> None:
        self.ctx, self.work, self.store = ctx, work, store
        self.out = Recorder(store, report, ctx.progress.note)
        # what the user set, so the workers validate the same matrix (seeds and an explicit seed exclude each other)
        self.job = Job(
            ctx.plan.matrix.model_dump(mode="json", exclude_unset=True), ctx.plan.source, os.getcwd(), uuid.uuid4().hex
        )
        todo = work.stages(ctx)
        keys = [c.key for c in work.pending]
        of = lambda kind: [s.key for s in todo if s.kind == kind]  # noqa: E731
        self.drain(
            "activations",
            {self.submit("activations", activations_task, m, keys, work.untrained): m for m in of("activations")},
            "model",
        )
        report.timings["activations_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        self.drain("train", {self.submit("train", train_task, s): s for s in of("train")}, "sae")
        report.timings["training_s"] = time.perf_counter() - t1
        t2 = time.perf_counter()
        run_id = report.run_id = stages.open_run(ctx, store, {**versions(), "executor": "ray " + self.ray.__version__})
        self.job = dataclasses.replace(self.job, run_id=run_id)
        saes = list(dict.fromkeys(of("latents") + of("cells")))
        with closing(stages.claims(ctx, saes, together=True)) as claims:
            for claimed in claims:  # what runs sharing the output folder have not claimed, all at once
                self.work = work.claimed(store, claimed)
                others = sum(c.sae in claimed for c in work.pending) - len(self.work.pending)
                if others:
                    ctx.progress.note(f"{others} cell(s) of SAE(s) {', '.join(claimed)} were computed by another run")
                    report.skipped += others
                self.interp(run_id, [s for s in of("latents") if s in claimed and self.work.cells(s, LATENT_KINDS)])
                self.cells(run_id, [s for s in of("cells") if s in claimed])
        report.timings["cells_s"] = time.perf_counter() - t2
        report.timings["total_s"] = time.perf_counter() - t0
        store.finish_run(run_id, "failed cells" if report.failed else "ok", report.timings)

    def cells(self, run_id: int, saes: list[str]) -> None:
        """The intrinsic and probe cells: a task per SAE."""
        groups = {sae: self.work.cells(sae, CELL_KINDS) for sae in saes}
        refs = {}
        for sae, group in ((s, g) for s, g in groups.items() if g):
            rules = [
                c
                for c in self.ctx.plan.cells_of(sae, ("explain",))
                if c.explainer == self.ctx.components.rule_explainer[0]
            ]
            known = self.known(rules) if any(self.ctx.component(c).uses_explanations for c in group) else {}
            refs[self.submit("cells", cells_task, sae, [c.key for c in group], known)] = sae
        if refs:
            self.drain("cells", refs, "sae", on_lost=lambda sae, error: self.fail(groups[sae], run_id, error))

    # -- tasks --------------------------------------------------------------------------------------
    def submit(self, kind: str, fn: Callable, *args: Any) -> Any:
        res = self.spec.stage(kind)
        options = {
            "num_cpus": res.num_cpus,
            "num_gpus": res.num_gpus,
            "max_retries": self.spec.max_retries,
            "retry_exceptions": False,
            "name": f"saebench.{kind}",
        }
        if res.memory is not None:
            options["memory"] = res.memory
        return self.ray.remote(fn).options(**options).remote(self.job, *args)

    def drain(
        self,
        label: str,
        refs: dict,
        unit: str,
        size: Callable[[Any], int] = lambda _: 1,
        on_done: Callable[[Any, dict], None] | None = None,
        on_lost: Callable[[Any, str], None] | None = None,
    ) -> None:
        """Wait for every task in ``refs`` (ref -> what it computes), applying each result as it lands."""
        first_error = None
        with self.ctx.progress.bar(f"{label} (ray)", total=sum(size(v) for v in refs.values()), unit=unit) as bar:
            waiting = list(refs)
            while waiting:
                ready, waiting = self.ray.wait(waiting, num_returns=1)
                what = refs[ready[0]]
                try:
                    result = self.ray.get(ready[0])
                except self.ray.exceptions.RayError as exc:  # failed past its retries
                    if on_lost is None:
                        raise RuntimeError(f"{label} task {what!r} failed on Ray: {one_line(exc)}") from None
                    on_lost(what, one_line(exc))
                else:
                    self.out.apply(result["writes"])
                    if on_done is not None:
                        on_done(what, result)
                    first_error = first_error or result["error"]
                bar.update(size(what))
        if first_error:  # bad input found by a worker: stop with exit 2, after applying what finished
            raise getattr(errors, first_error["type"], SaebenchError)(first_error["problem"], first_error["where"])

    def known(self, cells: list[Cell]) -> dict[CellKey, tuple[dict, dict]]:
        """The stored latent results and errors of ``cells``, what a task's BufferStore answers."""
        return {
            c.key: (self.store.latent_results(c.key, c.config_hash), self.store.latent_errors(c.key, c.config_hash))
            for c in cells
        }

    def fail(self, cells: list[Cell], run_id: int, error: str) -> None:
        """Store ``cells`` as failed with the error of the task that should have computed them."""
        for c in cells:
            self.out.write_cell(c.key, **c.row(run_id, 0.0, error=error))

    # -- interpretability -------------------------------------------------------------------------------
    def interp(self, run_id: int, saes: list[str]) -> None:
        """Records per SAE (in parts), then its latents in shares, then its explain and interp cells from what is stored."""
        cells = {sae: self.work.cells(sae, LATENT_KINDS) for sae in saes}
        if not cells:
            return
        parts = {sae: self.record_parts(sae) for sae in cells}
        summaries: dict[tuple[str, tuple | None], RecordSummary] = {}
        jobs = {self.submit("records", records_task, sae, part): (sae, part) for sae in cells for part in parts[sae]}
        self.drain(
            "latent records",
            jobs,
            "task",
            on_done=lambda what, result: summaries.__setitem__(what, result["value"]),
            on_lost=lambda what, error: self.fail(cells.pop(what[0], []), run_id, error),
        )
        shares = {}
        for sae, group in cells.items():
            stored = self.known(self.ctx.plan.cells_of(sae, LATENT_KINDS))
            for part in parts[sae]:
                found = [rec.latent for rec in summaries[(sae, part)].records]
                for i in range(0, len(found), self.spec.latents_per_task):
                    share = found[i : i + self.spec.latents_per_task]
                    known = {
                        key: tuple({j: d[j] for j in share if j in d} for d in pair) for key, pair in stored.items()
                    }
                    ref = self.submit("latents", latents_task, sae, [c.key for c in group], share, known, part)
                    shares[ref] = (sae, tuple(share))
        self.drain("latents", shares, "latent", size=lambda what: len(what[1]), on_lost=self.lost_share)
        with self.ctx.progress.bar(
            "interpretability cells", total=sum(len(g) for g in cells.values()), unit="cell"
        ) as bar:
            self.out.on_cell = lambda key: bar.update(1)
            for sae, group in cells.items():
                pieces = [summaries[(sae, part)] for part in parts[sae]]
                summary = RecordSummary(
                    [r for p in pieces for r in p.records],
                    {k: v for p in pieces for k, v in p.skipped.items()},
                    pieces[0].n_alive if len(pieces) == 1 else None,
                    pieces[0].n_eligible if len(pieces) == 1 else None,
                )
                files = (
                    None
                    if parts[sae] == [None]
                    else [str(latents.records_path(self.ctx, sae, part).absolute()) for part in parts[sae]]
                )
                latents.latents(self.ctx, self.out, run_id, sae, group, summary, compute=False, record_files=files)
            self.out.on_cell = lambda key: None

    def lost_share(self, what: tuple[str, tuple[int, ...]], error: str) -> None:
        """A latents task that failed past its retries: every result of its latents not stored yet fails."""
        sae, share = what
        for cell in self.ctx.plan.cells_of(sae, LATENT_KINDS):
            done = self.store.latent_results(cell.key, cell.config_hash)
            for latent in (j for j in share if j not in done):
                self.out.write_latent(cell.key, latent, config_hash=cell.config_hash, error=error)

    def record_parts(self, sae: str) -> list[tuple[int, ...] | None]:
        """The latents of each records task of an SAE: [None] for one task building them all. A list or
        all of the latents is split into ``latents_per_records_task``; a sample of N is drawn (and built)
        in one task."""
        cfg = self.ctx.plan.saes[sae].record_config
        if not (cfg.latents == "all" or isinstance(cfg.latents, list)):
            return [None]
        chosen = select_latents(self.ctx.d_sae(sae), cfg)
        n = self.spec.latents_per_records_task
        return [None] if len(chosen) <= n else [tuple(chosen[i : i + n]) for i in range(0, len(chosen), n)]
