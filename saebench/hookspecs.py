"""The hooks through which every plugin, built-in or third-party, adds to saebench.

Each hook receives a ``register`` callback and calls it once per thing it
provides: ``register(TopKSAE)``. The registered object carries its own
``name`` (a class attribute) and its description (the first line of its
docstring). Hooks are called once per process, when the registry is first
needed, in plugin load order; a plugin may implement any subset of them.
Registering a name twice within one kind is an error reported against the
second plugin.
"""

from __future__ import annotations

from typing import Any, Callable

from pluggy import HookimplMarker, HookspecMarker

hookspec = HookspecMarker("saebench")
hookimpl = HookimplMarker("saebench")

Register = Callable[[Any], None]


@hookspec
def register_architectures(register: Register) -> None:
    """Register SAE architectures: subclasses of :class:`saebench.SAE` with a unique ``arch`` name."""


@hookspec
def register_loaders(register: Register) -> None:
    """Register checkpoint loaders: subclasses of :class:`saebench.SAELoader` (``detect`` + ``load``)."""


@hookspec
def register_model_adapters(register: Register) -> None:
    """Register model adapters: subclasses of :class:`saebench.ModelAdapter` (load a model, capture and patch hook points)."""


@hookspec
def register_data_sources(register: Register) -> None:
    """Register data sources: subclasses of :class:`saebench.DataSource` (yield documents as text)."""


@hookspec
def register_explainers(register: Register) -> None:
    """Register explainers: subclasses of :class:`saebench.Explainer` (latent record -> explanation)."""


@hookspec
def register_scorers(register: Register) -> None:
    """Register scorers: subclasses of :class:`saebench.Scorer` (SAE + cached inputs -> one typed result)."""


@hookspec
def register_llm_clients(register: Register) -> None:
    """Register LLM clients: subclasses of :class:`saebench.LLMClient` (prompt -> completion, async)."""


@hookspec
def register_probe_tasks(register: Register) -> None:
    """Register probe tasks: subclasses of :class:`saebench.ProbeTask` (labelled texts for probe scorers)."""
