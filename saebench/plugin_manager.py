"""The one plugin manager: loads entry points of group ``saebench`` and collects what they register.

Built-in plugins (listed in registry.yaml, installed as entry points of the
``saebench`` distribution) and third-party ones go through exactly this path.
``SAEBENCH_LOAD_PLUGINS=relu,topk`` loads only the named entry points (empty:
none), which tests use to isolate plugins. A plugin that fails to import or to
register is recorded in :attr:`Registry.failures` and the others still load.
"""

from __future__ import annotations

import difflib
import inspect
import os
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import entry_points
from typing import Any

import pluggy

from saebench import hookspecs
from saebench.errors import PluginError

GROUP = "saebench"

# kind -> (hook name, attribute holding the registered object's name)
KINDS: dict[str, tuple[str, str]] = {
    "architecture": ("register_architectures", "arch"),
    "loader": ("register_loaders", "name"),
    "model_adapter": ("register_model_adapters", "name"),
    "data_source": ("register_data_sources", "name"),
    "explainer": ("register_explainers", "name"),
    "scorer": ("register_scorers", "name"),
    "llm_client": ("register_llm_clients", "name"),
    "probe_task": ("register_probe_tasks", "name"),
}


def _base_class(kind: str) -> type:
    # Imported lazily: the bases import torch and pydantic, the manager should not.
    from saebench import interfaces, loading, probing, sae

    return {
        "architecture": sae.SAE,
        "loader": loading.SAELoader,
        "model_adapter": interfaces.ModelAdapter,
        "data_source": interfaces.DataSource,
        "explainer": interfaces.Explainer,
        "scorer": interfaces.Scorer,
        "llm_client": interfaces.LLMClient,
        "probe_task": probing.ProbeTask,
    }[kind]


@dataclass(frozen=True)
class PluginInfo:
    """One registered thing: an architecture, a loader, a scorer..."""

    kind: str
    name: str
    obj: Any
    description: str
    plugin: str  # the entry point (or in-process plugin) that registered it
    source: str  # "built-in" or the distribution that registered it
    version: str


@dataclass(frozen=True)
class PluginFailure:
    plugin: str
    source: str
    error: str


@dataclass
class Registry:
    entries: dict[tuple[str, str], PluginInfo] = field(default_factory=dict)
    failures: list[PluginFailure] = field(default_factory=list)

    def get(self, kind: str, name: str) -> Any:
        """The object registered as ``name`` of ``kind``, or a PluginError that lists the known names."""
        if kind not in KINDS:
            raise PluginError(f"unknown plugin kind {kind!r}; kinds: {', '.join(KINDS)}")
        info = self.entries.get((kind, name))
        if info is not None:
            return info.obj
        known = self.names(kind)
        hint = difflib.get_close_matches(name, known, n=1)
        msg = f"unknown {kind.replace('_', ' ')} {name!r}"
        msg += f" (did you mean {hint[0]!r}?)" if hint else ""
        msg += f"; known: {', '.join(known) or 'none'}"
        if self.failures:
            msg += f"; plugins that failed to load: {', '.join(f.plugin for f in self.failures)}"
        raise PluginError(msg)

    def names(self, kind: str) -> list[str]:
        return sorted(n for k, n in self.entries if k == kind)

    def of_kind(self, kind: str) -> list[PluginInfo]:
        return [self.entries[(kind, n)] for n in self.names(kind)]


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

    def load_entry_points(self) -> None:
        chosen = os.environ.get("SAEBENCH_LOAD_PLUGINS")
        wanted = None if chosen is None else {n.strip() for n in chosen.split(",") if n.strip()}
        for ep in entry_points(group=GROUP):
            if wanted is not None and ep.name not in wanted:
                continue
            dist = ep.dist
            dist_name, version = (dist.metadata["Name"], dist.version) if dist else ("unknown", "")
            source = "built-in" if dist_name == "saebench" else dist_name
            try:
                self.add(ep.load(), ep.name, source, version)
            except Exception as exc:  # a broken third-party plugin must not take the others down
                self.registry.failures.append(PluginFailure(ep.name, source, _one_line(exc)))

    def add(self, plugin: object, name: str, source: str, version: str) -> None:
        if self.pm.has_plugin(name):
            raise PluginError(f"a plugin named {name!r} is already registered")
        self.pm.register(plugin, name=name)
        self.sources[name] = (source, version)

    def collect(self) -> Registry:
        for kind, (hook_name, _) in KINDS.items():
            for impl in getattr(self.pm.hook, hook_name).get_hookimpls():  # registration order
                try:
                    impl.function(register=partial(self._register, kind, impl.plugin_name))
                except Exception as exc:
                    source = self.sources.get(impl.plugin_name, ("in-process", ""))[0]
                    self.registry.failures.append(PluginFailure(impl.plugin_name, source, _one_line(exc)))
        return self.registry

    def _register(self, kind: str, plugin_name: str, obj: Any) -> None:
        attr = KINDS[kind][1]
        base = _base_class(kind)
        if not (isinstance(obj, type) and issubclass(obj, base)):
            raise PluginError(f"{plugin_name}: registered {obj!r} as a {kind}, but it is not a subclass of {base.__name__}")
        name = getattr(obj, attr, None)
        if not isinstance(name, str) or not name:
            raise PluginError(f"{plugin_name}: {obj.__name__} has no {attr!r} name")
        if (kind, name) in self.registry.entries:
            first = self.registry.entries[(kind, name)].plugin
            raise PluginError(f"{plugin_name}: {kind} {name!r} is already registered by {first}")
        source, version = self.sources.get(plugin_name, ("in-process", ""))
        self.registry.entries[(kind, name)] = PluginInfo(kind, name, obj, describe(obj), plugin_name, source, version)


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


_loader: _Loader | None = None
_extra: list[tuple[object, str]] = []


def get_registry() -> Registry:
    """The process-wide registry, built on first use."""
    global _loader
    if _loader is None:
        loader = _Loader()
        loader.load_entry_points()
        for plugin, name in _extra:
            loader.add(plugin, name, "in-process", "")
        loader.collect()
        _loader = loader
    return _loader.registry


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a module or object with hookimpls in this process (notebooks, tests), without packaging it."""
    _extra.append((plugin, name or getattr(plugin, "__name__", repr(plugin))))
    reset()


def unregister_plugin(name: str) -> None:
    """Undo :func:`register_plugin` (tests use it to keep a plugin to one test)."""
    _extra[:] = [(p, n) for p, n in _extra if n != name]
    reset()


def reset() -> None:
    """Forget the registry so the next use reloads it (after installing a plugin, or changing the env var)."""
    global _loader
    _loader = None


def get(kind: str, name: str) -> Any:
    return get_registry().get(kind, name)
