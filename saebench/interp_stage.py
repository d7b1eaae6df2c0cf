"""The runner's interpretability stage for one SAE: records → explanations → per-latent scores.

Latent records are built once per SAE and cached on disk (keyed by the SAE, the evaluation cache
and the ``interp`` options). Explanations are computed once per explainer and shared by every
scorer. Each latent's explanation and score is committed as it arrives, so an interrupted run
resumes at the next unfinished latent; a latent whose LLM call gave up is stored as failed and is
the only thing recomputed on the next run. LLM calls of all latents are issued concurrently; each
client's own limit decides how many are in flight.
"""

from __future__ import annotations

import asyncio
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Collection, Sequence

import torch

from saebench.activations import ActivationCache, cache_key
from saebench.interfaces import Explanation, InterpContext, LatentRecord, LatentScore
from saebench.interp import usage
from saebench.store import CellKey, ResultsStore

if TYPE_CHECKING:
    from saebench.runner import Cell, Runner

Store1 = Callable[[int, "dict[str, Any] | None", "str | None"], None]


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:1000]


class InterpStage:
    def __init__(self, runner: "Runner", store: ResultsStore, run_id: int, sae_spec, sae, cache: ActivationCache, bar):
        self.runner, self.store, self.run_id = runner, store, run_id
        self.sae_spec, self.sae, self.cache, self.bar = sae_spec, sae, cache, bar
        self.progress = runner.progress
        self.record_files: list[str] | None = None  # set by an executor that stored the records in parts
        self.share: set[int] | None = None  # see run()
        self.compute = True

    # -- records --------------------------------------------------------------------------------
    def records_path(self, part: Sequence[int] | None = None) -> Path:
        r = self.runner
        key = cache_key(sae=r.sae_identity(self.sae_spec), cache=self.cache.folder.name, interp=r.record_config.model_dump())
        name = f"{self.sae_spec.name}-{key}"
        if part is not None:  # an executor's share of the latents, built and stored on its own
            name += f"-part-{cache_key(latents=list(part))}"
        return r.cache_dir / "records" / f"{name}.json.gz"

    def records(self, part: Sequence[int] | None = None):
        """This SAE's latent records (of the latents in ``part`` only, when given): from the cache, or built."""
        from saebench.records import RecordSet, build_records, planned_passes, select_latents

        path = self.records_path(part)
        if path.is_file():
            return RecordSet.load(path)
        cfg = self.runner.record_config
        adapter = self.runner.adapter(self.sae_spec.model)
        tokens = self.cache.tokens()
        latents = list(part) if part is not None else select_latents(self.sae.cfg.d_sae, cfg)
        n = len(latents) if isinstance(latents, list) else latents  # an int: N sampled among the live latents
        passes = planned_passes(n, cfg, counting=isinstance(latents, int))
        label = f"latent records {self.sae_spec.name} ({n} latents)"
        with self.progress.bar(label, total=self.cache.n_tokens * passes, unit="tok") as bar, torch.no_grad():
            records = build_records(self.sae, self.cache.batches, tokens, adapter.special_mask(tokens),
                                    adapter.token_strings, latents, cfg, progress=bar.update)
        path.parent.mkdir(parents=True, exist_ok=True)
        records.save(path)
        return records

    # -- the stage ------------------------------------------------------------------------------
    def run(self, cells: list["Cell"], *, latents: Collection[int] | None = None, compute: bool = True,
            records=None) -> None:
        """Compute the pending ``cells`` (explain and interp cells of this SAE) in one event loop.

        An executor splits this in two (saebench.ray_executor): workers compute shares of the latents
        (``latents``: only those, and no cell rows), then the driver writes the cells from what is
        stored (``compute=False``: no LLM call; a latent without a result counts as failed).
        ``records``: this SAE's RecordSet when the caller has it loaded already."""
        self.share = None if latents is None else set(latents)
        self.compute = compute
        rs = records if records is not None else self.records()
        asyncio.run(self._run(rs, {c.key for c in cells}))

    async def _run(self, rs, pending: set[CellKey]) -> None:
        everything = [c for c in self.runner.all_cells if c.sae.name == self.sae_spec.name and c.stage in ("explain", "interp")]
        records = rs.records if self.share is None else [r for r in rs.records if r.latent in self.share]
        for explain_cell in (c for c in everything if c.stage == "explain"):
            scorers = [c for c in everything if c.stage == "interp" and c.explainer == explain_cell.explainer and c.key in pending]
            if explain_cell.key not in pending and not scorers:
                continue
            start = time.perf_counter()
            with self.progress.bar(f"explain[{explain_cell.explainer}] {self.sae_spec.name}", len(records), "latent") as bar:
                done = self.store.latent_results(explain_cell.key, explain_cell.config_hash)
                if self.compute:
                    explanations, failed = await explain_all(explain_cell.scorer, records, done,
                                                             self._store_one(explain_cell), lambda: bar.update(1))
                else:
                    explanations = {latent: Explanation(**result) for latent, result in done.items()}
                    failed = self._unfinished(explain_cell, [r.latent for r in records if r.latent not in done])
            if explain_cell.key in pending and self.share is None:
                metrics = explain_metrics(rs, explanations, failed)
                details = {"skipped": {str(k): v for k, v in rs.skipped.items()}, "failed": {str(k): v for k, v in failed.items()},
                           "records": self.record_files or str(self.records_path().absolute())}  # the report's examples
                self._finish(explain_cell, metrics, details, len(failed), time.perf_counter() - start)
            # The scorers of one explainer run together, so their LLM calls share the clients' concurrency.
            await asyncio.gather(*(self._score_cell(cell, records, explanations) for cell in scorers))

    async def _score_cell(self, cell: "Cell", records, explanations) -> None:
        start = time.perf_counter()
        r = self.runner
        done = self.store.latent_results(cell.key, cell.config_hash)
        if self.compute:
            ctx = InterpContext(sae=self.sae, hookpoint=cell.key.hookpoint, llm=cell.llm, tokens=self.cache.tokens(),
                                adapter=r.adapter(cell.key.model) if getattr(cell.scorer, "needs_model", False) else None,
                                seed=r.m.seed)
            with self.progress.bar(f"{cell.key.scorer} {self.sae_spec.name}", len(records), "latent") as bar:
                scores, failed = await score_all(cell.scorer, records, explanations, ctx, done, self._store_one(cell),
                                                 lambda: bar.update(1))
        else:
            scores = {latent: LatentScore(**result) for latent, result in done.items()}
            failed = self._unfinished(cell, [rec.latent for rec in records if rec.latent not in done
                                             and rec.latent in explanations and explanations[rec.latent].text is not None])
        if self.share is not None:
            return
        metrics = score_metrics(cell.scorer, scores, explanations, failed)
        # a latent without an explanation (its explainer's LLM gave up) is unfinished here too
        incomplete = len(failed) + sum(1 for rec in records if rec.latent not in explanations)
        metrics["failed_latents"] = float(incomplete)
        self._finish(cell, metrics, {"failed": {str(k): v for k, v in failed.items()}}, incomplete, time.perf_counter() - start)

    def _unfinished(self, cell: "Cell", latents: list[int]) -> dict[int, str]:
        """Latents with no stored result, with the error their worker stored (if any)."""
        errors = self.store.latent_errors(cell.key, cell.config_hash)
        return {latent: errors.get(latent, "no result was computed") for latent in latents}

    def _store_one(self, cell: "Cell") -> Store1:
        def store_one(latent: int, result: dict[str, Any] | None, error: str | None) -> None:
            self.store.write_latent(cell.key, latent, config_hash=cell.config_hash, result=result, error=error)
        return store_one

    def _finish(self, cell: "Cell", metrics, details, n_failed: int, seconds: float) -> None:
        self.store.write_cell(cell.key, config_hash=cell.config_hash, config=cell.config, run_id=self.run_id,
                              seconds=seconds, metrics=metrics, details=details)
        self.runner.report.done += 1
        self.runner.report.failed_latents += n_failed
        if n_failed:
            first = next(iter(details["failed"].items()), None)
            why = f" (latent {first[0]}: {first[1]})" if first else ""
            self.progress.note(f"{cell.key.sae} × {cell.key.scorer}: {n_failed} latent(s) unfinished{why}; "
                               "re-run to retry them")
        self.bar.update(1)


