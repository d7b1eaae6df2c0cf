"""The stages: functions of a RunContext that compute shared work and cells, writing only through ``Results``.

``Work`` says what a run still has to do (its pending cells and untrained SAEs); ``check`` stops
bad input before any work; then, per stage of the plan that has work, ``activations``, ``train``,
the records and latents stages (saebench.run.latents) and ``cells``. Every executor calls these
same functions; it decides only where they run and which ``Results`` they write to.
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable, Collection, Iterator
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

from torch import Tensor

from saebench.errors import ConfigError, SaebenchError, one_line
from saebench.files import write_atomic
from saebench.interfaces import EvalInputs
from saebench.loading import save_sae
from saebench.run.activations import ActivationCache, build_caches, cache_key
from saebench.run.compare import compare_cell
from saebench.run.context import TRAINED_MARKER, RunContext, memory_bytes
from saebench.run.latents import explain_latents, record_sae
from saebench.run.plan import CELL_KINDS, LATENT_KINDS, Cell, SAEEntry, Stage
from saebench.run.progress import NO_BAR, Bar
from saebench.run.recorder import Results
from saebench.run.store import CellKey, ResultsStore
from saebench.run.targets import check_transcoders, target_cache
from saebench.sae import SAE
from saebench.training import TrainConfig, train_sae
from saebench.training.baselines import BaselineConfig, build_baseline


@dataclass
class Work:
    """What a run still has to do: the cells without a finished result of their hash, the SAEs to train."""

    pending: list[Cell]
    untrained: list[str]
    #: each pending cell's stored (finished, run_id) when the run looked, None when it had no row
    stamps: dict[CellKey, tuple[float, int] | None] = field(default_factory=dict)

    @classmethod
    def find(cls, ctx: RunContext, store: ResultsStore) -> Work:
        pending = [
            c for c in ctx.plan.cells if store.finished_hash(c.key) != c.config_hash or store.has_failed_latents(c.key)
        ]
        stamps = store.cell_stamps()
        return cls(pending, [e.name for e in ctx.untrained()], {c.key: stamps.get(c.key) for c in pending})

    def claimed(self, store: ResultsStore, saes: Collection[str]) -> Work:
        """The work left on ``saes`` once this run holds their claims: a pending cell that another run
        wrote since this one looked (done, failed or with failed latents) is that run's, not redone."""
        now = store.cell_stamps()
        pending = [c for c in self.pending if c.sae in saes and now.get(c.key) == self.stamps[c.key]]
        return Work(pending, self.untrained, self.stamps)

    def cells(self, sae: str, kinds: tuple[str, ...]) -> list[Cell]:
        return [c for c in self.pending if c.sae == sae and c.kind in kinds]

    def has(self, ctx: RunContext, stage: Stage) -> bool:
        if stage.kind == "activations":
            return any(c.key.model == stage.key for c in self.pending) or any(
                ctx.plan.saes[s].spec.model == stage.key for s in self.untrained
            )
        if stage.kind == "train":
            return stage.key in self.untrained
        if stage.kind in ("records", "latents"):
            return bool(self.cells(stage.key, LATENT_KINDS))
        return bool(self.cells(stage.key, CELL_KINDS))

    def stages(self, ctx: RunContext) -> list[Stage]:
        """The plan's stages that have work, in the plan's order."""
        return [s for s in ctx.plan.stages if self.has(ctx, s)]


def claims(ctx: RunContext, saes: list[str], *, together: bool) -> Iterator[list[str]]:
    """Claims on the per-SAE stages of ``saes`` (records, latents, cells), so runs sharing an output
    folder split the SAEs between them and never compute a cell twice. Yields the SAEs claimed (one
    at a time, or every one free at once when ``together``), released when the caller asks for the
    next; when every SAE left is claimed by other runs, waits for the first of them (whose holder may
    have died: then this run takes it over). The caller reads what is still pending under the claim."""
    left = list(saes)
    while left:
        held = []
        for name in left:
            lock = ctx.lock(ctx.plan.output / f"cells-{name}", f"the cells of SAE {name}")
            if lock.try_acquire():
                held.append((name, lock))
                if not together:
                    break
        if not held:
            lock = ctx.lock(ctx.plan.output / f"cells-{left[0]}", f"the cells of SAE {left[0]}")
            lock.acquire()
            held.append((left[0], lock))
        try:
            yield [name for name, _ in held]
        finally:
            for _, lock in held:
                lock.release()
        left = [n for n in left if n not in {name for name, _ in held}]


