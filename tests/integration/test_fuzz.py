"""Fuzzing the matrix parser and the checkpoint loaders: bad input is a SaebenchError, never a crash.

``parse_matrix`` gets random YAML-like structures and mutations of a valid matrix (keys deleted,
values swapped for other types, huge and negative numbers, unicode); ``load_sae`` gets valid
checkpoints (native, SAELens, Gemma Scope) with truncated, bit-flipped, overwritten or re-typed
files. Either the call succeeds or it raises :class:`saebench.errors.SaebenchError`; any other
exception is a bug.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from safetensors.torch import save_file

import saebench
from reference import random_weights
from saebench.errors import SaebenchError
from saebench.run.matrix import Matrix, parse_matrix

D_IN, D_SAE = 8, 16
SCALE = int(os.environ.get("SAEBENCH_FUZZ_SCALE", "1"))  # more examples when hunting: SAEBENCH_FUZZ_SCALE=20
FUZZ = dict(deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])

# -- the matrix parser ---------------------------------------------------------------------------
KEYS = ["name", "output", "seed", "cache_dir", "data", "models", "saes", "scorers", "llms", "explainers", "interp",
        "source", "tokens", "context_length", "paths", "adapter", "path", "hookpoints", "options", "model",
        "hookpoint", "format", "allow_pickle", "train", "arch", "d_sae", "k", "client", "llm", "latents", "judge"]
NAMES = ["sparsity", "reconstruction", "sparse_probing", "detection", "top-tokens", "relu", "topk", "native",
         "text-files", "hf-causal-lm", "anthropic", "tiny", "layers.1", "sae", "judge", "explainer"]
scalars = st.one_of(
    st.none(), st.booleans(),
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.sampled_from(NAMES + KEYS + ["", " ", "\x00", "é", "層", "🙂", "a" * 5000, "../..", "~"]),
    st.text(max_size=30),
)
keys = st.one_of(st.sampled_from(KEYS), st.text(max_size=10), st.integers(-3, 3), st.booleans(), st.none())
values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=4),
                                                      st.dictionaries(keys, inner, max_size=5)), max_leaves=20)


@pytest.fixture(scope="module")
def base_matrix(tmp_path_factory) -> dict[str, Any]:
    """A valid matrix (parse_matrix checks that the checkpoint exists, not the model)."""
    d = tmp_path_factory.mktemp("fuzz-matrix")
    saebench.save_sae(saebench.build_sae("relu", random_weights(D_IN, D_SAE, arch="relu")), d / "sae")
    raw = {
        "name": "fuzz", "output": str(d / "out"), "seed": 0,
        "data": {"source": "text-files", "paths": [str(d / "*.txt")], "tokens": 1024, "context_length": 64},
        "models": [{"name": "tiny", "path": str(d / "model"), "hookpoints": ["layers.1"]}],
        "saes": [{"name": "relu", "model": "tiny", "hookpoint": "layers.1", "path": str(d / "sae")},
                 {"name": "t", "model": "tiny", "hookpoint": "layers.1", "train": {"arch": "topk", "d_sae": 64, "k": 4,
                                                                                    "tokens": 4096}}],
        "scorers": ["sparsity", {"name": "reconstruction", "options": {"batch_tokens": 256}}],
        "llms": {"judge": {"client": "anthropic", "model": "m"}},
        "interp": {"latents": 8},
    }
    assert isinstance(parse_matrix(raw, "fuzz"), Matrix)
    return raw


def parse(raw: Any, tried: list[int]) -> None:
    tried[0] += 1
    try:
        assert isinstance(parse_matrix(raw, "fuzz"), Matrix)
    except SaebenchError as exc:
        assert exc.problem  # a message a user can act on (the CLI prints it on one line)


def paths_of(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every key path into nested dicts and lists."""
    out = [prefix] if prefix else []
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out += paths_of(v, prefix + (k,))
    return out


@st.composite
def mutated(draw, base: dict[str, Any]) -> dict[str, Any]:
    raw = json.loads(json.dumps(base))
    for _ in range(draw(st.integers(1, 4))):
        paths = paths_of(raw)
        if not paths:
            break
        path = draw(st.sampled_from(paths))
        parent = raw
        for k in path[:-1]:
            parent = parent[k]
        op = draw(st.sampled_from(["delete", "replace", "replace", "add"]))
        if op == "delete":
            del parent[path[-1]]
        elif op == "replace":
            parent[path[-1]] = draw(values)
        elif isinstance(parent, dict):
            parent[draw(keys)] = draw(values)
        else:
            parent.append(draw(values))
    return raw


TRIED_MATRICES = [0]


@settings(**FUZZ, max_examples=120 * SCALE)
@given(raw=values)
def test_parse_matrix_random_structures(raw):
    parse(raw, TRIED_MATRICES)
    parse({"name": "x", "output": "o", "models": raw, "saes": raw}, TRIED_MATRICES)


def test_parse_matrix_mutations(base_matrix):
    @settings(**FUZZ, max_examples=200 * SCALE)
    @given(raw=mutated(base_matrix))
    def run(raw):
        parse(raw, TRIED_MATRICES)

    run()
    assert TRIED_MATRICES[0] >= 200 * SCALE


