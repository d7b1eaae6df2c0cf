"""The local executor: the plan's stages one after another in this process, each result stored as it is made."""

from __future__ import annotations

import time
from contextlib import closing

from saebench.run import latents, shared, stages
from saebench.run.context import RunContext
from saebench.run.plan import CELL_KINDS, LATENT_KINDS, Stage, versions
from saebench.run.progress import Bar
from saebench.run.recorder import Recorder, RunReport
from saebench.run.stages import Work
from saebench.run.store import ResultsStore


class LocalExecutor:
    name = "local"

    def run(self, ctx: RunContext, work: Work, store: ResultsStore, report: RunReport, t0: float) -> None:
        todo = work.stages(ctx)  # the plan's order: every model's activations, every training, then per SAE
        for stage in (s for s in todo if s.kind == "activations"):
            stages.activations(ctx, stage.key, work)
        report.timings["activations_s"] = time.perf_counter() - t0
        t1 = time.perf_counter()
        # an SAE another run is training is left for last: this run trains the others meanwhile
        busy = [s.key for s in todo if s.kind == "train" and not stages.train(ctx, s.key, wait=False)]
        for name in busy:
            stages.train(ctx, name)
        report.timings["training_s"] = time.perf_counter() - t1
        run_id = report.run_id = stages.open_run(ctx, store, versions())
        t2 = time.perf_counter()
        per_sae = [s for s in todo if s.kind in ("records", "latents", "cells")]
        with ctx.progress.bar("cells", total=len(work.pending), unit="cell") as bar:
            out = Recorder(store, report, ctx.progress.note, on_cell=lambda key: bar.update(1))
            work = shared.run_groups(ctx, work, store, out, run_id, bar)  # cells that share passes, first
            with closing(stages.claims(ctx, list(dict.fromkeys(s.key for s in per_sae)), together=False)) as claims:
                for (name,) in claims:
                    mine = work.claimed(store, [name])
                    others = sum(c.sae == name for c in work.pending) - len(mine.pending)
                    if others:  # finished by another run sharing the output folder
                        ctx.progress.note(f"{others} cell(s) of SAE {name} were computed by another run")
                        report.skipped += others
                        bar.update(others)
                    for stage in (s for s in per_sae if s.key == name and mine.has(ctx, s)):
                        self.stage(ctx, mine, out, run_id, stage, bar)
        report.timings["cells_s"] = time.perf_counter() - t2
        report.timings["total_s"] = time.perf_counter() - t0
        store.finish_run(run_id, "failed cells" if report.failed else "ok", report.timings)

    @staticmethod
    def stage(ctx: RunContext, work: Work, out: Recorder, run_id: int, stage: Stage, bar: Bar) -> None:
        if stage.kind == "records":
            latents.records(ctx, stage.key)
        elif stage.kind == "latents":
            latents.latents(ctx, out, run_id, stage.key, work.cells(stage.key, LATENT_KINDS))
        else:
            stages.cells(ctx, out, run_id, stage.key, work.cells(stage.key, CELL_KINDS), bar)
