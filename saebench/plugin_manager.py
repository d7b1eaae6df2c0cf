"""The one plugin manager: the built-in plugins, then third-party entry points, collected into one registry per kind.

Built-ins are the modules of :data:`DEFAULT_PLUGINS` (registry.yaml is their catalogue), registered
with the same hooks a third party's package uses; they load without being installed as entry points
and cannot be switched off, and an error in one is a bug that stops the program. Third-party plugins
come through the entry-point group ``saebench``: ``SAEBENCH_LOAD_PLUGINS=a,b`` loads only the entry
points named ``a`` and ``b`` (empty: none), and one that fails to import or to register is recorded
in :attr:`Registry.failures` while the others still load.
"""

from __future__ import annotations

import difflib
import importlib
import inspect
import os
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, entry_points, version
from typing import Any

import pluggy

from saebench import hookspecs
from saebench.errors import PluginError, one_line
from saebench.hookspecs import KINDS, Kind

GROUP = "saebench"
BUILT_IN = "built-in"

#: the built-in plugins, in load order (registry.yaml lists what each registers)
DEFAULT_PLUGINS = tuple(
    f"saebench.plugins.{m}"
    for m in (
        "architectures.relu",
        "architectures.topk",
        "architectures.jumprelu",
        "architectures.batchtopk",
        "architectures.matryoshka_batchtopk",
        "architectures.gated",
        "loaders.native",
        "loaders.saelens",
        "loaders.sparsify",
        "loaders.gemmascope",
        "loaders.openai",
        "loaders.llamascope",
        "loaders.dictionary_learning",
        "adapters.hf_causal_lm",
        "data_sources.python_stdlib",
        "data_sources.text_files",
        "data_sources.hf_datasets",
        "scorers.sparsity",
        "scorers.reconstruction",
        "scorers.downstream",
        "scorers.ablation_sparsity",
        "llm_clients.openai",
        "llm_clients.anthropic",
        "llm_clients.local",
        "explainers.llm",
        "explainers.contrastive",
        "explainers.top_tokens",
        "explainers.n2g",
        "scorers.detection",
        "scorers.fuzzing",
        "scorers.surprisal",
        "scorers.embedding",
        "scorers.n2g",
        "scorers.intervention",
        "scorers.simulation",
        "scorers.sparse_probing",
        "scorers.treeprobe",
        "scorers.treeprobe.report",
        "scorers.absorption",
        "probe_tasks.text_source",
        "probe_tasks.python_token_type",
        "probe_tasks.python_syntax",
        "probe_tasks.bracket_depth",
        "probe_tasks.python_string_comment",
        "probe_tasks.file",
        "probe_tasks.hf_dataset",
    )
)

#: plugins registered in this process without packaging (``saebench.testing.register_plugin``): (object, name)
IN_PROCESS: list[tuple[object, str]] = []


@dataclass(frozen=True)
class PluginInfo:
    """One registered thing: an architecture, a loader, a scorer..."""

    kind: str
    name: str
    obj: Any
    description: str
    plugin: str  # the module, entry point or in-process plugin that registered it
    source: str  # "built-in", "in-process" or the distribution that registered it
    version: str


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    source: str
    error: str


