"""The plan: a matrix resolved into typed cells and a stage graph, pure data, with the hashes that key every result.

A cell is (model, hook point, SAE, scorer) and its configuration hash covers everything that
determines its result (model, data, the SAE's identity, the scorer and its options and version,
the LLM it calls...): the store skips a cell whose finished row has the same hash, so an
interrupted run resumes where it stopped and a changed cell is recomputed alone. Stages are the
shared work cells need, each computed once and cached by a key of its inputs:

    activations(model) ─▶ train(sae) ─▶ records(sae) ─▶ latents(sae) ─▶ cells(sae)

Building the plan constructs no model and reads no checkpoint: only the matrix, the plugins'
options (:class:`Components`) and file fingerprints. Executors decide where its stages run.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import saebench
from saebench import plugin_manager
from saebench.interp.records import RecordConfig
from saebench.models import hub
from saebench.run.activations import cache_key
from saebench.run.components import Components
from saebench.run.matrix import Matrix, ModelSpec, SAESpec, adapter_options
from saebench.run.store import CellKey

CellKind = Literal["intrinsic", "probe", "explain", "interp", "compare"]
StageKind = Literal["activations", "train", "records", "latents", "cells"]
#: the stage kinds, in the order every executor runs them
STAGE_KINDS: tuple[StageKind, ...] = ("activations", "train", "records", "latents", "cells")
LATENT_KINDS = ("explain", "interp")
#: the cell kinds of the ``cells`` stage; a compare cell (SAE A against B) is one of A's
CELL_KINDS = ("intrinsic", "probe", "compare")
COMPARE_VERSION = "1"
#: the cell kinds a matrix's ``seeds`` repeat: what depends on a seed (latent sample, example and judge
#: sampling, probe splits); intrinsic cells are deterministic given the evaluation tokens
SEEDED_KINDS = ("probe", "explain", "interp")
_SEED_LABEL = re.compile(r"(.*)@s(-?\d+)")


def compare_label(other: str) -> str:
    """The scorer label of a compare cell against SAE ``other``: ``compare[other]``."""
    return f"compare[{other}]"


def compared_with(label: str) -> str | None:
    """The other SAE of a compare cell's label; None for any other cell."""
    return label[len("compare[") : -1] if label.startswith("compare[") and label.endswith("]") else None


def seed_label(label: str, seed: int) -> str:
    return f"{label}@s{seed}"


def split_seed(label: str) -> tuple[str, int | None]:
    """("detection", 1) for the label of a repeated cell, "detection@s1"; (label, None) otherwise."""
    m = _SEED_LABEL.fullmatch(label)
    return (m.group(1), int(m.group(2))) if m else (label, None)


