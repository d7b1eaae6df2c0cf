"""Errors a user can act on.

Anything derived from :class:`SaebenchError` is the user's input being wrong (a
file, a config, a plugin name). The CLI prints it as one line and exits with
code 2; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path


class SaebenchError(Exception):
    """Bad input. ``where`` names the file, key or plugin the problem is in."""

    exit_code = 2

    def __init__(self, problem: str, where: str | Path | None = None):
        self.problem = problem
        self.where = str(where) if where is not None else None
        super().__init__(f"{self.where}: {problem}" if self.where else problem)


class ConfigError(SaebenchError):
    """A configuration value or file is malformed."""


class CheckpointError(SaebenchError):
    """An SAE checkpoint is missing, corrupt, or does not match its config."""


class PluginError(SaebenchError):
    """A plugin name is unknown, or a plugin failed to load."""


class ShapeError(SaebenchError):
    """Tensors that must fit together do not."""