def explain_latents(runner: "Runner", store: ResultsStore, sae_spec, sae, cache: ActivationCache,
                    latents: Sequence[int]) -> dict[int, str]:
    """Explanations of ``latents`` from the run's rule explainer (for probe scorers that name rules):
    those its explain cell already stored, the rest explained now from records built over the
    evaluation set. A latent that cannot be explained (too few activating windows, the LLM gave up)
    is left out; the caller names it some other way."""
    from saebench.records import build_records

    name, explainer = runner.rule_explainer
    key = CellKey(sae_spec.model, sae_spec.hookpoint, sae_spec.name, f"explain[{name}]")
    cell = next((c for c in runner.all_cells if c.key == key), None)
    done = store.latent_results(key, cell.config_hash) if cell else {}
    texts = {j: done[j]["text"] for j in latents if j in done and done[j].get("text")}
    todo = [j for j in latents if j not in texts]
    if todo:
        adapter = runner.adapter(sae_spec.model)
        tokens = cache.tokens()
        with torch.no_grad():
            records = build_records(sae, cache.batches, tokens, adapter.special_mask(tokens), adapter.token_strings,
                                    todo, runner.record_config)

        async def explain_each():
            return await asyncio.gather(*(explainer.explain(r) for r in records.records), return_exceptions=True)

        for record, result in zip(records.records, asyncio.run(explain_each())):
            if isinstance(result, Explanation) and result.text:
                texts[record.latent] = result.text
    return texts


