"""The records and latents stages of one SAE: latent records → explanations → per-latent scores.

Latent records are built once per SAE and cached on disk (keyed by the SAE, the evaluation cache
and the ``interp`` options). Explanations are computed once per explainer and shared by every
scorer. Each latent's explanation and score is written as it arrives, so an interrupted run
resumes at the next unfinished latent; a latent whose LLM call gave up is stored as failed and is
the only thing recomputed on the next run. LLM calls of all latents are issued concurrently; each
client's own limit decides how many are in flight.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Collection, Sequence
from pathlib import Path
from typing import Any

import torch
from pydantic import BaseModel

from saebench.errors import one_line
from saebench.interfaces import InterpContext
from saebench.interp.records import Corpus, RecordSet, build_records, planned_passes, select_latents
from saebench.interp.types import Explanation, LatentScore, Usage
from saebench.run.activations import ActivationCache, cache_key
from saebench.run.context import RunContext
from saebench.run.plan import LATENT_KINDS, Cell
from saebench.run.progress import Bar
from saebench.run.recorder import Results
from saebench.run.store import CellKey
from saebench.sae import SAE
from saebench.uncertainty import Units

#: what a latent's work is reported with: (latent, result or None, error or None)
StoreOne = Callable[[int, "dict[str, Any] | None", "str | None"], None]


def record_sae(out: Results, ctx: RunContext, name: str, sae: SAE) -> None:
    """Store the SAE's resolved configuration (what the report shows of it), as it was loaded."""
    entry = ctx.plan.saes[name]
    spec = entry.spec
    config = sae.cfg.model_dump(mode="json", exclude={"metadata"})
    if spec.baseline is not None:  # what the leaderboard and fits tell baselines by
        config["baseline"] = sae.cfg.metadata.get("baseline", spec.baseline)
    out.write_sae(spec.model, spec.hookpoint, entry.stored_as, config)


def records_path(ctx: RunContext, sae: str, part: Sequence[int] | None = None) -> Path:
    """Where an SAE's latent records are cached (those of the latents in ``part`` alone, when given)."""
    entry = ctx.plan.saes[sae]
    key = cache_key(sae=entry.identity, cache=entry.eval_cache.name, interp=entry.record_config.model_dump())
    name = f"{sae}-{key}"
    if part is not None:  # an executor's share of the latents, built and stored on its own
        name += f"-part-{cache_key(latents=list(part))}"
    return ctx.plan.cache_dir / "records" / f"{name}.json.gz"


def records(ctx: RunContext, sae_name: str, part: Sequence[int] | None = None) -> RecordSet:
    """The records stage: this SAE's latent records (of the latents in ``part`` only), from the cache or
    built, and kept in the context for the latents stage that follows."""
    path = records_path(ctx, sae_name, part)
    return ctx.last("records", path, lambda: _cached_or_built(ctx, sae_name, part, path))


def _cached_or_built(ctx: RunContext, sae_name: str, part: Sequence[int] | None, path: Path) -> RecordSet:
    if not path.is_file():
        with ctx.lock(path, f"latent records of {sae_name}"):
            if not path.is_file():  # not built by another run while this one waited
                return _build(ctx, sae_name, part, path)
    return RecordSet.load(path)


def _build(ctx: RunContext, sae_name: str, part: Sequence[int] | None, path: Path) -> RecordSet:
    sae = ctx.sae(sae_name)
    cfg = ctx.plan.saes[sae_name].record_config
    cache = ctx.eval_cache(sae_name)
    adapter = ctx.adapter(ctx.plan.saes[sae_name].spec.model)
    latents = list(part) if part is not None else select_latents(sae.cfg.d_sae, cfg)
    n = len(latents) if isinstance(latents, list) else latents  # an int: N sampled among the live latents
    passes = planned_passes(n, cfg, counting=isinstance(latents, int))
    label = f"latent records {sae_name} ({n} latents)"
    with ctx.progress.bar(label, total=cache.n_tokens * passes, unit="tok") as bar, torch.no_grad():
        built = build_records(sae, cache.batches, Corpus.of(adapter, cache.tokens()), latents, cfg, progress=bar.update)
    path.parent.mkdir(parents=True, exist_ok=True)
    built.save(path)
    return built


