"""Where an SAE of the matrix comes from, checked before any work starts.

A checkpoint (``path``: a local file or folder, or ``hf://ORG/REPO/SUBFOLDER[@REVISION]``), a
published SAE (``release`` + ``sae_id``, looked up in SAELens's directory and turned into its
``hf://`` path, which ``path`` then holds), a training block or a baseline block. An ``hf://``
checkpoint need not exist here: the run fetches it (:func:`fetch_published`) before planning, so
the plan's hashes see the commit it resolves to.

A checkpoint entry without ``hookpoint`` takes it from the checkpoint (saebench.models.hooknames),
reading its config alone (an ``hf://`` SAE's JSON and YAML files are fetched for that, not its
weights). A hook point the model's ``hookpoints`` do not list is added to them for the
hf-causal-lm adapter, whose names the mapping gives; a model of another adapter must list it.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from saebench import plugin_manager
from saebench.errors import ConfigError, PluginError, SaebenchError
from saebench.models import hub
from saebench.models.hooknames import checkpoint_hook_name, to_hookpoint
from saebench.training import TrainConfig
from saebench.training.baselines import BaselineConfig

#: the adapter whose hook point names saebench.models.hooknames maps checkpoints' hook names to
MAPPED_ADAPTER = "hf-causal-lm"


def check_plugin(kind: str, name: str, path: str | Path, where: str) -> None:
    try:
        plugin_manager.get(kind, name)
    except PluginError as exc:
        raise ConfigError(exc.problem, f"{path}: {where}") from None


def check_source(sae: Any, model: Any, path: str | Path, where: str) -> None:
    """A checkpoint that exists in a known format (or an hf:// path, or a release that resolves to one), a
    training block or a baseline block that validates; an omitted hook point taken from the checkpoint.
    ``sae`` is the matrix's SAESpec and ``model`` its ModelSpec, which both may be completed here."""
    if sae.release is not None or sae.sae_id is not None:
        _resolve_release(sae, path, where)
    if sae.path is None and not sae.hookpoint:
        raise ConfigError("a train or baseline entry needs 'hookpoint'", f"{path}: {where}.hookpoint")
    if sae.baseline is not None:
        BaselineConfig.from_mapping(sae.baseline, f"{path}: {where}.baseline", sae.hookpoint)
        return
    if sae.path is not None:
        if hub.is_hub_path(sae.path):
            try:
                hub.parse(sae.path)
            except ConfigError as exc:
                raise exc.inside(f"{path}: {where}.path") from None
        else:
            _check_local(sae.path, path, where)
        if sae.format != "auto":
            check_plugin("loader", sae.format, path, f"{where}.format")
        if not sae.hookpoint:
            _infer_hookpoint(sae, model, path, where)
        return
    arch = (sae.train or {}).get("arch")
    if not isinstance(arch, str):
        raise ConfigError("a train block needs 'arch'", f"{path}: {where}.train.arch")
    check_plugin("architecture", arch, path, f"{where}.train.arch")
    TrainConfig.from_mapping(sae.train, f"{path}: {where}.train")


def _check_local(checkpoint: str, path: str | Path, where: str) -> None:
    try:
        exists = Path(checkpoint).exists()
    except (OSError, ValueError) as exc:  # a name too long for the file system, say
        problem = getattr(exc, "strerror", None) or str(exc)
        raise ConfigError(
            f"cannot use checkpoint path {checkpoint[:200]!r}: {problem}", f"{path}: {where}.path"
        ) from None
    if not exists:
        raise ConfigError(f"no such checkpoint {checkpoint!r}", f"{path}: {where}.path")


def _resolve_release(sae: Any, path: str | Path, where: str) -> None:
    if sae.release is None or sae.sae_id is None:
        missing = "sae_id" if sae.sae_id is None else "release"
        raise ConfigError(f"release and sae_id go together: add '{missing}'", f"{path}: {where}.{missing}")
    resolved = hub.release_path(sae.release, sae.sae_id, f"{path}: {where}")
    if sae.path is not None and sae.path != resolved:  # equal: a matrix this check completed, validated again
        raise ConfigError("give 'path' or 'release' with 'sae_id', not both", f"{path}: {where}")
    sae.path = resolved


def model_hookpoint(name: str, model: Any, key: str, field: str) -> str:
    """The model's hook point for a hook name a checkpoint gives (``field``: the SAE entry's key that
    would set it instead), added to the model's hookpoints for hf-causal-lm, whose names are mapped."""
    hookpoint = name
    if name not in model.hookpoints:
        try:
            hookpoint = to_hookpoint(name)
        except ValueError as exc:
            raise ConfigError(f"the checkpoint's hook {name!r} is no hook point ({exc}): add '{field}'", key) from None
    if hookpoint not in model.hookpoints:
        if model.adapter != MAPPED_ADAPTER:
            raise ConfigError(
                f"the checkpoint's hook {name!r} is hook point {hookpoint!r} of {MAPPED_ADAPTER}, which model "
                f"{model.name!r} does not list: add it to the model's hookpoints, or give '{field}'",
                key,
            )
        model.hookpoints.append(hookpoint)
    return hookpoint


def _infer_hookpoint(sae: Any, model: Any, path: str | Path, where: str) -> None:
    key = f"{path}: {where}.hookpoint"
    try:
        local = hub.resolve(sae.path, configs_only=True) if hub.is_hub_path(sae.path) else Path(sae.path)
        name = checkpoint_hook_name(local, sae.path)
    except SaebenchError as exc:  # an hf:// SAE that cannot be fetched, a corrupt config: a matrix error here
        raise ConfigError(exc.problem, f"{path}: {where}.path" + (f": {exc.where}" if exc.where else "")) from None
    if name is None:
        raise ConfigError("the checkpoint names no hook point (in its config or its path): add 'hookpoint'", key)
    hookpoint = model_hookpoint(name, model, key, "hookpoint")
    sae.hookpoint = hookpoint
    sae.inferred_from(name)


def fetch_published(saes: list[Any], source: str) -> None:
    """Fetch every ``hf://`` SAE into the Hugging Face cache (a no-op for one that is there), so the plan's hashes
    see the commit each resolves to from the first run on."""
    for i, sae in enumerate(saes):
        if hub.is_hub_path(sae.path):
            try:
                hub.resolve(sae.path)
            except SaebenchError as exc:
                raise exc.inside(f"{source}: saes[{i}].path") from None
