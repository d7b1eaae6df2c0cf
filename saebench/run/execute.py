"""``saebench run``: plan the matrix, check it, and hand the stages that have work to an executor.

Three executors run the same plan: ``local`` (this process, one stage after another), ``ray``
(stages as Ray tasks, ``executor: {ray: ...}``) and the dry run (``saebench run --dry-run``: what
would be computed, computing nothing). Everything the user can get wrong is checked before any work.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Protocol

from saebench.run import stages
from saebench.run.components import build_components
from saebench.run.context import RunContext
from saebench.run.local import LocalExecutor
from saebench.run.matrix import Matrix, load_matrix
from saebench.run.plan import make_plan
from saebench.run.progress import Progress
from saebench.run.ray import RayExecutor, connect
from saebench.run.recorder import RunReport
from saebench.run.sources import fetch_published
from saebench.run.stages import Work
from saebench.run.store import ResultsStore


class Executor(Protocol):
    """Runs the stages of ``work`` that have work, writing their results to ``store`` and counting them in ``report``."""

    name: str

    def run(self, ctx: RunContext, work: Work, store: ResultsStore, report: RunReport, t0: float) -> None: ...


def execute(
    matrix: Matrix, *, source: str = "matrix", progress: Progress | None = None, dry_run: bool = False
) -> RunReport:
    """Run every pending cell of ``matrix`` (checked already: see ``load_matrix``); returns what was done."""
    t0 = time.perf_counter()
    progress = progress or Progress()
    components = build_components(matrix, source)
    if not dry_run:  # before planning: an hf:// SAE's hash covers the commit its first fetch resolves
        fetch_published(matrix.saes, source)
    ctx = RunContext(make_plan(matrix, source, components), components, progress)
    report = RunReport()
    store = ResultsStore(ctx.plan.output)
    try:
        work = Work.find(ctx, store)
        report.skipped = len(ctx.plan.cells) - len(work.pending)
        if dry_run:
            describe(ctx, work)
            return report
        if not work.pending and not work.untrained:
            progress.note(f"all {len(ctx.plan.cells)} cells are finished in {ctx.plan.output}; nothing to do")
            return report
        executor: Executor
        if matrix.ray is not None:
            connect(matrix.ray, source)
            executor = RayExecutor(matrix.ray)
        else:
            executor = LocalExecutor()
        stages.check(ctx, work)
        report.pending = len(work.pending)
        executor.run(ctx, work, store, report, t0)
    except KeyboardInterrupt as exc:  # Ctrl-C or SIGTERM: what is stored stays; say what that is
        if report.run_id is not None:
            store.finish_run(report.run_id, "interrupted", report.timings)
        exc.report = report  # type: ignore[attr-defined]
        raise
    finally:
        store.close()
    return report


def describe(ctx: RunContext, work: Work) -> None:
    """The dry run: each stage with work and each cell, pending or finished, on stdout."""
    pending = {c.key for c in work.pending}
    print(
        f"plan of {ctx.plan.source}: {len(ctx.plan.cells)} cells, {len(pending)} to compute, "
        f"{len(work.untrained)} SAE(s) to train"
    )
    for stage in work.stages(ctx):
        after = ", ".join(f"{k} {n}" for k, n in stage.after)
        print(f"  stage {stage.kind} {stage.key}" + (f" (after {after})" if after else ""))
    for cell in ctx.plan.cells:
        state = "to compute" if cell.key in pending else "finished"
        print(
            f"  cell {cell.key.model} {cell.key.hookpoint} {cell.key.sae} × {cell.key.scorer}: {state} "
            f"[{cell.config_hash}]"
        )


def run_matrix(path: str | Path, *, quiet: bool = False, dry_run: bool = False) -> RunReport:
    matrix = load_matrix(path)
    report = execute(matrix, source=str(path), progress=Progress(enabled=not quiet), dry_run=dry_run)
    if report.failed and not quiet:
        print(
            f"{len(report.failed)} cell(s) failed; their errors are in {matrix.output}/results.sqlite", file=sys.stderr
        )
    if report.failed_latents and not quiet:
        print(
            f"{report.failed_latents} latent result(s) unfinished (LLM calls that gave up); re-run to retry only those",
            file=sys.stderr,
        )
    return report
