"""The local executor: the plan's stages one after another in this process, each result stored as it is made."""

from __future__ import annotations

import time

from saebench.run import latents, stages
from saebench.run.context import RunContext
from saebench.run.plan import LATENT_KINDS, versions
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
        for stage in (s for s in todo if s.kind == "train"):
            stages.train(ctx, stage.key)
        report.timings["training_s"] = time.perf_counter() - t1
        run_id = stages.open_run(ctx, store, versions())
        t2 = time.perf_counter()
        with ctx.progress.bar("cells", total=len(work.pending), unit="cell") as bar:
            out = Recorder(store, report, ctx.progress.note, on_cell=lambda key: bar.update(1))
            for stage in todo:
                if stage.kind == "records":
                    latents.records(ctx, stage.key)
                elif stage.kind == "latents":
                    latents.latents(ctx, out, run_id, stage.key, work.cells(stage.key, LATENT_KINDS))
                elif stage.kind == "cells":
                    stages.cells(ctx, out, run_id, stage.key, work.cells(stage.key, ("intrinsic", "probe")), bar)
        report.timings["cells_s"] = time.perf_counter() - t2
        report.timings["total_s"] = time.perf_counter() - t0
        store.finish_run(run_id, "failed cells" if report.failed else "ok", report.timings)
