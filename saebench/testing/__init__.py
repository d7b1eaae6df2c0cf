"""Helpers for testing plugins (saebench's own tests and a plugin author's): never imported by the runtime.

- :func:`register_plugin` / :func:`unregister_plugin` / :func:`registered`: a module or object with
  hookimpls registered in this process, without packaging it (a notebook, a test);
- :mod:`saebench.testing.tiny_model`: a tiny Hugging Face causal LM saved like any model folder;
- :mod:`saebench.testing.fakellm`: an OpenAI-compatible HTTP server on 127.0.0.1 with scripted answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from saebench import plugin_manager


def register_plugin(plugin: object, name: str | None = None) -> None:
    """Register a module or object with hookimpls in this process, and reset the registry."""
    plugin_manager.IN_PROCESS.append((plugin, name or getattr(plugin, "__name__", repr(plugin))))
    plugin_manager.reset()


def unregister_plugin(name: str) -> None:
    """Undo :func:`register_plugin` (in a fixture's teardown, so one test's plugin stays in that test)."""
    plugin_manager.IN_PROCESS[:] = [(p, n) for p, n in plugin_manager.IN_PROCESS if n != name]
    plugin_manager.reset()


@contextmanager
def registered(plugin: object, name: str) -> Iterator[None]:
    """``with registered(module, "my-plugin"):`` the plugin is registered inside the block only."""
    register_plugin(plugin, name)
    try:
        yield
    finally:
        unregister_plugin(name)