@dataclass
class KindRegistry:
    """The registered members of one kind, each checked against the kind's base class."""

    kind: Kind
    entries: dict[str, PluginInfo] = field(default_factory=dict)

    def add(self, obj: Any, plugin: str, source: str, version: str) -> None:
        base = self.kind.base
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(
                f"{plugin}: registered {obj!r} as a {self.kind.name}, but it is not a subclass of {base.__name__}"
            )
        name = getattr(obj, self.kind.name_attr, None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{plugin}: {obj.__name__} has no {self.kind.name_attr!r} name")
        if name in self.entries:
            raise PluginError(
                f"{plugin}: {self.kind.name} {name!r} is already registered by {self.entries[name].plugin}"
            )
        self.entries[name] = PluginInfo(self.kind.name, name, obj, describe(obj), plugin, source, version)


@dataclass
class Registry:
    kinds: dict[str, KindRegistry] = field(default_factory=lambda: {k: KindRegistry(v) for k, v in KINDS.items()})
    failures: list[PluginFailure] = field(default_factory=list)

    def of(self, kind: str) -> KindRegistry:
        if kind not in self.kinds:
            raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(self.kinds)}")
        return self.kinds[kind]

    def info(self, kind: str, name: str) -> PluginInfo:
        """What is registered as ``name`` of ``kind``, or a PluginError that lists the known names."""
        entries = self.of(kind).entries
        if name in entries:
            return entries[name]
        known = sorted(entries)
        hint = difflib.get_close_matches(name, known, n=1)
        msg = f"unknown {kind.replace('_', ' ')} {name!r}"
        msg += f" (did you mean {hint[0]!r}?)" if hint else ""
        msg += f"; known: {', '.join(known) or 'none'}"
        if self.failures:
            msg += f"; plugins that failed to load: {', '.join(f.plugin for f in self.failures)}"
        raise PluginError(msg)

    def get(self, kind: str, name: str) -> Any:
        """The class registered as ``name`` of ``kind``."""
        return self.info(kind, name).obj

    def names(self, kind: str) -> list[str]:
        return sorted(self.of(kind).entries)

    def of_kind(self, kind: str) -> list[PluginInfo]:
        return [self.of(kind).entries[n] for n in self.names(kind)]

    def all(self) -> list[PluginInfo]:
        return [info for k in self.kinds for info in self.of_kind(k)]


def describe(obj: Any) -> str:
    """First line of the object's docstring: the one-line description shown by ``saebench plugins``."""
    doc = inspect.getdoc(obj) or ""
    return doc.strip().splitlines()[0] if doc.strip() else ""


class _Loader:
    def __init__(self) -> None:
        self.pm = pluggy.PluginManager(GROUP)
        self.pm.add_hookspecs(hookspecs)
        self.sources: dict[str, tuple[str, str]] = {}  # plugin name -> (source, version)
        self.registry = Registry()

    def load(self) -> Registry:
        built_in = distribution_version()
        for module in DEFAULT_PLUGINS:  # an ImportError here is a bug in saebench: let it through
            self.add(importlib.import_module(module), module, BUILT_IN, built_in)
        chosen = os.environ.get("SAEBENCH_LOAD_PLUGINS")
        wanted = None if chosen is None else {n.strip() for n in chosen.split(",") if n.strip()}
        for ep in entry_points(group=GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            dist = ep.dist
            source, version = (dist.metadata["Name"], dist.version) if dist else ("unknown", "")
            try:
                self.add(ep.load(), ep.name, source, version)
            except Exception as exc:  # a broken third-party plugin must not take the others down
                self.registry.failures.append(PluginFailure(ep.name, source, one_line(exc)))
        for plugin, name in IN_PROCESS:
            self.add(plugin, name, "in-process", "")
        for kind in KINDS.values():
            for impl in getattr(self.pm.hook, kind.hook).get_hookimpls():  # registration order
                source, version = self.sources[impl.plugin_name]
                try:
                    impl.function(
                        register=partial(
                            self.registry.of(kind.name).add, plugin=impl.plugin_name, source=source, version=version
                        )
                    )
                except Exception as exc:
                    if source == BUILT_IN:
                        raise
                    self.registry.failures.append(PluginFailure(impl.plugin_name, source, one_line(exc)))
        return self.registry

    def add(self, plugin: object, name: str, source: str, version: str) -> None:
        if self.pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already registered")
        self.pm.register(plugin, name=name)
        self.sources[name] = (source, version)


def distribution_version() -> str:
    """The installed saebench distribution's version: the built-in plugins' version in cell hashes."""
    try:
        return version("saebench")
    except PackageNotFoundError:  # a source tree that was never installed
        return "unknown"


_registry: Registry | None = None


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _registry
    if _registry is None:
        _registry = _Loader().load()
    return _registry


def reset() -> None:
    """Forget the registry so the next use reloads it (after installing a plugin, or changing the env var)."""
    global _registry
    _registry = None


def get(kind: str, name: str) -> Any:
    return get_registry().get(kind, name)
