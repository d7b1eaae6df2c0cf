"""The run context: what stages compute with besides the store.

It holds the plan and the built components, and loads what is expensive once per process:
models (adapters), tokenised contexts, SAEs, activation caches and probe data. Stages receive it
explicitly; it never writes results (stages write through the ``Results`` they are given).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any, TypeVar

import torch

from saebench import plugin_manager
from saebench.compare import Comparison
from saebench.errors import ConfigError, SaebenchError
from saebench.files import ArtifactLock
from saebench.interfaces import ModelAdapter
from saebench.loading import load_sae
from saebench.probes.tasks import PROBE_FORMAT, ProbeData, build_probe_data
from saebench.run.activations import ActivationCache, cache_key
from saebench.run.components import Components
from saebench.run.data import make_contexts
from saebench.run.matrix import adapter_options, model_device
from saebench.run.plan import Cell, Plan, SAEEntry
from saebench.run.progress import Progress
from saebench.sae import SAE
from saebench.training.baselines import BaselineConfig

TRAINED_MARKER = "trained.json"
T = TypeVar("T")


class RunContext:
    def __init__(self, plan: Plan, components: Components, progress: Progress | None = None):
        self.plan = plan
        self.components = components
        self.progress = progress or Progress()
        self.adapters: dict[str, ModelAdapter] = {}
        self.contexts: dict[str, torch.Tensor] = {}
        self.loaded: dict[str, SAE] = {}  # checkpoints loaded by the checks, handed to their cells
        self.probe_memo: dict[Path, ProbeData] = {}
        #: rule-explainer texts made during this run, per SAE (every compare cell with B asks for B's latents)
        self.explanations: dict[str, dict[int, str | None]] = {}
        self._last: dict[str, tuple[Any, Any]] = {}

    @property
    def seed(self) -> int:
        return self.plan.matrix.run_seed

    def where(self, key: str) -> str:
        return f"{self.plan.source}: {key}"

    # -- components of a cell ------------------------------------------------------------------
    def component(self, cell: Cell) -> Any:
        """The scorer of a cell, or the explainer of an explain cell."""
        if cell.kind == "explain":
            return self.components.explainers[cell.component][1]
        if cell.kind == "compare":
            spec = self.plan.matrix.compare
            return Comparison(spec is not None and "explanations" in spec.metrics)
        return self.components.scorers[cell.component]

    def llm(self, cell: Cell) -> Any:
        return self.components.llms.get(cell.llm) if cell.llm else None

    # -- models and data -------------------------------------------------------------------------
    def adapter(self, name: str) -> ModelAdapter:
        if name not in self.adapters:
            spec = self.plan.models[name]
            cls = plugin_manager.get("model_adapter", spec.adapter)
            where = self.where(f"models[{list(self.plan.models).index(name)}]")
            with self.progress.status(f"loading model {name} ({spec.path})"):
                try:
                    self.adapters[name] = cls(spec.path, **self._adapter_options(name, cls))
                except SaebenchError as exc:  # the adapter names its option or path; add the matrix key
                    raise exc.inside(where) from None
                except TypeError as exc:  # an adapter without its own check of unknown options
                    raise ConfigError(str(exc), f"{where}.options") from None
            missing = [h for h in spec.hookpoints if h not in self.adapters[name].hookpoints()]
            if missing:
                raise self._no_hookpoint(name, missing[0], where)
        return self.adapters[name]

    def _adapter_options(self, name: str, cls: type[ModelAdapter]) -> dict[str, Any]:
        spec, index = self.plan.models[name], list(self.plan.models).index(name)
        options = adapter_options(self.plan.matrix, spec)
        device = model_device(self.plan.matrix, spec, self.plan.source, index)
        if device is not None and (device != "cpu" or "device" in cls.Options.model_fields):
            options["device"] = device  # an adapter without a device option gets it only when it is not the CPU
        return options

    def _no_hookpoint(self, model: str, hookpoint: str, where: str) -> ConfigError:
        """A hook point the model lacks, blamed on the SAE whose checkpoint named it when one did."""
        for e in self.plan.saes.values():
            if e.spec.model == model and e.spec.hookpoint == hookpoint and e.spec.hook_name:
                return ConfigError(
                    f"SAE {e.stored_as!r} reads its checkpoint's hook {e.spec.hook_name!r}, which is hook point "
                    f"{hookpoint!r}, and model {model!r} has no such hook point",
                    self.where(f"saes[{e.index}].hookpoint"),
                )
        return ConfigError(f"model {model!r} has no hook point {hookpoint!r}", f"{where}.hookpoints")

    def model_contexts(self, name: str, n_contexts: int) -> torch.Tensor:
        """The first ``n_contexts`` contexts of the data stream for this model's tokenizer."""
        have = self.contexts.get(name)
        if have is None or have.shape[0] < n_contexts:
            data = self.plan.matrix.data
            adapter = self.adapter(name)
            try:  # the data source's options and texts: errors name their key (data.paths...) in the matrix file
                source = plugin_manager.get("data_source", data.source)(**data.options)
                with self.progress.status(f"tokenising {n_contexts * data.context_length:,} tokens for {name}"):
                    self.contexts[name] = make_contexts(
                        adapter, source, data.context_length, n_contexts * data.context_length
                    )
            except SaebenchError as exc:
                where = exc.where if exc.where and exc.where.split(".")[0] == "data" else "data"
                raise type(exc)(exc.problem, self.where(where)) from None
            except TypeError as exc:  # a data source without its own check of unknown options
                raise ConfigError(str(exc), self.where("data")) from None
        return self.contexts[name][:n_contexts]

    def eval_cache(self, sae: str) -> ActivationCache:
        return ActivationCache(self.plan.saes[sae].eval_cache)

    def token_contexts(self, sae: str) -> torch.Tensor | None:
        """The context of each evaluation activation of an SAE's hook point (what token metrics resample)."""
        cache = self.eval_cache(sae)
        model = self.plan.saes[sae].spec.model
        mask = lambda tokens: self.adapter(model).special_mask(tokens)  # noqa: E731 - loads the model only for an old cache
        return self.last("token_contexts", cache.folder, lambda: cache.token_contexts(mask))

    def probe_data(
        self, model: str, hookpoint: str, task: Any, *, context_length: int, max_rows: int, seed: int | None = None
    ) -> ProbeData:
        """A probe task's activations at one hook point: from the cache, or one forward pass that fills
        the cache of every hook point of ``model`` that this run scores. ``seed`` splits train and test."""
        seed = self.seed if seed is None else seed
        key = cache_key(
            part="probe",
            format=PROBE_FORMAT,
            model=self.plan.model_desc(model),
            task=task.identity(),
            context_length=context_length,
            max_rows=max_rows,
            seed=seed,
        )
        folder_of = lambda h: self.plan.cache_dir / "probes" / f"{model}-{h}-{task.name}-{key}"  # noqa: E731
        folder = folder_of(hookpoint)
        if folder not in self.probe_memo:
            if not ProbeData.exists(folder):
                with self.lock(folder_of("all"), f"probe data {task.name} ({model})"):
                    if not ProbeData.exists(folder):  # built while this run waited
                        self._build_probe_data(model, hookpoint, task, folder_of, context_length, max_rows, seed)
            self.probe_memo[folder] = ProbeData.load(folder)
        return self.probe_memo[folder]

    def _build_probe_data(
        self,
        model: str,
        hookpoint: str,
        task: Any,
        folder_of: Callable[[str], Path],
        context_length: int,
        max_rows: int,
        seed: int,
    ) -> None:
        hooks = sorted({e.spec.hookpoint for e in self.plan.saes.values() if e.spec.model == model} | {hookpoint})
        with self.progress.bar(f"probe data {task.name} ({model})", total=None, unit="text") as bar:
            built = build_probe_data(
                self.adapter(model),
                task,
                hooks,
                context_length=context_length,
                max_rows=max_rows,
                seed=seed,
                progress=bar.update,
            )
        for h, data in built.items():
            data.save(folder_of(h))

    def lock(self, artifact: Path, what: str) -> ArtifactLock:
        """The lock of a shared artifact, beside it (``FOLDER/.locks/NAME.lock``): every run sharing the
        folder finds the same one, whatever its own output and cache folders are."""
        return ArtifactLock(artifact.parent / ".locks" / f"{artifact.name}.lock", what, self.progress.note)

    def last(self, kind: str, key: Any, make: Callable[[], T]) -> T:
        """The last ``kind`` this context made (an SAE, a latent-records file), kept for the next stage that
        asks for the same ``key``: a 1M-latent SAE is not loaded once per stage. The previous one is freed first."""
        if kind not in self._last or self._last[kind][0] != key:
            self._last.pop(kind, None)
            self._last[kind] = (key, make())
        return self._last[kind][1]

    def sae(self, name: str) -> SAE:
        """The SAE ``name``, loaded once for the consecutive stages that use it."""
        return self.last("sae", name, lambda: self.load_sae(name))

    # -- SAEs ------------------------------------------------------------------------------------
    def trained(self, entry: SAEEntry) -> bool:
        """Whether a ``train:`` (or ``baseline:``) SAE is saved with the configuration it has now."""
        assert entry.folder is not None
        marker = entry.folder / TRAINED_MARKER
        return marker.is_file() and json.loads(marker.read_text()).get("hash") == entry.train_hash

    def untrained(self) -> list[SAEEntry]:
        return [e for e in self.plan.saes.values() if e.folder and not e.replica_of and not self.trained(e)]

    def load_sae(self, sae: str, keep: bool = False) -> SAE:
        """An SAE of the matrix: its checkpoint, or the folder it was trained into. One the checks loaded
        is handed over (and forgotten) unless ``keep``."""
        if sae in self.loaded:
            return self.loaded[sae] if keep else self.loaded.pop(sae)
        entry = self.plan.saes[sae]
        spec = entry.spec
        loaded = (
            load_sae(spec.path, spec.format, allow_pickle=spec.allow_pickle)
            if spec.path is not None
            else load_sae(entry.folder, "native")
        )
        if keep:
            self.loaded[sae] = loaded
        return loaded

    def hook_width(self, entry: SAEEntry) -> int:
        """Width of an SAE's hook point: from its activation cache, else from the loaded model."""
        if ActivationCache.exists(entry.eval_cache):
            return ActivationCache(entry.eval_cache).d
        return self.adapter(entry.spec.model).d_model(entry.spec.hookpoint)

    def d_sae(self, sae: str) -> int:
        entry = self.plan.saes[sae]
        if entry.spec.baseline is not None:
            return BaselineConfig.from_mapping(entry.spec.baseline, self.where("saes")).d_sae_for(
                self.hook_width(entry)
            )
        if entry.spec.path is None:
            return int(entry.spec.train["d_sae"])
        return (self.loaded[sae] if sae in self.loaded else self.load_sae(sae)).cfg.d_sae


def memory_bytes() -> int | None:
    """Physical memory of this machine, or None where the OS does not say."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None
