"""Building, loading and saving SAEs. Loader plugins read formats; this module holds what they share.

Every failure a user can cause (a missing file, a truncated safetensors, a
tensor of the wrong shape, NaN weights, a pickle without permission) becomes a
:class:`~saebench.errors.CheckpointError` (or, for a bad config value, a
:class:`~saebench.errors.ConfigError`) naming the file and the problem.
"""

from __future__ import annotations

import inspect
import json
import struct
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from saebench import plugin_manager
from saebench.errors import CheckpointError, ConfigError, PluginError, SaebenchError, one_line, validation_error
from saebench.files import private_name, write_atomic
from saebench.interfaces import SAELoader
from saebench.sae import DTYPES, SAE, SAEConfig

NATIVE_FORMAT_VERSION = 1
NATIVE_CONFIG = "cfg.json"
NATIVE_WEIGHTS = "sae_weights.safetensors"


# -- the public API ------------------------------------------------------------------------------
def build_sae(arch: str, weights: Mapping[str, Any], **config: Any) -> SAE:
    """An SAE of architecture ``arch`` from SAELens-named weights; d_in and d_sae default to W_enc's shape."""
    cls = plugin_manager.get("architecture", arch)
    if "W_enc" in weights and getattr(weights["W_enc"], "ndim", 0) == 2:
        d_in, d_sae = weights["W_enc"].shape
        config.setdefault("d_in", int(d_in))
        config.setdefault("d_sae", int(d_sae))
    where = config.pop("where", None)
    take = bool(config.pop("take", False))  # the weights are the caller's to give away (see SAE.from_weights)
    cfg = make_config(dict(config, arch=arch), where=where or "build_sae")
    if take and "take" in inspect.signature(cls.from_weights).parameters:  # a plugin's override may predate it
        return cls.from_weights(weights, cfg, where=where, take=True)
    return cls.from_weights(weights, cfg, where=where)


def make_config(data: Mapping[str, Any], where: str | Path) -> SAEConfig:
    """SAEConfig from a mapping, turning pydantic's report into a one-line ConfigError."""
    try:
        return SAEConfig(**data)
    except ValidationError as exc:
        raise validation_error(exc, where) from None
    except TypeError as exc:
        raise ConfigError(str(exc), where) from None


def load_sae(
    path: str | Path,
    format: str = "auto",
    *,
    allow_pickle: bool = False,
    device: str | torch.device | None = None,
) -> SAE:
    """Load an SAE from a file or folder in any registered format (``format="auto"`` detects it), or from
    ``hf://ORG/REPO/SUBFOLDER[@REVISION]``: those files, fetched into the Hugging Face cache (saebench.models.hub)."""
    if isinstance(path, str) and path.startswith("hf://"):
        from saebench.models import hub

        local = hub.resolve(path)
        try:
            sae = load_sae(local, format, allow_pickle=allow_pickle, device=device)
        except SaebenchError as exc:  # name the published file, not the cache's copy of it
            raise hub.localised(exc, local, path) from None
        sae.cfg.metadata["path"] = path
        return sae
    path = Path(path)
    try:
        exists = path.exists()
    except OSError as exc:  # a name too long for the file system, say
        raise CheckpointError(f"cannot access ({exc.strerror or exc})", str(path)[:200]) from None
    if not exists:
        raise CheckpointError("no such file or folder", path)
    registry = plugin_manager.get_registry()
    if format == "auto":
        found = [info.obj() for info in registry.of_kind("loader")]
        found = [ld for ld in found if _safe_detect(ld, path)]
        if not found:
            known = ", ".join(registry.names("loader"))
            hint = "; convert pickles to safetensors" if path.suffix in (".pt", ".pth", ".bin", ".ckpt", ".pkl") else ""
            raise CheckpointError(
                f"not a checkpoint in any known format ({known}){hint}; pass format= to force one", path
            )
        loader = max(found, key=lambda ld: ld.priority)
    else:
        loader = registry.get("loader", format)()
    sae = loader.load(path, allow_pickle=allow_pickle)
    sae.cfg.metadata.setdefault("format", loader.name)
    sae.cfg.metadata.setdefault("path", str(path.resolve()))
    return sae.to(device) if device is not None else sae


def _safe_detect(loader: SAELoader, path: Path) -> bool:
    try:
        return bool(loader.detect(path))
    except Exception:
        return False


def save_sae(sae: SAE, path: str | Path) -> Path:
    """Write ``sae`` in the native format: ``cfg.json`` (SAEConfig + format marker) and ``sae_weights.safetensors``."""
    from safetensors.torch import save_file

    folder = Path(path)
    folder.mkdir(parents=True, exist_ok=True)
    cfg = sae.cfg.model_dump(mode="json")
    cfg["saebench_format"] = NATIVE_FORMAT_VERSION
    tmp = private_name(folder / NATIVE_WEIGHTS)
    save_file({k: v.contiguous().cpu() for k, v in sae.weights().items()}, str(tmp))
    tmp.replace(folder / NATIVE_WEIGHTS)  # never leave a half-written checkpoint under the real name
    write_atomic(folder / NATIVE_CONFIG, json.dumps(cfg, indent=2) + "\n")
    return folder