async def explain_all(explainer, records: Sequence[LatentRecord], done: dict[int, dict[str, Any]], store_one: Store1,
                      tick: Callable[[], None]) -> tuple[dict[int, Explanation], dict[int, str]]:
    """Explanations of every record: the stored ones reused, the rest computed concurrently and stored one by one."""
    out = {latent: Explanation(**result) for latent, result in done.items()}
    failed: dict[int, str] = {}

    async def one(record: LatentRecord) -> None:
        try:
            explanation = await explainer.explain(record)
        except Exception as exc:  # this latent fails; the others go on
            failed[record.latent] = _error(exc)
            store_one(record.latent, None, failed[record.latent])
        else:
            out[record.latent] = explanation
            store_one(record.latent, explanation.model_dump(), None)
        tick()

    todo = [r for r in records if r.latent not in out]
    for _ in range(len(records) - len(todo)):
        tick()
    await asyncio.gather(*(one(r) for r in todo))
    return out, failed


async def score_all(scorer, records: Sequence[LatentRecord], explanations: dict[int, Explanation], ctx: InterpContext,
                    done: dict[int, dict[str, Any]], store_one: Store1,
                    tick: Callable[[], None]) -> tuple[dict[int, LatentScore], dict[int, str]]:
    """Scores of every latent that has an explanation text, reusing stored ones; failures kept per latent."""
    out = {latent: LatentScore(**result) for latent, result in done.items()}
    failed: dict[int, str] = {}

    async def one(record: LatentRecord, explanation: Explanation) -> None:
        try:
            result = await scorer.score_latent(record, explanation, ctx)
        except Exception as exc:
            failed[record.latent] = _error(exc)
            store_one(record.latent, None, failed[record.latent])
        else:
            out[record.latent] = result
            store_one(record.latent, result.model_dump(), None)
        tick()

    jobs = []
    for r in records:
        e = explanations.get(r.latent)
        if e is None or e.text is None or r.latent in out:
            tick()
            continue
        jobs.append(one(r, e))
    await asyncio.gather(*jobs)
    return out, failed


def explain_metrics(rs, explanations: dict[int, Explanation], failed: dict[int, str]) -> dict[str, float | None]:
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
    out.update(usage(list(explanations.values())))
    return out


def score_metrics(scorer, scores: dict[int, LatentScore], explanations: dict[int, Explanation],
                  failed: dict[int, str]) -> dict[str, float | None]:
    out = dict(scorer.aggregate([scores[k] for k in sorted(scores)]))
    out["unexplained"] = float(sum(1 for e in explanations.values() if e.text is None))
    out["failed_latents"] = float(len(failed))
    return out