def latents(
    ctx: RunContext,
    out: Results,
    run_id: int,
    sae_name: str,
    cells: list[Cell],
    rs: Any = None,
    *,
    share: Collection[int] | None = None,
    compute: bool = True,
    record_files: list[str] | None = None,
) -> None:
    """The latents stage: the pending explain and interp ``cells`` of one SAE, in one event loop.

    ``rs`` is the SAE's RecordSet (default: the records stage's), or what an executor kept of it (its
    records' latents and skipped counts). An executor may split the stage in two: workers compute
    shares of the latents (``share``: only those, and no cell rows), then the driver writes the cells
    from what is stored (``compute=False``: no LLM call and no SAE; a latent without a result counts
    as failed). ``record_files`` names the records' files when an executor stored them in parts (the
    report reads examples there).
    """
    sae = None
    if compute:
        sae = ctx.sae(sae_name)
        record_sae(out, ctx, sae_name, sae)
    rs = rs if rs is not None else records(ctx, sae_name)
    run = _LatentsRun(ctx, out, run_id, sae_name, sae, rs, share, compute, record_files)
    asyncio.run(run.all({c.key for c in cells}))


class _LatentsRun:
    def __init__(
        self,
        ctx: RunContext,
        out: Results,
        run_id: int,
        sae_name: str,
        sae: SAE | None,
        rs: Any,
        share: Collection[int] | None,
        compute: bool,
        record_files: list[str] | None,
    ):
        self.ctx, self.out, self.run_id, self.sae_name, self.sae, self.rs = ctx, out, run_id, sae_name, sae, rs
        self.share = None if share is None else set(share)
        self.compute, self.record_files = compute, record_files
        self.records = rs.records if self.share is None else [r for r in rs.records if r.latent in self.share]

    async def all(self, pending: set[CellKey]) -> None:
        everything = self.ctx.plan.cells_of(self.sae_name, LATENT_KINDS)
        for explain_cell in (c for c in everything if c.kind == "explain"):
            scorers = [
                c
                for c in everything
                if c.kind == "interp" and c.explainer == explain_cell.explainer and c.key in pending
            ]
            if explain_cell.key not in pending and not scorers:
                continue
            explanations = await self.explain(explain_cell, pending)
            # The scorers of one explainer run together, so their LLM calls share the clients' concurrency.
            await asyncio.gather(*(self.score(cell, explanations) for cell in scorers))

    async def explain(self, cell: Cell, pending: set[CellKey]) -> dict[int, Explanation]:
        start = time.perf_counter()
        done = self.out.latent_results(cell.key, cell.config_hash)
        explanations = {latent: Explanation(**result) for latent, result in done.items()}
        with self.ctx.progress.bar(f"explain[{cell.explainer}] {self.sae_name}", len(self.records), "latent") as bar:
            if self.compute:
                explainer = self.ctx.component(cell)
                jobs = {
                    r.latent: (lambda r=r: explainer.explain(r)) for r in self.records if r.latent not in explanations
                }
                failed = await for_each_latent(jobs, explanations, self._store_one(cell), bar, len(self.records))
            else:
                failed = self._unfinished(cell, [r.latent for r in self.records if r.latent not in done])
        if cell.key in pending and self.share is None:
            details = {
                "skipped": {str(k): v for k, v in self.rs.skipped.items()},
                "failed": {str(k): v for k, v in failed.items()},
                "records": self.record_files or str(records_path(self.ctx, self.sae_name).absolute()),
            }
            self._finish(cell, explain_metrics(self.rs, explanations, failed), details, start)
        return explanations

    async def score(self, cell: Cell, explanations: dict[int, Explanation]) -> None:
        start = time.perf_counter()
        done = self.out.latent_results(cell.key, cell.config_hash)
        scores = {latent: LatentScore(**result) for latent, result in done.items()}
        scorer = self.ctx.component(cell)
        explained = [r for r in self.records if r.latent in explanations and explanations[r.latent].text is not None]
        if self.compute:
            cache = self.ctx.eval_cache(self.sae_name)
            model = self.ctx.plan.saes[self.sae_name].spec.model
            ic = InterpContext(
                sae=self.sae,
                hookpoint=cell.key.hookpoint,
                llm=self.ctx.llm(cell),
                tokens=cache.tokens(),
                adapter=self.ctx.adapter(model) if scorer.needs_model else None,
                seed=self.ctx.plan.saes[self.sae_name].seed,
            )
            with self.ctx.progress.bar(f"{cell.key.scorer} {self.sae_name}", len(self.records), "latent") as bar:
                jobs = {
                    r.latent: (lambda r=r: scorer.score_latent(r, explanations[r.latent], ic))
                    for r in explained
                    if r.latent not in scores
                }
                failed = await for_each_latent(jobs, scores, self._store_one(cell), bar, len(self.records))
        else:
            failed = self._unfinished(cell, [r.latent for r in explained if r.latent not in done])
        if self.share is not None:
            return
        ordered = [scores[k] for k in sorted(scores)]
        metrics = dict(scorer.aggregate(ordered))
        metrics["unexplained"] = float(sum(1 for e in explanations.values() if e.text is None))
        # a latent without an explanation (its explainer's LLM gave up) is unfinished here too
        metrics["failed_latents"] = float(len(failed) + sum(1 for r in self.records if r.latent not in explanations))
        self._finish(cell, metrics, {"failed": {str(k): v for k, v in failed.items()}}, start, scorer.units(ordered))

    def _unfinished(self, cell: Cell, latents: list[int]) -> dict[int, str]:
        """Latents with no stored result, with the error their worker stored (if any)."""
        errors = self.out.latent_errors(cell.key, cell.config_hash)
        return {latent: errors.get(latent, "no result was computed") for latent in latents}

    def _store_one(self, cell: Cell) -> StoreOne:
        def store_one(latent: int, result: dict[str, Any] | None, error: str | None) -> None:
            self.out.write_latent(cell.key, latent, config_hash=cell.config_hash, result=result, error=error)

        return store_one

    def _finish(self, cell: Cell, metrics: dict, details: dict, start: float, units: Units | None = None) -> None:
        seconds = time.perf_counter() - start
        self.out.write_cell(cell.key, **cell.row(self.run_id, seconds, metrics=metrics, details=details, units=units))


