"""Cells of several SAEs computed together: scorers whose SAEs share work (``Scorer.score_many``).

The downstream scorer's clean and zero-ablated passes are the same for every SAE of a model on the
same evaluation tokens, so its pending cells are grouped per model and scorer and handed over at
once; every other cell stays in its SAE's cells stage. A group holds the claims of all its SAEs
(runs sharing an output folder still never compute a cell twice), keeps its SAEs' weights within
``GROUP_BYTES`` at a time, and each cell is stored as if it had been scored alone: same hash, same
row. Should the group fail, each of its cells is scored alone, so one bad SAE fails only its cell.
"""

from __future__ import annotations

import time
from contextlib import closing
from functools import partial
from typing import TYPE_CHECKING, Any

import torch

from saebench.errors import SaebenchError
from saebench.interfaces import EvalInputs, Scorer
from saebench.run.latents import record_sae
from saebench.run.plan import Cell
from saebench.run.progress import NO_BAR, Bar
from saebench.run.recorder import Recorder, Results
from saebench.run.stages import Work, claims, eval_inputs, store_outcome
from saebench.sae import SAE

if TYPE_CHECKING:
    from saebench.run.context import RunContext
    from saebench.run.store import ResultsStore

#: the most SAE weight bytes (encoder + decoder, float32) one group loads at a time
GROUP_BYTES = 4 << 30


def shares_work(scorer: object) -> bool:
    return isinstance(scorer, Scorer) and type(scorer).score_many is not Scorer.score_many


def groups(ctx: RunContext, work: Work) -> list[list[Cell]]:
    """The pending cells of sharing scorers, by model, scorer and evaluation tokens: groups of two or more."""
    by_key: dict[tuple[str, str], list[Cell]] = {}
    for cell in work.pending:
        if cell.kind == "intrinsic" and shares_work(ctx.component(cell)):
            by_key.setdefault((cell.key.model, cell.key.scorer), []).append(cell)
    out = []
    for cells in by_key.values():
        by_tokens: list[tuple[torch.Tensor, list[Cell]]] = []
        for cell in cells:
            tokens = ctx.eval_cache(cell.sae).tokens()
            same = next((g for t, g in by_tokens if torch.equal(t, tokens)), None)
            if same is None:
                by_tokens.append((tokens, [cell]))
            else:
                same.append(cell)
        out += [g for _, g in by_tokens if len(g) > 1]
    return out


def run_groups(ctx: RunContext, work: Work, store: ResultsStore, out: Recorder, run_id: int, bar: Bar = NO_BAR) -> Work:
    """Compute every group of ``work``; returns the work left for the per-SAE stages."""
    done = set()
    for group in groups(ctx, work):
        names = [c.sae for c in group]
        with closing(claims(ctx, names, together=True)) as held_claims:
            for held in held_claims:
                mine = {c.key for c in work.claimed(store, held).pending}
                cells = [c for c in group if c.sae in held and c.key in mine]
                others = sum(c.sae in held for c in group) - len(cells)
                if others:
                    ctx.progress.note(f"{others} {group[0].key.scorer} cell(s) were computed by another run")
                    out.report.skipped += others
                    bar.update(others)
                _in_parts(ctx, out, run_id, cells, bar)
        done |= {c.key for c in group}
    return Work([c for c in work.pending if c.key not in done], work.untrained, work.stamps)


def _in_parts(ctx: RunContext, out: Results, run_id: int, cells: list[Cell], bar: Bar) -> None:
    """``score_group`` on consecutive parts of ``cells`` whose SAEs' weights fit in ``GROUP_BYTES``."""
    part: list[tuple[Cell, SAE]] = []
    used = 0
    for cell in cells:
        sae = ctx.load_sae(cell.sae)
        size = sum(p.numel() * p.element_size() for p in sae.parameters())
        if part and used + size > GROUP_BYTES:
            score_group(ctx, out, run_id, part, bar)
            part, used = [], 0
        part.append((cell, sae))
        used += size
    if part:
        score_group(ctx, out, run_id, part, bar)


def _alone(scorer: Scorer, sae: SAE, inputs: EvalInputs) -> tuple[dict, dict, Any]:
    result = scorer.score(sae, inputs)
    return result.metrics, result.details, result.units


def score_group(ctx: RunContext, out: Results, run_id: int, part: list[tuple[Cell, SAE]], bar: Bar = NO_BAR) -> None:
    """One scorer's cells of several SAEs, scored in one ``score_many`` call and stored per cell (each
    row's seconds: the call's time over its SAEs)."""
    cells, saes = [c for c, _ in part], [s for _, s in part]
    scorer = ctx.component(cells[0])
    bar.set_description(f"cells: {cells[0].key.scorer} × {len(cells)} SAEs")
    for cell, sae in part:
        record_sae(out, ctx, cell.sae, sae)
    inputs = [eval_inputs(ctx, out, cell, sae) for cell, sae in part]
    start = time.perf_counter()
    try:
        results = scorer.score_many(saes, inputs)
    except (KeyboardInterrupt, SaebenchError):
        raise
    except Exception:  # scored alone instead, so a fault of one SAE is stored with its cell only
        for (cell, sae), one in zip(part, inputs):
            store_outcome(out, run_id, cell, partial(_alone, scorer, sae, one))
        return
    seconds = (time.perf_counter() - start) / len(cells)
    for cell, result in zip(cells, results, strict=True):
        row = cell.row(run_id, seconds, metrics=result.metrics, details=result.details, units=result.units)
        out.write_cell(cell.key, **row)