# -- the checkpoint loaders ------------------------------------------------------------------------
def native(folder: Path) -> None:
    saebench.save_sae(saebench.build_sae("topk", random_weights(D_IN, D_SAE, arch="topk"), k=4), folder)


def saelens(folder: Path) -> None:
    folder.mkdir(parents=True)
    save_file(random_weights(D_IN, D_SAE, arch="jumprelu"), str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"architecture": "jumprelu", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32",
                                                 "metadata": {"model_name": "m", "hook_name": "layers.1"}}))


def gemmascope(folder: Path) -> None:
    folder.mkdir(parents=True)
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in random_weights(D_IN, D_SAE, arch="jumprelu").items()})


CHECKPOINTS = {
    "native": (native, ["sae_weights.safetensors", "cfg.json"]),
    "saelens": (saelens, ["sae_weights.safetensors", "cfg.json"]),
    "gemmascope": (gemmascope, ["params.npz"]),
}


@st.composite
def damaged(draw, data: bytes) -> bytes:
    """Truncated, bit-flipped, partly overwritten or random bytes."""
    kind = draw(st.sampled_from(["truncate", "flip", "flip", "overwrite", "random", "insert"]))
    if kind == "truncate":
        return data[: draw(st.integers(0, max(len(data) - 1, 0)))]
    if kind == "random":
        return draw(st.binary(max_size=512))
    buf = bytearray(data)
    if kind == "flip":
        for _ in range(draw(st.integers(1, 8))):
            # the headers (safetensors JSON, zip and npy headers, cfg.json) sit at the ends: favour them
            i = draw(st.one_of(st.integers(0, min(len(buf), 400) - 1), st.integers(0, len(buf) - 1),
                               st.integers(max(len(buf) - 300, 0), len(buf) - 1)))
            buf[i] ^= 1 << draw(st.integers(0, 7))
        return bytes(buf)
    at = draw(st.integers(0, len(buf)))
    chunk = draw(st.binary(min_size=1, max_size=64))
    if kind == "insert":
        return bytes(buf[:at] + chunk + buf[at:])
    return bytes(buf[:at] + chunk + buf[at + len(chunk):])


@st.composite
def config_edit(draw, cfg: dict[str, Any]) -> dict[str, Any]:
    """cfg.json with keys deleted, added or given values of other types (huge numbers, unicode...)."""
    cfg = json.loads(json.dumps(cfg))
    json_values = st.recursive(
        st.one_of(st.none(), st.booleans(), st.integers(-(2**64), 2**64), st.floats(allow_nan=False),
                  st.sampled_from([0, -1, 1, 4, D_IN, D_SAE, 10**12, "float16", "bfloat16", "topk", "jumprelu", "relu",
                                   "gated", "standard", "", "層🙂"]), st.text(max_size=12)),
        lambda inner: st.one_of(st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)),
        max_leaves=8)
    extra_keys = ["arch", "architecture", "d_in", "d_sae", "k", "dtype", "metadata", "apply_b_dec_to_input", "act_scale",
                  "saebench_format", "hook_name", "where", "names", "cfg_where", "tensors", "activation_fn",
                  "normalize_activations", "rescale_acts_by_decoder_norm"]
    for _ in range(draw(st.integers(1, 3))):
        op = draw(st.sampled_from(["delete", "set", "set"]))
        if op == "delete" and cfg:
            cfg.pop(draw(st.sampled_from(sorted(cfg))))
        else:
            cfg[draw(st.sampled_from(extra_keys) if draw(st.integers(0, 3)) else st.text(max_size=8))] = draw(json_values)
    return cfg


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("fuzz-checkpoints")
    for fmt, (make, _) in CHECKPOINTS.items():
        make(root / fmt)
        saebench.load_sae(root / fmt, fmt)  # valid before it is damaged
    return {fmt: root / fmt for fmt in CHECKPOINTS}


def load(folder: Path, fmt: str, tried: list[int]) -> None:
    tried[0] += 1
    try:
        saebench.load_sae(folder, fmt)
    except SaebenchError:
        pass


TRIED_CHECKPOINTS = {fmt: [0] for fmt in CHECKPOINTS}


@pytest.mark.parametrize("fmt", list(CHECKPOINTS))
def test_loaders_survive_damaged_files(fmt, checkpoints):
    valid = checkpoints[fmt]
    files = {name: (valid / name).read_bytes() for name in CHECKPOINTS[fmt][1]}

    @settings(**FUZZ, max_examples=100 * SCALE)
    @given(data=st.data())
    def run(data):
        name = data.draw(st.sampled_from(sorted(files)))
        if name == "cfg.json" and data.draw(st.booleans()):
            content = json.dumps(data.draw(config_edit(json.loads(files[name])))).encode()
        else:
            content = data.draw(damaged(files[name]))
        with tempfile.TemporaryDirectory() as tmp:
            folder = Path(tmp) / fmt
            shutil.copytree(valid, folder)
            (folder / name).write_bytes(content)
            load(folder, data.draw(st.sampled_from([fmt, "auto"])), TRIED_CHECKPOINTS[fmt])

    run()
    assert TRIED_CHECKPOINTS[fmt][0] >= 100 * SCALE
