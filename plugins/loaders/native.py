"""saebench's native checkpoint: a folder with cfg.json (or cfg.yaml) and sae_weights.safetensors.

The layout is SAELens's; the config is a dumped :class:`saebench.SAEConfig` with
``saebench_format: 1``, which is what tells it apart from a SAELens folder.
"""

from __future__ import annotations

from pathlib import Path

import saebench
from saebench import loading


class NativeLoader(saebench.SAELoader):
    """saebench's own folder: cfg.json (SAEConfig + saebench_format) or cfg.yaml, and sae_weights.safetensors."""

    name = "native"
    priority = 10

    @staticmethod
    def _config_file(path: Path) -> Path | None:
        for name in ("cfg.json", "cfg.yaml", "cfg.yml"):
            if (path / name).is_file():
                return path / name
        return None

    def detect(self, path: Path) -> bool:
        cfg_file = self._config_file(path) if path.is_dir() else None
        if cfg_file is None:
            return False
        return "saebench_format" in cfg_file.read_text(errors="replace")

    def load(self, path: Path, *, allow_pickle: bool = False) -> saebench.SAE:
        cfg_file = self._config_file(path) if path.is_dir() else None
        if cfg_file is None:
            raise saebench.CheckpointError("expected a folder with cfg.json or cfg.yaml", path)
        raw = loading.read_config(cfg_file)
        version = raw.pop("saebench_format", None)
        if version != loading.NATIVE_FORMAT_VERSION:
            raise saebench.CheckpointError(
                f"saebench_format {version!r} is not supported (expected {loading.NATIVE_FORMAT_VERSION})", cfg_file
            )
        arch = raw.pop("arch", None)
        if not isinstance(arch, str):
            raise saebench.CheckpointError("no 'arch' (architecture name) in the config", cfg_file)
        # the rest become SAEConfig fields through build_checkpoint(**raw): a key that is not a string, or that
        # is one of build_checkpoint's own parameters, would be a TypeError there rather than a config error
        bad = [key for key in raw if not isinstance(key, str) or key in ("tensors", "where", "names", "cfg_where")]
        if bad:
            raise saebench.CheckpointError(f"unknown config key {bad[0]!r}", cfg_file)
        weights_file = path / loading.NATIVE_WEIGHTS
        tensors = loading.read_safetensors(weights_file)
        return loading.build_checkpoint(arch, tensors, weights_file, cfg_where=cfg_file, **raw)


@saebench.hookimpl
def register_loaders(register):
    register(NativeLoader)