def config_hash(obj: Any) -> str:
    """The short stable hash of a JSON-able configuration (cells, trained SAEs)."""
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def fingerprint(path: str) -> str:
    """Cheap identity of a model or checkpoint on disk (names, sizes, mtimes), or the string itself; for an
    ``hf://`` SAE its repository, subfolder and the commit the Hugging Face cache resolves its revision to."""
    if hub.is_hub_path(path):
        return hub.fingerprint(path)
    p = Path(path)
    try:
        if not p.exists():
            return path  # a hub id or an embedded:NAME
    except OSError:  # not a usable file name (too long...): the adapter reports it when loading
        return path
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())
    return config_hash([(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files])


def versions() -> dict[str, str]:
    """What a run records of the software that produced it."""
    import torch
    import transformers

    out = {
        "saebench": saebench.__version__,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "python": platform.python_version(),
    }
    for info in plugin_manager.get_registry().all():
        if info.source != plugin_manager.BUILT_IN:
            out[info.source] = info.version
    return out


@dataclass(frozen=True)
class SAEEntry:
    """One SAE of the matrix as the plan resolves it: where it comes from and where its inputs live."""

    index: int  # position in the matrix's ``saes``, for error locations
    spec: SAESpec
    identity: dict[str, Any]  # the cells' "sae": path, format and fingerprint; or train (or baseline) and train_hash
    eval_cache: Path
    record_config: RecordConfig
    seed: int
    train_hash: str | None = None
    folder: Path | None = None  # where a trained (or built baseline) SAE is saved
    train_cache: Path | None = None
    #: a repeat of another entry's seeded cells with another seed (NAME@sSEED): same SAE, never trained twice
    replica_of: str | None = None

    @property
    def name(self) -> str:
        """The entry's name in the plan (stage keys); ``NAME@sSEED`` for a repeat."""
        return self.spec.name

    @property
    def stored_as(self) -> str:
        """The SAE's name in the results (a repeat's cells are the same SAE's)."""
        return self.replica_of or self.spec.name


@dataclass(frozen=True)
class Cell:
    """One result the run computes: a scorer's (or, for ``explain``, an explainer's) on one SAE."""

    key: CellKey
    sae: str
    kind: CellKind
    plugin: str  # the registered name of its scorer, or of its explainer for an explain cell
    component: int  # index of its scorer in Components.scorers, or of its explainer in Components.explainers
    config: dict[str, Any]
    config_hash: str
    explainer: str | None = None  # explain and interp cells: the explainer whose explanations they hold or score
    llm: str | None = None  # the ``llms`` key of the client it calls
    other: str | None = None  # compare cells: the plan name of SAE B

    def row(self, run_id: int, seconds: float, **outcome: Any) -> dict[str, Any]:
        """What ``Results.write_cell`` stores for this cell: its hash and configuration, with ``metrics``
        and ``details``, or an ``error``."""
        return {"config_hash": self.config_hash, "config": self.config, "run_id": run_id, "seconds": seconds, **outcome}


@dataclass(frozen=True)
class Stage:
    """A unit of shared work: ``kind`` for one model or SAE (``key``), after the stages in ``after``."""

    kind: StageKind
    key: str
    after: tuple[tuple[str, str], ...] = ()


@dataclass
class Plan:
    matrix: Matrix
    source: str  # the matrix file, for error locations
    output: Path
    cache_dir: Path
    record_config: RecordConfig
    saes: dict[str, SAEEntry] = field(default_factory=dict)
    cells: list[Cell] = field(default_factory=list)
    stages: list[Stage] = field(default_factory=list)

    @property
    def models(self) -> dict[str, ModelSpec]:
        return {m.name: m for m in self.matrix.models}

    def cells_of(self, sae: str, kinds: tuple[str, ...] | None = None) -> list[Cell]:
        return [c for c in self.cells if c.sae == sae and (kinds is None or c.kind in kinds)]

    def cell(self, key: CellKey) -> Cell | None:
        return next((c for c in self.cells if c.key == key), None)

    def n_eval_contexts(self) -> int:
        return math.ceil(self.matrix.data.tokens / self.matrix.data.context_length)

    def model_desc(self, model: str) -> dict[str, Any]:
        spec = self.models[model]
        return {
            "adapter": spec.adapter,
            "path": spec.path,
            "options": adapter_options(self.matrix, spec),
            "fingerprint": fingerprint(spec.path),
        }

    def eval_cache(self, model: str, hookpoint: str) -> Path:
        data = self.matrix.data.model_dump()
        key = cache_key(
            part="eval", model=self.model_desc(model), hookpoint=hookpoint, data=data, **self._cache_dtype()
        )
        return self.cache_dir / f"{model}-{hookpoint}-eval-{key}"

    def _cache_dtype(self) -> dict[str, str]:
        """The shards' dtype where it is not float32 (so float32 caches keep the keys they always had)."""
        return {"dtype": self.matrix.cache_dtype} if self.matrix.cache_dtype != "float32" else {}

    def train_cache(self, model: str, hookpoint: str, tokens: int) -> Path:
        key = cache_key(
            part="train",
            model=self.model_desc(model),
            hookpoint=hookpoint,
            data=self.matrix.data.model_dump(),
            tokens=tokens,
            **self._cache_dtype(),
        )
        return self.cache_dir / f"{model}-{hookpoint}-train-{key}"

    def to_json(self) -> dict[str, Any]:
        """What the store keeps of a run's plan: every cell with its hash and every stage."""
        return {
            "cells": [
                {
                    "model": c.key.model,
                    "hookpoint": c.key.hookpoint,
                    "sae": c.key.sae,
                    "scorer": c.key.scorer,
                    "kind": c.kind,
                    "plugin": c.plugin,
                    "config_hash": c.config_hash,
                }
                for c in self.cells
            ],
            "stages": [{"kind": s.kind, "key": s.key, "after": [list(a) for a in s.after]} for s in self.stages],
            "saes": {
                n: {"model": e.spec.model, "hookpoint": e.spec.hookpoint, "identity": e.identity}
                | ({"hookpoint_out": e.spec.hookpoint_out} if e.spec.hookpoint_out else {})
                for n, e in self.saes.items()
            },
        }


def make_plan(matrix: Matrix, source: str, components: Components) -> Plan:
    """Every cell of the matrix with its configuration hash, and the stages they need."""
    output = Path(matrix.output)
    cache_dir = Path(matrix.cache_dir) if matrix.cache_dir else output / "cache"
    plan = Plan(matrix, source, output, cache_dir, components.record_config)
    data = matrix.data.model_dump()
    seeds = matrix.seeds or [matrix.seed]
    for index, spec in enumerate(matrix.saes):
        model = plan.model_desc(spec.model)
        eval_cache = plan.eval_cache(spec.model, spec.hookpoint)
        records = _seeded(components.record_config, matrix.seeds, seeds[0])
        if spec.path is not None:
            identity = {"path": spec.path, "format": spec.format, "fingerprint": fingerprint(spec.path)}
            entry = SAEEntry(index, spec, identity, eval_cache, records, seeds[0])
        elif spec.baseline is not None:  # built in the train stage (PCA from the evaluation cache)
            build_hash = config_hash(
                {"model": model, "hookpoint": spec.hookpoint, "data": data, "baseline": spec.baseline, "seed": seeds[0]}
                | plan._cache_dtype()
            )
            identity = {"baseline": spec.baseline, "train_hash": build_hash}
            folder = output / "saes" / spec.name
            entry = SAEEntry(index, spec, identity, eval_cache, records, seeds[0], build_hash, folder)
        else:
            train_hash = config_hash(
                {"model": model, "hookpoint": spec.hookpoint, "data": data, "train": spec.train, "seed": seeds[0]}
                | plan._cache_dtype()
            )
            entry = SAEEntry(
                index,
                spec,
                {"train": spec.train, "train_hash": train_hash},
                eval_cache,
                records,
                seeds[0],
                train_hash,
                output / "saes" / spec.name,
                plan.train_cache(spec.model, spec.hookpoint, int(spec.train["tokens"])),
            )
        plan.saes[spec.name] = entry
        plan.cells += _cells(plan, entry, model, components)
        for seed in seeds[1:]:
            name = seed_label(spec.name, seed)
            replica = dataclasses.replace(
                entry,
                spec=spec.model_copy(update={"name": name}),
                record_config=_seeded(components.record_config, matrix.seeds, seed),
                seed=seed,
                replica_of=spec.name,
            )
            plan.saes[name] = replica
            plan.cells += [c for c in _cells(plan, replica, model, components) if c.kind in SEEDED_KINDS]
    if matrix.compare is not None:
        plan.cells += _compare_cells(plan, components)
    plan.stages = _stages(plan)
    return plan


def _compare_cells(plan: Plan, components: Components) -> list[Cell]:
    """One cell per ordered pair (A, B) of the same model (and hook point, unless ``across_hookpoints``),
    A's cell; repeats of seeds are the same SAEs, so they are not paired."""
    spec = plan.matrix.compare
    assert spec is not None
    entries = [e for e in plan.saes.values() if e.replica_of is None]
    cells = []
    for a in entries:
        for b in entries:
            # a transcoder's decoder writes another space than an SAE's at the hook point it reads
            site_a, site_b = (a.spec.hookpoint, a.spec.hookpoint_out), (b.spec.hookpoint, b.spec.hookpoint_out)
            same_place = a.spec.model == b.spec.model and (spec.across_hookpoints or site_a == site_b)
            if a is b or not same_place:
                continue
            config = {"model": plan.model_desc(a.spec.model), "hookpoint": a.spec.hookpoint,
                      "data": plan.matrix.data.model_dump(), "sae": a.identity, "seed": a.seed,
                      "saebench": saebench.__version__, "compare": spec.model_dump(), "compare_version": COMPARE_VERSION,
                      "other": {"sae": b.identity, "hookpoint": b.spec.hookpoint}}  # fmt: skip
            if "explanations" in spec.metrics:
                config["rules"] = components.rule_config()
            key = CellKey(a.spec.model, a.spec.hookpoint, a.stored_as, compare_label(b.name))
            cells.append(Cell(key, a.name, "compare", "compare", -1, config, config_hash(config), other=b.name))
    return cells


def _seeded(config: RecordConfig, seeds: list[int] | None, seed: int) -> RecordConfig:
    """The records' configuration of one repeat: the latent sample and examples drawn with its seed."""
    return config.model_copy(update={"seed": seed}) if seeds else config


def _cells(plan: Plan, entry: SAEEntry, model: dict[str, Any], components: Components) -> list[Cell]:
    """The cells of one SAE: one per intrinsic or probe scorer, then per explainer its explain cell and one
    per interpretability scorer. Each configuration is what the hash covers, as runs have always hashed it."""
    registry = plugin_manager.get_registry()
    m, spec = plan.matrix, entry.spec
    base = {"model": model, "hookpoint": spec.hookpoint, "data": m.data.model_dump(), "sae": entry.identity,
            "seed": entry.seed, "saebench": saebench.__version__}  # fmt: skip
    if spec.hookpoint_out is not None:  # a transcoder's: an SAE's hash stays what it was
        base["hookpoint_out"] = spec.hookpoint_out
    base.update(plan._cache_dtype())  # bfloat16 activations change the numbers; float32 hashes stay as they were

    def cell(label: str, kind: CellKind, plugin: str, component: int, config: dict, **rest: Any) -> Cell:
        if m.seeds and kind in SEEDED_KINDS:
            label = seed_label(label, entry.seed)
        key = CellKey(spec.model, spec.hookpoint, entry.stored_as, label)
        return Cell(key, spec.name, kind, plugin, component, config, config_hash(config), **rest)

    def scorer_config(i: int) -> dict[str, Any]:
        name = m.scorers[i].name
        return {**base, "scorer": m.scorers[i].model_dump(exclude_none=True),
                "scorer_version": registry.info("scorer", name).version}  # fmt: skip

    cells, interp = [], []
    for i, (sspec, scorer) in enumerate(zip(m.scorers, components.scorers)):
        if scorer.family == "interp":
            interp.append(i)
            continue
        config = scorer_config(i)
        if scorer.uses_explanations:
            config["rules"] = components.rule_config()
        cells.append(cell(sspec.name, scorer.family, sspec.name, i, config))
    for e, (espec, explainer, llm) in enumerate(components.explainers if interp else ()):
        config = {**base, "interp": entry.record_config.model_dump(), "explainer": espec.model_dump(),
                  "explainer_version": registry.info("explainer", espec.name).version,
                  "llm": explainer.llm.identity if explainer.llm else None}  # fmt: skip
        explain = cell(f"explain[{espec.name}]", "explain", espec.name, e, config, explainer=espec.name, llm=llm)
        cells.append(explain)
        for i in interp:
            name, judge = m.scorers[i].name, components.judges[i]
            client = components.llms.get(judge) if judge else None
            config = {**scorer_config(i), "llm": client.identity if client else None,
                      "explanations": explain.config_hash}  # fmt: skip
            label = f"{name}[{espec.name}]" if len(components.explainers) > 1 else name
            cells.append(cell(label, "interp", name, i, config, explainer=espec.name, llm=judge))
    return cells


def _stages(plan: Plan) -> list[Stage]:
    """The stage graph in the order executors run it: every model's activations, every SAE's training,
    then per SAE its latent records, latents and cells."""
    stages = [Stage("activations", m.name) for m in plan.matrix.models]
    trained = [e for e in plan.saes.values() if e.folder and not e.replica_of]
    stages += [Stage("train", e.name, (("activations", e.spec.model),)) for e in trained]
    for e in plan.saes.values():
        before: tuple[tuple[str, str], ...] = (
            (("train", e.stored_as),) if e.folder else (("activations", e.spec.model),)
        )
        if plan.cells_of(e.name, LATENT_KINDS):
            stages.append(Stage("records", e.name, before))
            stages.append(Stage("latents", e.name, (("records", e.name),)))
            before = (("latents", e.name),)
        if plan.cells_of(e.name, CELL_KINDS):
            # a compare cell reads the other SAE: after it is trained or built
            for c in plan.cells_of(e.name, ("compare",)):
                other = plan.saes[str(c.other)]
                if other.folder:
                    before += (("train", other.name),)
            stages.append(Stage("cells", e.name, tuple(dict.fromkeys(before))))
    return stages