# -- readers shared by the loader plugins ------------------------------------------------------
def checkpoint_folder(path: Path, weights: str) -> Path:
    """The folder of a one-folder checkpoint, given the folder or its weights file ``weights``."""
    return path.parent if path.is_file() and path.name == weights else path


def read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError("missing weights file", path)
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise CheckpointError(f"corrupt or truncated safetensors ({_short(exc)})", path) from None


def read_npz(path: Path) -> dict[str, torch.Tensor]:
    if not path.is_file():
        raise CheckpointError("missing weights file", path)
    try:
        with np.load(path, allow_pickle=False) as data:
            return {k: torch.from_numpy(np.array(data[k])) for k in data.files}
    except (
        zipfile.BadZipFile,
        ValueError,
        OSError,
        EOFError,
        KeyError,
        zlib.error,
        struct.error,
        NotImplementedError,
        RuntimeError,
    ) as exc:  # zipfile: unsupported version/compression, "encrypted"
        raise CheckpointError(f"corrupt or truncated npz ({_short(exc)})", path) from None


def read_config(path: Path) -> dict[str, Any]:
    """A JSON (``.json``) or YAML (anything else) file that must hold a mapping."""
    import yaml

    if not path.is_file():
        raise CheckpointError("missing config file", path)
    kind = "JSON" if path.suffix == ".json" else "YAML"
    try:
        text = path.read_text()
        data = json.loads(text) if kind == "JSON" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"invalid {kind} ({_short(exc)})", path) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"expected a {kind} object, got {type(data).__name__}", path)
    return data


def read_pickle(path: Path, allow_pickle: bool) -> dict[str, Any]:
    """A torch-pickled state dict, only with ``allow_pickle``, and then with ``weights_only=True``."""
    if not allow_pickle:
        raise CheckpointError(
            "is a pickle file, which can run code when loaded; convert it to safetensors, "
            "or pass allow_pickle=True (--allow-pickle, or allow_pickle: true in a matrix) to read it "
            "with torch.load(weights_only=True)",
            path,
        )
    if not path.is_file():
        raise CheckpointError("missing weights file", path)
    try:
        data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises UnpicklingError, RuntimeError, EOFError... for bad files
        raise CheckpointError(f"unreadable pickle ({_short(exc)})", path) from None
    if not isinstance(data, dict):
        raise CheckpointError(f"expected a state dict, got {type(data).__name__}", path)
    return data


def build_checkpoint(
    arch: str,
    tensors: Mapping[str, Any],
    where: str | Path,
    *,
    names: Mapping[str, str] | None = None,
    cfg_where: str | Path | None = None,
    **config: Any,
) -> SAE:
    """:func:`build_sae` for loader plugins: every problem becomes a CheckpointError naming a file.

    ``names`` maps SAELens names to the checkpoint's own (``"encoder.weight.T"``: that tensor,
    transposed); without it ``tensors`` already uses SAELens names. Problems with the weights name
    ``where``, problems with config values (a bad ``k``...) name ``cfg_where`` (default ``where``).
    """
    names = dict(names) if names is not None else {n: n for n in tensors}
    weights: dict[str, Any] = {}
    missing = [t.removesuffix(".T") for t in names.values() if t.removesuffix(".T") not in tensors]
    if missing:
        raise CheckpointError(f"missing tensor(s) {', '.join(missing)}", where)
    for ours, theirs in names.items():
        key = theirs.removesuffix(".T")
        value = tensors[key]
        if not isinstance(value, torch.Tensor):
            raise CheckpointError(f"{key} is a {type(value).__name__}, expected a tensor", where)
        if key != theirs:
            if value.ndim != 2:
                raise CheckpointError(f"tensor {key} has shape {list(value.shape)}, expected a matrix", where)
            value = value.T
        weights[ours] = value
    try:
        return build_sae(arch, weights, where=str(where), take=True, **config)  # a loader's tensors, read just now
    except (ConfigError, PluginError) as exc:  # a config value: name the config file (and the key)
        option = exc.where.split(": ", 1)[1] if exc.where and ": " in exc.where else None
        raise CheckpointError(
            exc.problem, f"{cfg_where or where}: {option}" if option else (cfg_where or where)
        ) from None
    except CheckpointError as exc:
        if exc.where is None:  # raised by an architecture's validate_config, which knows no file
            raise CheckpointError(exc.problem, cfg_where or where) from None
        alias = [f"{o} is {t} here" for o, t in names.items() if o != t and exc.problem.startswith(f"tensor {o} ")]
        if alias:
            raise CheckpointError(f"{exc.problem} ({alias[0]})", exc.where) from None
        raise


def dtype_name(dtype: Any, default: str = "float32") -> str:
    """SAEConfig's name for a torch dtype or a peer's string (``"torch.bfloat16"``); ``default`` if it is not one."""
    name = str(dtype).removeprefix("torch.")
    return name if name in DTYPES else default


def masked_relu_threshold(threshold: torch.Tensor) -> torch.Tensor:
    """θ for our JumpReLU h·1[h>θ] that gives SAELens's and Gemma Scope's ReLU(h)·1[h>θ] exactly: max(θ, 0)."""
    return threshold.clamp(min=0) if isinstance(threshold, torch.Tensor) else threshold


def _short(exc: BaseException) -> str:
    return one_line(exc, 161, with_type=False)