def open_run(ctx: RunContext, store: ResultsStore, versions: dict[str, str]) -> int:
    """Record the run (matrix, versions, plan and what each scorer declares) before its first cell, and
    point the LLM clients at the shared response cache."""
    run_id = store.start_run(ctx.plan.matrix.model_dump(mode="json"), versions, ctx.seed)
    scorers = {}
    for cell in ctx.plan.cells:
        component = ctx.component(cell)
        headline = [dataclasses.asdict(m) for m in component.headline] if cell.kind != "explain" else []
        scorers[cell.key.scorer] = {"plugin": cell.plugin, "family": cell.kind, "headline": headline}
    store.write_plan(run_id, ctx.plan.to_json(), scorers)
    for client in ctx.components.llms.values():
        client.use_cache(ctx.plan.cache_dir / "llm-responses.sqlite")
    return run_id


def check(ctx: RunContext, work: Work) -> None:
    """Load each pending checkpoint once (a corrupt file stops the run here) and check its d_in against
    its hook point's width; refuse SAEs to train that cannot fit in memory and latents that do not exist."""
    plan = ctx.plan
    for name in dict.fromkeys(c.sae for c in work.pending if plan.saes[c.sae].spec.path is not None):
        entry = plan.saes[name]
        sae = ctx.load_sae(name, keep=True)
        width = ctx.hook_width(entry)
        if sae.cfg.d_in != width:
            raise ConfigError(
                f"SAE {name!r} has d_in {sae.cfg.d_in} but {entry.spec.model} {entry.spec.hookpoint} has width {width}",
                ctx.where(f"saes[{entry.index}]"),
            )
    for name in work.untrained:
        # weights, gradients and two Adam moments of W_enc and W_dec: refuse what cannot fit, before any work
        entry = plan.saes[name]
        if entry.spec.baseline is not None:
            _check_baseline(ctx, entry)
            continue
        d_sae = int(entry.spec.train.get("d_sae", 0))
        width = ctx.hook_width(entry)
        need, have = 2 * width * d_sae * 4 * 4, memory_bytes()
        if have and need > have:
            raise ConfigError(
                f"training a {width}x{d_sae} SAE needs about {need / 2**30:,.0f} GiB for its weights and "
                f"optimiser state; this machine has {have / 2**30:,.0f} GiB",
                ctx.where(f"saes[{entry.index}].train.d_sae"),
            )
    check_transcoders(ctx, work.pending)
    explicit = plan.record_config.latents if isinstance(plan.record_config.latents, list) else []
    for name in dict.fromkeys(c.sae for c in work.pending if c.kind in LATENT_KINDS):
        d_sae = ctx.d_sae(name)
        bad = [i for i in explicit if not 0 <= i < d_sae]
        if bad:
            raise ConfigError(
                f"latent {bad[0]} does not exist in SAE {name!r} (d_sae {d_sae})", ctx.where("interp.latents")
            )


def _check_baseline(ctx: RunContext, entry: SAEEntry) -> None:
    where = ctx.where(f"saes[{entry.index}].baseline")
    BaselineConfig.from_mapping(entry.spec.baseline, where, entry.spec.hookpoint).check_width(
        ctx.hook_width(entry), where
    )


