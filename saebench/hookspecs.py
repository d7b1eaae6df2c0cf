"""The hooks through which every plugin, built-in or third-party, adds to saebench.

Each hook receives a ``register`` callback and calls it once per class it provides:
``register(TopKSAE)``. The class carries its own name (the attribute named below, unique within
its kind) and its description (the first line of its docstring). Hooks are called once per
process, when the registry is first needed, in plugin load order (built-ins first); a plugin may
implement any subset of them. Registering a name twice within one kind is an error reported
against the second plugin. Each hook is also the one declaration of its plugin kind: the kind's
name, the base class every registered class must subclass, and its name attribute (``@kind``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from pluggy import HookimplMarker, HookspecMarker

from saebench.interfaces import DataSource, Explainer, ModelAdapter, ProbeTask, ReportSection, SAELoader, Scorer
from saebench.interp.llm import LLMClient
from saebench.sae import SAE

hookspec = HookspecMarker("saebench")
hookimpl = HookimplMarker("saebench")

Register = Callable[[Any], None]


@dataclass(frozen=True)
class Kind:
    """A plugin kind: the hook that registers it, the base class its members subclass, their name attribute."""

    name: str
    hook: str
    base: type
    name_attr: str = "name"


def kind(name: str, base: type, name_attr: str = "name") -> Callable[[Callable], Callable]:
    def mark(fn: Callable) -> Callable:
        fn.kind = Kind(name, fn.__name__, base, name_attr)  # type: ignore[attr-defined]
        return fn

    return mark


@hookspec
@kind("architecture", SAE, "arch")
def register_architectures(register: Register) -> None:
    """Register SAE architectures: subclasses of :class:`saebench.SAE` with a unique ``arch`` name."""


@hookspec
@kind("loader", SAELoader)
def register_loaders(register: Register) -> None:
    """Register checkpoint loaders: subclasses of :class:`saebench.SAELoader` (``detect`` + ``load``)."""


@hookspec
@kind("model_adapter", ModelAdapter)
def register_model_adapters(register: Register) -> None:
    """Register model adapters: subclasses of :class:`saebench.ModelAdapter` (load a model, capture and patch hook points)."""


@hookspec
@kind("data_source", DataSource)
def register_data_sources(register: Register) -> None:
    """Register data sources: subclasses of :class:`saebench.DataSource` (yield documents as text)."""


@hookspec
@kind("explainer", Explainer)
def register_explainers(register: Register) -> None:
    """Register explainers: subclasses of :class:`saebench.Explainer` (latent record -> explanation)."""


@hookspec
@kind("scorer", Scorer)
def register_scorers(register: Register) -> None:
    """Register scorers: subclasses of :class:`saebench.Scorer` (SAE + cached inputs -> one typed result)."""


@hookspec
@kind("llm_client", LLMClient)
def register_llm_clients(register: Register) -> None:
    """Register LLM clients: subclasses of :class:`saebench.LLMClient` (prompt -> completion, async)."""


@hookspec
@kind("probe_task", ProbeTask)
def register_probe_tasks(register: Register) -> None:
    """Register probe tasks: subclasses of :class:`saebench.ProbeTask` (labelled texts for probe scorers)."""


@hookspec
@kind("report_section", ReportSection)
def register_report_sections(register: Register) -> None:
    """Register report sections: subclasses of :class:`saebench.ReportSection` (stored cells -> HTML)."""


#: every plugin kind, in the order of the hooks above (which ``saebench plugins`` follows)
KINDS: dict[str, Kind] = {
    fn.kind.name: fn.kind for fn in list(globals().values()) if isinstance(getattr(fn, "kind", None), Kind)
}
