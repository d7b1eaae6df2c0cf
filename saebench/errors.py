"""Errors a user can act on.

Anything derived from :class:`SaebenchError` is the user's input being wrong (a
file, a config, a plugin name). The CLI prints it as one line and exits with
code 2; everything else is a bug and keeps its traceback.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


class SaebenchError(Exception):
    """Bad input. ``where`` names the file, key or plugin the problem is in."""

    exit_code = 2

    def __init__(self, problem: str, where: str | Path | None = None):
        self.problem = problem
        self.where = str(where) if where is not None else None
        super().__init__(f"{self.where}: {problem}" if self.where else problem)

    def inside(self, outer: str) -> SaebenchError:
        """The same error located inside ``outer`` (a matrix key around a plugin's own file or option)."""
        return type(self)(self.problem, f"{outer}: {self.where}" if self.where else outer)


class ConfigError(SaebenchError):
    """A configuration value or file is malformed."""


class CheckpointError(SaebenchError):
    """An SAE checkpoint is missing, corrupt, or does not match its config."""


class PluginError(SaebenchError):
    """A plugin name is unknown, or a plugin failed to load."""


class ShapeError(SaebenchError):
    """Tensors that must fit together do not."""


def validation_error(exc: Any, where: str | Path) -> ConfigError:
    """A one-line ConfigError from a pydantic ValidationError: the first problem, located by key path.

    ``where`` is a file (``cfg.json`` -> ``cfg.json: k``) or already a key inside one
    (``matrix.yaml: saes[1].train`` -> ``matrix.yaml: saes[1].train.k``).
    """
    errs = exc.errors()
    # saes[0].train, as the user reads a YAML path (pydantic says saes.0.train); a bad mapping key is
    # reported at the key itself (pydantic adds "[key]")
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in errs[0]["loc"] if p != "[key]").lstrip(".")
    msg = errs[0]["msg"].removeprefix("Value error, ")
    if len(errs) > 1:
        msg += f" (and {len(errs) - 1} more problem(s))"
    where = str(where)
    if loc:
        where = f"{where}.{loc}" if ": " in where else f"{where}: {loc}"
    return ConfigError(msg, where)


class Interrupted(KeyboardInterrupt):
    """The run was asked to stop (SIGTERM; Ctrl-C is KeyboardInterrupt): it unwinds like Ctrl-C, so every
    transaction in flight rolls back and every lock is released, and the process exits 128 + signal."""

    def __init__(self, signum: int):
        super().__init__(signum)
        self.signum = signum


class DataError(SaebenchError):
    """Input data (a corpus, a probe task's texts) is empty or unusable."""


def one_line(exc: BaseException, limit: int = 2000, *, with_type: bool = True) -> str:
    """An exception as one line ("Type: message", whitespace collapsed), at most ``limit`` characters:
    what a cell's error, a failed latent, a plugin failure and a log line show."""
    text = " ".join(str(exc).split())
    if with_type:
        text = f"{type(exc).__name__}: {text}" if text else type(exc).__name__
    text = text or type(exc).__name__
    return text if len(text) <= limit else text[: limit - 1] + "…"
