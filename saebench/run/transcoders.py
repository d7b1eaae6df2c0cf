"""Transcoders in a matrix: the hook point each writes (what is compared there: saebench.run.targets).

A transcoder reads ``hookpoint`` and writes ``hookpoint_out`` (an SAE entry without ``hookpoint_out``
is an SAE). An entry that omits it takes it from its checkpoint (saebench.models.hooknames): from its
config files for a local checkpoint or an ``hf://`` one whose hook point was taken from its config
too (those files are fetched already), else from its path alone (a Gemma Scope 2 ``transcoder/``
folder), so that checking a matrix fetches nothing more than it did. Train and baseline entries are
SAEs: saebench trains no transcoders.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from pydantic import model_serializer

from saebench.errors import ConfigError, SaebenchError
from saebench.models import hub
from saebench.models.hooknames import checkpoint_hook_name_out
from saebench.run.sources import model_hookpoint


@model_serializer(mode="wrap")
def dump_entry(self: Any, handler: Any) -> Any:
    """SAESpec's serializer: ``hookpoint_out`` only when set, so an SAE's entry dumps (and is stored) as before."""
    return {k: v for k, v in handler(self).items() if k != "hookpoint_out" or v is not None}


def check_hookpoint_out(sae: Any, model: Any, path: str | Path, where: str) -> None:
    """Complete and check an SAE entry's ``hookpoint_out`` (``sae`` a SAESpec, ``model`` its ModelSpec), after
    its source and hook point are checked."""
    key = f"{path}: {where}.hookpoint_out"
    if sae.path is None:
        if sae.hookpoint_out is not None:
            raise ConfigError("saebench trains and builds SAEs, not transcoders: give a checkpoint 'path'", key)
        return
    if sae.hookpoint_out is None:
        name = _named_out(sae, path, where)
        if name is None:
            return
        sae.hookpoint_out = model_hookpoint(name, model, key, "hookpoint_out")
    if sae.hookpoint_out == sae.hookpoint:
        raise ConfigError(f"hookpoint_out is {sae.hookpoint!r}, the hook point it reads: omit it for an SAE", key)
    if sae.hookpoint_out not in model.hookpoints:
        raise ConfigError(
            f"hook point {sae.hookpoint_out!r} is not among model {model.name!r}'s hookpoints "
            f"({', '.join(model.hookpoints)})",
            key,
        )


def _named_out(sae: Any, path: str | Path, where: str) -> str | None:
    """The hook name the checkpoint writes, if it names one (see the module docstring for what is read)."""
    try:
        if not hub.is_hub_path(sae.path):
            local: Path | None = Path(sae.path)
        else:
            local = hub.resolve(sae.path, configs_only=True) if sae.hook_name is not None else None
        return checkpoint_hook_name_out(local, sae.path)
    except SaebenchError as exc:  # a corrupt config: a matrix error here, as for the hook point it reads
        raise ConfigError(exc.problem, f"{path}: {where}.path" + (f": {exc.where}" if exc.where else "")) from None