def activations(ctx: RunContext, model: str, work: Work) -> None:
    """Fill the model's missing eval and train caches: one forward pass per token set fills every hook point."""
    plan = ctx.plan
    pending = [c for c in work.pending if c.key.model == model]
    hooks = sorted(
        {c.key.hookpoint for c in pending}
        | {out for c in pending if (out := plan.saes[c.sae].spec.hookpoint_out)}  # a transcoder's targets
        | {plan.saes[n].spec.hookpoint for n in work.untrained if _fits_on_eval(plan.saes[n], model)}
    )
    missing = {h: plan.eval_cache(model, h) for h in hooks if not ActivationCache.exists(plan.eval_cache(model, h))}
    by_tokens: dict[int, dict[str, Path]] = {}  # each SAE trains on its own token count
    for name in work.untrained:
        entry = plan.saes[name]
        if entry.spec.model == model and entry.train_cache and not ActivationCache.exists(entry.train_cache):
            by_tokens.setdefault(int(entry.spec.train["tokens"]), {})[entry.spec.hookpoint] = entry.train_cache
    if not missing and not by_tokens:
        return
    n_eval, T = plan.n_eval_contexts(), plan.matrix.data.context_length
    ctx.model_contexts(model, n_eval + math.ceil(max(by_tokens, default=0) / T))  # the longest stream, tokenised once
    if missing:
        _fill(ctx, model, lambda: ctx.model_contexts(model, n_eval), missing, "eval", n_eval * T)
    for tokens, folders in by_tokens.items():
        contexts = lambda t=tokens: ctx.model_contexts(model, n_eval + math.ceil(t / T))[n_eval:]  # noqa: E731
        _fill(ctx, model, contexts, folders, "train", tokens)


def _fits_on_eval(entry: SAEEntry, model: str) -> bool:
    """A baseline of ``model`` fit on its hook point's evaluation activations (PCA)."""
    return entry.spec.model == model and (entry.spec.baseline or {}).get("kind") == "pca"


def _fill(
    ctx: RunContext, model: str, contexts: Callable[[], Tensor], folders: dict[str, Path], part: str, tokens: int
) -> None:
    """Build the caches in ``folders`` unless another run has: one lock per model and token set, so a
    run sharing the cache folder with other hook points waits, then builds only what is still missing."""
    key = cache_key(model=ctx.plan.model_desc(model), data=ctx.plan.matrix.data.model_dump(), part=part, tokens=tokens)
    with ctx.lock(ctx.plan.cache_dir / f"{model}-{part}-{key}", f"activations of {model} ({part}, {tokens:,} tokens)"):
        folders = {h: f for h, f in folders.items() if not ActivationCache.exists(f)}
        if folders:
            _build(ctx, model, contexts(), folders, part)


def _build(ctx: RunContext, model: str, contexts: Tensor, folders: dict[str, Path], part: str) -> None:
    with ctx.progress.bar(
        f"activations {model} {part} [{', '.join(folders)}]", total=int(contexts.numel()), unit="tok"
    ) as bar:
        build_caches(
            ctx.adapter(model),
            contexts,
            folders,
            describe={"model": model, "part": part},
            progress=bar.update,
            dtype=ctx.plan.matrix.cache_dtype,
        )


def train(ctx: RunContext, name: str, *, wait: bool = True) -> bool:
    """Train one SAE on its training cache and save it (native format) with a marker of its training hash,
    unless another run has. False, doing nothing, when another run is training it and not ``wait``."""
    entry = ctx.plan.saes[name]
    assert entry.folder is not None
    lock = ctx.lock(entry.folder, f"the training of {name}")
    if wait:
        lock.acquire()
    elif not lock.try_acquire():
        return False
    try:
        if ctx.trained(entry):  # trained (or built) by another run while this one waited
            pass
        elif entry.spec.baseline is not None:
            _build_baseline(ctx, name)
        else:
            _train(ctx, name)
    finally:
        lock.release()
    return True


def _train(ctx: RunContext, name: str) -> None:
    entry = ctx.plan.saes[name]
    spec = entry.spec
    assert entry.folder is not None and entry.train_cache is not None
    cfg = TrainConfig.from_mapping({"seed": ctx.seed, **spec.train}, ctx.where("saes"))
    cache = ActivationCache(entry.train_cache)
    start = time.perf_counter()
    with ctx.progress.bar(f"train {name} ({cfg.arch}, d_sae {cfg.d_sae})", total=None, unit="step") as bar:
        trained, stats = train_sae(
            cfg,
            lambda: cache.batches(cfg.batch_size),
            cache.d,
            hook_name=spec.hookpoint,
            model_name=ctx.plan.models[spec.model].path,
            progress=bar.training,
        )
    # the run's stats, keeping the trainer's record of the config (Matryoshka's prefixes are read from it)
    trained.cfg.metadata["training"] = {
        **trained.cfg.metadata.get("training", {}),
        **json.loads(stats.model_dump_json()),
    }
    _save(entry, trained, start)