async def for_each_latent(
    jobs: dict[int, Callable[[], Awaitable[BaseModel]]],
    results: dict[int, Any],
    store_one: StoreOne,
    bar: Bar,
    total: int,
) -> dict[int, str]:
    """Run every latent's job concurrently, storing each result (into ``results`` and through
    ``store_one``) as it arrives; a job that raises fails its latent alone. Returns the failures."""
    failed: dict[int, str] = {}

    async def one(latent: int, job: Callable[[], Awaitable[BaseModel]]) -> None:
        try:
            result = await job()
        except Exception as exc:  # this latent fails; the others go on
            failed[latent] = one_line(exc, 1000)
            store_one(latent, None, failed[latent])
        else:
            results[latent] = result
            store_one(latent, result.model_dump(), None)
        bar.update(1)

    bar.update(total - len(jobs))  # the latents already done, or with nothing to do
    await asyncio.gather(*(one(latent, job) for latent, job in jobs.items()))
    return failed


def explain_metrics(rs: Any, explanations: dict[int, Explanation], failed: dict[int, str]) -> dict[str, float | None]:
    texts = [e.text for e in explanations.values() if e.text is not None]
    out: dict[str, float | None] = {
        "latents": float(len(rs.records)),
        "skipped_latents": float(len(rs.skipped)),
        "alive_latents": None if rs.n_alive is None else float(rs.n_alive),
        "eligible_latents": None if rs.n_eligible is None else float(rs.n_eligible),
        "explained": float(len(texts)),
        "unexplained": float(sum(1 for e in explanations.values() if e.text is None)),
        "failed_latents": float(len(failed)),
        "mean_words": sum(len(t.split()) for t in texts) / len(texts) if texts else None,
    }
    out.update(Usage.total(list(explanations.values())))
    return out


def explain_latents(
    ctx: RunContext, out: Results, sae_name: str, sae: SAE, cache: ActivationCache, wanted: Sequence[int]
) -> dict[int, str]:
    """Explanations of ``wanted`` latents from the run's rule explainer (for scorers that name rules):
    those its explain cell already stored, the rest explained now from records built over the
    evaluation set. A latent that cannot be explained (too few activating windows, the LLM gave up)
    is left out; the caller names it some other way."""
    name, explainer = ctx.components.rule_explainer
    entry = ctx.plan.saes[sae_name]
    cell = ctx.plan.cell(CellKey(entry.spec.model, entry.spec.hookpoint, sae_name, f"explain[{name}]"))
    done = out.latent_results(cell.key, cell.config_hash) if cell else {}
    texts = {j: done[j]["text"] for j in wanted if j in done and done[j].get("text")}
    todo = [j for j in wanted if j not in texts]
    if todo:
        with torch.no_grad():
            rs = build_records(
                sae,
                cache.batches,
                Corpus.of(ctx.adapter(entry.spec.model), cache.tokens()),
                todo,
                entry.record_config,
            )

        async def explain_each() -> list[Any]:
            return await asyncio.gather(*(explainer.explain(r) for r in rs.records), return_exceptions=True)

        for record, result in zip(rs.records, asyncio.run(explain_each())):
            if isinstance(result, Explanation) and result.text:
                texts[record.latent] = result.text
    return texts
