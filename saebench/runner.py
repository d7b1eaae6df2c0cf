"""``saebench run``: plan the matrix, compute shared stages once, score each cell, store as it goes.

Stages, each computed once and cached by a key of its inputs:
  contexts → activations (one forward pass per model fills every hook point it needs; an eval
  set and, after it, a disjoint training set) → trained SAEs → cells.
A cell is (model, hook point, SAE, scorer); it is skipped when the store holds a finished row
with the same configuration hash, so an interrupted run resumes where it stopped and a changed
cell is recomputed alone. Everything the user can get wrong is checked before any work starts.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import platform
import sys
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch

import saebench
from saebench import plugin_manager
from saebench.activations import ActivationCache, build_caches, cache_key
from saebench.errors import ConfigError, SaebenchError
from saebench.interfaces import EvalInputs, ModelAdapter
from saebench.loading import load_sae, save_sae
from saebench.matrix import Matrix, ModelSpec, SAESpec, load_matrix
from saebench.progress import Progress
from saebench.store import CellKey, ResultsStore

TRAINED_MARKER = "trained.json"


@dataclass
class Cell:
    key: CellKey
    sae: SAESpec
    scorer_name: str
    scorer: Any  # a Scorer, or the Explainer of an "explain" cell
    config: dict[str, Any]
    config_hash: str
    stage: str = "intrinsic"  # "intrinsic" | "probe" (score()), "explain", "interp" (per latent)
    explainer: str | None = None  # the explainer whose explanations an interp cell scores
    llm: Any = None  # the LLM client of an explain or interp cell


@dataclass
class RunReport:
    done: int = 0
    skipped: int = 0
    failed: list[tuple[CellKey, str]] = field(default_factory=list)
    failed_latents: int = 0
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return 1 if self.failed or self.failed_latents else 0


def _hash(obj: Any) -> str:
    return hashlib.sha256(json.dumps(obj, sort_keys=True, default=str).encode()).hexdigest()[:20]


def fingerprint(path: str) -> str:
    """Cheap identity of a model or checkpoint on disk (names, sizes, mtimes), or the string itself."""
    p = Path(path)
    try:
        if not p.exists():
            return path  # a hub id or an embedded:NAME
    except OSError:  # not a usable file name (too long...): the adapter reports it when loading
        return path
    files = [p] if p.is_file() else sorted(f for f in p.iterdir() if f.is_file())
    return _hash([(f.name, f.stat().st_size, int(f.stat().st_mtime)) for f in files])


def versions() -> dict[str, str]:
    import transformers

    out = {"saebench": saebench.__version__, "torch": torch.__version__, "transformers": transformers.__version__,
           "python": platform.python_version()}
    for info in plugin_manager.get_registry().entries.values():
        if info.source != "built-in":
            out[info.source] = info.version
    return out


class Runner:
    def __init__(self, matrix: Matrix, *, source: str = "matrix", progress: Progress | None = None):
        self.m = matrix
        self.source = source  # the matrix file, for error locations
        self.output = Path(matrix.output)
        self.cache_dir = Path(matrix.cache_dir) if matrix.cache_dir else self.output / "cache"
        self.progress = progress or Progress()
        self.models = {mod.name: mod for mod in matrix.models}
        self.adapters: dict[str, ModelAdapter] = {}
        self.contexts: dict[str, torch.Tensor] = {}
        self.loaded: dict[str, Any] = {}  # checkpoints loaded by check_dimensions, handed to their cells
        self.report = RunReport()
        self.probe_memo: dict[Path, Any] = {}

    # -- planning -----------------------------------------------------------------------------
    def n_eval_contexts(self) -> int:
        return math.ceil(self.m.data.tokens / self.m.data.context_length)

    def data_desc(self) -> dict[str, Any]:
        return self.m.data.model_dump()

    def model_desc(self, spec: ModelSpec) -> dict[str, Any]:
        return {"adapter": spec.adapter, "path": spec.path, "options": spec.options, "fingerprint": fingerprint(spec.path)}

    def eval_cache_folder(self, spec: ModelSpec, hookpoint: str) -> Path:
        key = cache_key(part="eval", model=self.model_desc(spec), hookpoint=hookpoint, data=self.data_desc())
        return self.cache_dir / f"{spec.name}-{hookpoint}-eval-{key}"

    def train_tokens(self, sae: SAESpec) -> int:
        return int(sae.train["tokens"])

    def train_cache_folder(self, spec: ModelSpec, hookpoint: str, tokens: int) -> Path:
        key = cache_key(part="train", model=self.model_desc(spec), hookpoint=hookpoint, data=self.data_desc(), tokens=tokens)
        return self.cache_dir / f"{spec.name}-{hookpoint}-train-{key}"

    def train_hash(self, sae: SAESpec) -> str:
        return _hash({"model": self.model_desc(self.models[sae.model]), "hookpoint": sae.hookpoint,
                      "data": self.data_desc(), "train": sae.train, "seed": self.m.seed})

    def trained_folder(self, sae: SAESpec) -> Path:
        return self.output / "saes" / sae.name

    def sae_identity(self, sae: SAESpec) -> dict[str, Any]:
        if sae.path is not None:
            return {"path": sae.path, "format": sae.format, "fingerprint": fingerprint(sae.path)}
        return {"train": sae.train, "train_hash": self.train_hash(sae)}

    def _construct(self, kind: str, name: str, options: dict[str, Any], where: str) -> Any:
        cls = plugin_manager.get(kind, name)
        try:
            return cls(**options)
        except SaebenchError as exc:
            raise ConfigError(exc.problem, f"{self.source}: {where}") from None
        except TypeError as exc:
            raise ConfigError(str(exc), f"{self.source}: {where}") from None

    def plan(self) -> list[Cell]:
        """Every cell of the matrix with its configuration hash; plugins and LLM clients are built here,
        so a bad option or a missing API key stops the run before any work."""
        from saebench.matrix import effective_explainers, resolve_llm
        from saebench.records import RecordConfig

        registry = plugin_manager.get_registry()
        version = lambda kind, name: registry.entries[(kind, name)].version  # noqa: E731
        self.llms = {key: self._construct("llm_client", spec.client, spec.options, f"llms.{key}")
                     for key, spec in self.m.llms.items()}
        scorers = [(i, spec, self._construct("scorer", spec.name, spec.options, f"scorers[{i}].options"))
                   for i, spec in enumerate(self.m.scorers)]
        interp = [(i, spec, s) for i, spec, s in scorers if s.family == "interp"]
        explainers = []
        for i, spec in enumerate(effective_explainers(self.m)):
            explainer = self._construct("explainer", spec.name, spec.options, f"explainers[{i}].options")
            llm = resolve_llm(self.m, "explainer", spec.llm, f"{self.source}: explainers[{i}]") if explainer.needs_llm else None
            explainer.llm = self.llms.get(llm) if llm else None
            explainers.append((spec, explainer, llm))
        self.record_config = RecordConfig(**self.m.interp)
        # probe scorers that name rules use the first explainer, else the LLM-free top-tokens one
        first = explainers[0] if explainers else None
        self.rule_explainer = ((first[0].name, first[1]) if first else
                               ("top-tokens", self._construct("explainer", "top-tokens", {}, "explainers")))
        rule_config = {"explainer": first[0].model_dump() if first else {"name": "top-tokens"},
                       "llm": first[1].llm.identity if first and first[1].llm else None,
                       "interp": self.record_config.model_dump()}
        cells = []
        for sae in self.m.saes:
            base = {"model": self.model_desc(self.models[sae.model]), "hookpoint": sae.hookpoint, "data": self.data_desc(),
                    "sae": self.sae_identity(sae), "seed": self.m.seed, "saebench": saebench.__version__}
            for i, spec, scorer in scorers:
                if scorer.family == "interp":
                    continue
                config = {**base, "scorer": spec.model_dump(exclude_none=True), "scorer_version": version("scorer", spec.name)}
                if getattr(scorer, "uses_explanations", False):
                    config["rules"] = rule_config
                key = CellKey(sae.model, sae.hookpoint, sae.name, spec.name)
                cells.append(Cell(key, sae, spec.name, scorer, config, _hash(config), stage=scorer.family))
            if not interp:
                continue
            for espec, explainer, llm in explainers:
                econfig = {**base, "interp": self.record_config.model_dump(), "explainer": espec.model_dump(),
                           "explainer_version": version("explainer", espec.name),
                           "llm": explainer.llm.identity if explainer.llm else None}
                ekey = CellKey(sae.model, sae.hookpoint, sae.name, f"explain[{espec.name}]")
                ecell = Cell(ekey, sae, espec.name, explainer, econfig, _hash(econfig), stage="explain",
                             explainer=espec.name, llm=explainer.llm)
                cells.append(ecell)
                for i, spec, scorer in interp:
                    judge = resolve_llm(self.m, "scorer", spec.llm, f"{self.source}: scorers[{i}]") if scorer.needs_llm else None
                    client = self.llms.get(judge) if judge else None
                    check = getattr(scorer, "check_llm", None)
                    if client is not None and check is not None:
                        try:
                            check(client)
                        except SaebenchError as exc:
                            raise ConfigError(exc.problem, f"{self.source}: scorers[{i}].llm") from None
                    label = f"{spec.name}[{espec.name}]" if len(explainers) > 1 else spec.name
                    config = {**base, "scorer": spec.model_dump(exclude_none=True), "scorer_version": version("scorer", spec.name),
                              "llm": client.identity if client else None, "explanations": ecell.config_hash}
                    cells.append(Cell(CellKey(sae.model, sae.hookpoint, sae.name, label), sae, spec.name, scorer, config,
                                      _hash(config), stage="interp", explainer=espec.name, llm=client))
        return cells

    # -- stages ---------------------------------------------------------------------------------
    def adapter(self, name: str) -> ModelAdapter:
        if name not in self.adapters:
            spec = self.models[name]
            cls = plugin_manager.get("model_adapter", spec.adapter)
            where = f"{self.source}: models[{list(self.models).index(name)}]"
            with self.progress.status(f"loading model {name} ({spec.path})"):
                try:
                    self.adapters[name] = cls(spec.path, **spec.options)
                except SaebenchError as exc:  # the adapter names its option or path; add the matrix key
                    raise exc.inside(where) from None
                except TypeError as exc:  # an adapter without its own check of unknown options
                    raise ConfigError(str(exc), f"{where}.options") from None
            missing = [h for h in spec.hookpoints if h not in self.adapters[name].hookpoints()]
            if missing:
                raise ConfigError(f"model {name!r} has no hook point {missing[0]!r}", f"{where}.hookpoints")
        return self.adapters[name]

    def model_contexts(self, name: str, n_contexts: int) -> torch.Tensor:
        """The first ``n_contexts`` contexts of the data stream for this model's tokenizer."""
        have = self.contexts.get(name)
        if have is None or have.shape[0] < n_contexts:
            from saebench.data import make_contexts

            adapter = self.adapter(name)
            T = self.m.data.context_length
            try:  # the data source's options and texts: errors name their key (data.paths...) in the matrix file
                source = plugin_manager.get("data_source", self.m.data.source)(**self.m.data.options)
                with self.progress.status(f"tokenising {n_contexts * T:,} tokens for {name}"):
                    self.contexts[name] = make_contexts(adapter, source, T, n_contexts * T)
            except SaebenchError as exc:
                where = exc.where if exc.where and exc.where.split(".")[0] == "data" else "data"
                raise type(exc)(exc.problem, f"{self.source}: {where}") from None
            except TypeError as exc:  # a data source without its own check of unknown options
                raise ConfigError(str(exc), f"{self.source}: data") from None
        return self.contexts[name][:n_contexts]

    def ensure_caches(self, pending: list[Cell], only: str | None = None) -> None:
        """Fill the missing eval and train caches, one forward pass per model and token set
        (of model ``only`` when given: an executor fills each model's caches on its own worker)."""
        for name, spec in self.models.items():
            if only is not None and name != only:
                continue
            hooks = sorted({c.key.hookpoint for c in pending if c.key.model == name})
            missing = [h for h in hooks if not ActivationCache.exists(self.eval_cache_folder(spec, h))]
            n_eval = self.n_eval_contexts()
            to_train = [s for s in self.m.saes if s.model == name and s.train is not None and not self._trained(s)]
            wanted: dict[str, int] = {}
            for s in to_train:
                wanted[s.hookpoint] = max(wanted.get(s.hookpoint, 0), self.train_tokens(s))
            by_tokens: dict[int, dict[str, Path]] = {}
            for h, tokens in wanted.items():
                folder = self.train_cache_folder(spec, h, tokens)
                if not ActivationCache.exists(folder):
                    by_tokens.setdefault(tokens, {})[h] = folder
            if missing or by_tokens:  # tokenise the longest stream needed once; every set is a slice of it
                longest = max(by_tokens, default=0)
                self.model_contexts(name, n_eval + math.ceil(longest / self.m.data.context_length))
            if missing:
                folders = {h: self.eval_cache_folder(spec, h) for h in missing}
                self._fill(name, self.model_contexts(name, n_eval), folders, "eval")
            for tokens, folders in by_tokens.items():
                n_train = math.ceil(tokens / self.m.data.context_length)
                contexts = self.model_contexts(name, n_eval + n_train)[n_eval:]
                self._fill(name, contexts, folders, "train")

    def _fill(self, name: str, contexts: torch.Tensor, folders: dict[str, Path], part: str) -> None:
        adapter = self.adapter(name)
        label = f"activations {name} {part} [{', '.join(folders)}]"
        with self.progress.bar(label, total=int(contexts.numel()), unit="tok") as bar:
            build_caches(adapter, contexts, folders, describe={"model": name, "part": part}, progress=bar.update)

    def probe_data(self, model: str, hookpoint: str, task: Any, *, context_length: int, max_rows: int):
        """A probe task's activations at one hook point: from the cache, or one forward pass that fills
        the cache of every hook point of ``model`` that this run scores."""
        from saebench.probing import PROBE_FORMAT, ProbeData, build_probe_data

        spec = self.models[model]
        key = cache_key(part="probe", format=PROBE_FORMAT, model=self.model_desc(spec), task=task.identity(),
                        context_length=context_length, max_rows=max_rows, seed=self.m.seed)
        folder_of = lambda h: self.cache_dir / "probes" / f"{model}-{h}-{task.name}-{key}"  # noqa: E731
        folder = folder_of(hookpoint)
        if folder not in self.probe_memo:
            if not ProbeData.exists(folder):
                hooks = sorted({s.hookpoint for s in self.m.saes if s.model == model} | {hookpoint})
                with self.progress.bar(f"probe data {task.name} ({model})", total=None, unit="text") as bar:
                    built = build_probe_data(self.adapter(model), task, hooks, context_length=context_length,
                                             max_rows=max_rows, seed=self.m.seed, progress=bar.update)
                for h, data in built.items():
                    data.save(folder_of(h))
            self.probe_memo[folder] = ProbeData.load(folder)
        return self.probe_memo[folder]

    def _trained(self, sae: SAESpec) -> bool:
        marker = self.trained_folder(sae) / TRAINED_MARKER
        return marker.is_file() and json.loads(marker.read_text()).get("hash") == self.train_hash(sae)

    def untrained(self) -> list[SAESpec]:
        return [s for s in self.m.saes if s.train is not None and not self._trained(s)]

    def train_all(self) -> None:
        for sae in self.untrained():
            self.train_one(sae)

    def train_one(self, sae: SAESpec) -> None:
        from saebench.training import TrainConfig, train_sae

        spec = self.models[sae.model]
        cfg = TrainConfig.from_mapping({"seed": self.m.seed, **sae.train}, f"{self.source}: saes")
        cache = ActivationCache(self.train_cache_folder(spec, sae.hookpoint, self.train_tokens(sae)))
        start = time.perf_counter()
        with self.progress.bar(f"train {sae.name} ({cfg.arch}, d_sae {cfg.d_sae})", total=None, unit="step") as bar:
            trained, stats = train_sae(
                cfg, lambda: cache.batches(cfg.batch_size), cache.d, hook_name=sae.hookpoint, model_name=spec.path,
                progress=bar.training,
            )
        folder = self.trained_folder(sae)
        (folder / TRAINED_MARKER).unlink(missing_ok=True)
        trained.cfg.metadata["training"] = json.loads(stats.model_dump_json())
        save_sae(trained, folder)
        (folder / TRAINED_MARKER).write_text(json.dumps({"hash": self.train_hash(sae), "seconds": time.perf_counter() - start}))

    def load_cell_sae(self, sae: SAESpec):
        if sae.path is not None:
            return load_sae(sae.path, sae.format, allow_pickle=sae.allow_pickle)
        return load_sae(self.trained_folder(sae), "native")

    # -- the run --------------------------------------------------------------------------------
    def run(self) -> RunReport:
        t0 = time.perf_counter()
        cells = self.plan()
        store = ResultsStore(self.output)
        try:
            pending = [c for c in cells if store.finished_hash(c.key) != c.config_hash or store.has_failed_latents(c.key)]
            self.report.skipped = len(cells) - len(pending)
            untrained = self.untrained()
            if not pending and not untrained:
                self.progress.note(f"all {len(cells)} cells are finished in {self.output}; nothing to do")
                return self.report
            ray = self.m.ray
            if ray is not None:
                from saebench.ray_executor import RayRun, connect

                connect(ray, self.source)
            self.check_dimensions(pending)
            self.all_cells = cells
            if ray is not None:
                RayRun(self, store, pending, ray).run()
                return self.report
            self.ensure_caches(pending)
            self.report.timings["activations_s"] = time.perf_counter() - t0
            t1 = time.perf_counter()
            self.train_all()
            self.report.timings["training_s"] = time.perf_counter() - t1
            run_id = store.start_run(self.m.model_dump(mode="json"), versions(), self.m.seed)
            t2 = time.perf_counter()
            for client in self.llms.values():
                client.use_cache(self.cache_dir / "llm-responses.sqlite")
            with self.progress.bar("cells", total=len(pending), unit="cell") as bar:
                for group in _by_sae(pending):
                    self._score_group(store, run_id, group, bar)
            self.report.timings["cells_s"] = time.perf_counter() - t2
            self.report.timings["total_s"] = time.perf_counter() - t0
            store.finish_run(run_id, "failed cells" if self.report.failed else "ok", self.report.timings)
        finally:
            store.close()
        return self.report

    def hook_width(self, sae_spec: SAESpec) -> int:
        """Width of an SAE's hook point: from its activation cache, else from the loaded model."""
        folder = self.eval_cache_folder(self.models[sae_spec.model], sae_spec.hookpoint)
        if ActivationCache.exists(folder):
            return ActivationCache(folder).d
        return self.adapter(sae_spec.model).d_model(sae_spec.hookpoint)

    def d_sae(self, sae_spec: SAESpec) -> int:
        if sae_spec.path is None:
            return int(sae_spec.train["d_sae"])
        return (self.loaded.get(sae_spec.name) or self.load_cell_sae(sae_spec)).cfg.d_sae

    def check_dimensions(self, pending: list[Cell]) -> None:
        """Load each checkpoint once (a corrupt file stops the run here) and check its d_in against
        its hook point's width, before any activations are computed."""
        index = {s.name: i for i, s in enumerate(self.m.saes)}
        for sae_spec in {c.sae.name: c.sae for c in pending if c.sae.path is not None}.values():
            sae = self.loaded[sae_spec.name] = self.load_cell_sae(sae_spec)
            width = self.hook_width(sae_spec)
            if sae.cfg.d_in != width:
                raise ConfigError(
                    f"SAE {sae_spec.name!r} has d_in {sae.cfg.d_in} but {sae_spec.model} {sae_spec.hookpoint} has width {width}",
                    f"{self.source}: saes[{index[sae_spec.name]}]",
                )
        for sae_spec in self.untrained():
            # weights, gradients and two Adam moments of W_enc and W_dec: refuse what cannot fit, before any work
            d_sae = int(sae_spec.train.get("d_sae", 0))
            width = self.hook_width(sae_spec)
            need = 2 * width * d_sae * 4 * 4
            have = _memory_bytes()
            if have and need > have:
                raise ConfigError(f"training a {width}x{d_sae} SAE needs about {need / 2**30:,.0f} GiB for its weights and "
                                  f"optimiser state; this machine has {have / 2**30:,.0f} GiB",
                                  f"{self.source}: saes[{index[sae_spec.name]}].train.d_sae")
        explicit = self.record_config.latents if isinstance(self.record_config.latents, list) else []
        for sae_spec in {c.sae.name: c.sae for c in pending if c.stage in ("explain", "interp")}.values():
            d_sae = self.d_sae(sae_spec)
            bad = [i for i in explicit if not 0 <= i < d_sae]
            if bad:
                raise ConfigError(f"latent {bad[0]} does not exist in SAE {sae_spec.name!r} (d_sae {d_sae})",
                                  f"{self.source}: interp.latents")

    def _score_group(self, store: ResultsStore, run_id: int, group: list[Cell], bar) -> None:
        sae_spec = group[0].sae
        spec = self.models[sae_spec.model]
        cache = ActivationCache(self.eval_cache_folder(spec, sae_spec.hookpoint))
        sae = self.loaded.pop(sae_spec.name, None) or self.load_cell_sae(sae_spec)  # checked ones are kept
        tokens = cache.tokens()
        interp = [c for c in group if c.stage in ("explain", "interp")]
        if interp:  # before the probe cells, whose rules reuse the stored explanations
            from saebench.interp_stage import InterpStage

            InterpStage(self, store, run_id, sae_spec, sae, cache, bar).run(interp)
        for cell in (c for c in group if c.stage not in ("explain", "interp")):
            start = time.perf_counter()
            bar.set_description(f"cells: {cell.key.sae} × {cell.scorer_name}")
            try:
                adapter = self.adapter(cell.key.model) if getattr(cell.scorer, "needs_model", False) else None
                probe_data = explain = None
                if cell.stage == "probe":
                    probe_data = partial(self.probe_data, cell.key.model, cell.key.hookpoint)
                    if getattr(cell.scorer, "uses_explanations", False):
                        from saebench.interp_stage import explain_latents

                        explain = partial(explain_latents, self, store, sae_spec, sae, cache)
                inputs = EvalInputs(hookpoint=cell.key.hookpoint, activations=lambda bt, c=cache: c.batches(bt),
                                    tokens=tokens, adapter=adapter, seed=self.m.seed, probe_data=probe_data,
                                    explain=explain)
                result = cell.scorer.score(sae, inputs)
            except KeyboardInterrupt:
                raise
            except SaebenchError:  # bad input (a probe task's file, say): stop with exit 2; stored cells stay
                raise
            except Exception as exc:  # one cell's failure is recorded; the others still run
                error = f"{type(exc).__name__}: {' '.join(str(exc).split())}"[:2000]
                store.write_cell(cell.key, config_hash=cell.config_hash, config=cell.config, run_id=run_id,
                                 seconds=time.perf_counter() - start, error=error)
                self.report.failed.append((cell.key, error))
                self.progress.note(f"cell {cell.key.sae} × {cell.scorer_name} failed: {error}")
            else:
                store.write_cell(cell.key, config_hash=cell.config_hash, config=cell.config, run_id=run_id,
                                 seconds=time.perf_counter() - start, metrics=result.metrics, details=result.details)
                self.report.done += 1
            bar.update(1)


def _memory_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


def _by_sae(cells: list[Cell]) -> list[list[Cell]]:
    groups: dict[str, list[Cell]] = {}
    for c in cells:
        groups.setdefault(c.sae.name, []).append(c)
    return list(groups.values())


def run_matrix(path: str | Path, *, quiet: bool = False) -> RunReport:
    matrix = load_matrix(path)
    runner = Runner(matrix, source=str(path), progress=Progress(enabled=not quiet))
    report = runner.run()
    if report.failed and not quiet:
        print(f"{len(report.failed)} cell(s) failed; their errors are in {runner.output}/results.sqlite", file=sys.stderr)
    if report.failed_latents and not quiet:
        print(f"{report.failed_latents} latent result(s) unfinished (LLM calls that gave up); re-run to retry only those",
              file=sys.stderr)
    return report