def _build_baseline(ctx: RunContext, name: str) -> None:
    """Build a ``baseline:`` SAE (PCA reads the evaluation cache) and save it like a trained one."""
    entry = ctx.plan.saes[name]
    spec = entry.spec
    assert entry.folder is not None
    cfg = BaselineConfig.from_mapping(spec.baseline, ctx.where(f"saes[{entry.index}].baseline"), spec.hookpoint)
    start = time.perf_counter()
    with ctx.progress.status(f"build baseline {name} ({cfg.kind})"):
        sae = build_baseline(
            cfg,
            ctx.hook_width(entry),
            lambda: ctx.eval_cache(name).batches(4096),
            ctx.seed,
            hook_name=spec.hookpoint,
            model_name=ctx.plan.models[spec.model].path,
        )
    _save(entry, sae, start)


def _save(entry: SAEEntry, sae: SAE, start: float) -> None:
    assert entry.folder is not None
    (entry.folder / TRAINED_MARKER).unlink(missing_ok=True)
    save_sae(sae, entry.folder)
    marker = {"hash": entry.train_hash, "seconds": time.perf_counter() - start}
    write_atomic(entry.folder / TRAINED_MARKER, json.dumps(marker))


def cells(ctx: RunContext, out: Results, run_id: int, name: str, cells: list[Cell], bar: Bar = NO_BAR) -> None:
    """The intrinsic, probe and compare cells of one SAE (after its latents stage, whose explanations rules reuse).

    A cell that raises is stored with its error and the others still run; bad input (a SaebenchError,
    a probe task's file, say) stops the run with exit 2, after what is stored."""
    sae = ctx.sae(name)
    record_sae(out, ctx, name, sae)
    for cell in cells:
        bar.set_description(f"cells: {cell.key.sae} × {cell.key.scorer}")
        compute = compare_cell if cell.kind == "compare" else _score
        store_outcome(out, run_id, cell, partial(compute, ctx, out, cell, sae))


def _score(ctx: RunContext, out: Results, cell: Cell, sae: SAE) -> tuple[dict, dict, Any]:
    result = ctx.component(cell).score(sae, eval_inputs(ctx, out, cell, sae))
    return result.metrics, result.details, result.units


def store_outcome(out: Results, run_id: int, cell: Cell, compute: Callable[[], tuple[dict, dict, Any]]) -> None:
    """Store ``compute()``'s (metrics, details, units) for ``cell``, or its error: a cell that raises is
    stored with its error and the others still run; bad input (a SaebenchError) stops the run."""
    start = time.perf_counter()
    try:
        metrics, details, units = compute()
    except (KeyboardInterrupt, SaebenchError):
        raise
    except Exception as exc:  # one cell's failure is recorded; the others still run
        out.write_cell(cell.key, **cell.row(run_id, time.perf_counter() - start, error=one_line(exc)))
    else:
        row = cell.row(run_id, time.perf_counter() - start, metrics=metrics, details=details, units=units)
        out.write_cell(cell.key, **row)


def eval_inputs(ctx: RunContext, out: Results, cell: Cell, sae: SAE) -> EvalInputs:
    """What a scorer's ``score`` gets for one cell."""
    entry = ctx.plan.saes[cell.sae]
    scorer = ctx.component(cell)
    cache, targets = ctx.eval_cache(cell.sae), target_cache(ctx, cell.sae)
    return EvalInputs(
        hookpoint=cell.key.hookpoint,
        hookpoint_out=entry.spec.hookpoint_out,
        targets=targets.batches if targets is not None else None,
        activations=cache.batches,
        tokens=ctx.last("tokens", cache.folder, cache.tokens),
        seed=entry.seed,
        adapter=ctx.adapter(entry.spec.model) if scorer.needs_model else None,
        probe_data=partial(ctx.probe_data, entry.spec.model, entry.spec.hookpoint, seed=entry.seed)
        if cell.kind == "probe"
        else None,
        explain=partial(explain_latents, ctx, out, cell.sae, sae, cache) if scorer.uses_explanations else None,
        token_contexts=ctx.token_contexts(cell.sae),
    )
