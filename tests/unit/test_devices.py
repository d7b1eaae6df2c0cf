"""``device:`` and ``dtype:`` on the matrix and its models: resolution, hashing, errors."""

from __future__ import annotations

import copy

import pytest
import torch
from test_plan import MATRIX

from saebench.errors import ConfigError
from saebench.models import devices
from saebench.run.components import build_components
from saebench.run.context import RunContext
from saebench.run.matrix import Matrix, check_matrix
from saebench.run.plan import make_plan


def plan(**changes):
    m = copy.deepcopy(MATRIX)
    models = changes.pop("models", {})
    m.update(changes)
    m["models"][0].update(models)
    matrix = Matrix.model_validate(m)
    return make_plan(matrix, "m.yaml", build_components(matrix, "m.yaml"))


def hashes(p):
    return {c.key: c.config_hash for c in p.cells}


def test_auto_is_cuda_only_where_torch_sees_it(monkeypatch):
    assert devices.resolve("auto", "x") == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert devices.resolve("auto", "x") == "cuda"
    assert devices.resolve("cuda:1", "x") == "cuda:1"
    with pytest.raises(ConfigError, match="has 2 CUDA device"):
        devices.resolve("cuda:2", "x")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert devices.resolve("auto", "x") == "cpu"
    with pytest.raises(ConfigError, match="sees no CUDA device") as err:
        devices.resolve("cuda", "m.yaml: device")
    assert str(err.value).startswith("m.yaml: device: ") and "\n" not in str(err.value)


def test_the_device_is_not_in_any_hash_and_the_dtype_is():
    base = plan()
    assert hashes(plan(device="auto")) == hashes(base) == hashes(plan(models={"device": "cpu"}))
    # the golden matrix's options already say dtype float32: the same value given as dtype changes nothing
    assert hashes(plan(dtype="float32")) == hashes(base)
    bf16 = plan(models={"dtype": "bfloat16", "options": {}})
    assert set(hashes(bf16).values()).isdisjoint(hashes(base).values())
    assert bf16.model_desc("gemma")["options"] == {"dtype": "bfloat16"}
    assert plan(dtype="bfloat16", models={"options": {}}).model_desc("gemma") == bf16.model_desc("gemma")


def test_the_adapter_gets_the_resolved_device(monkeypatch):
    from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    p = plan(device="auto")
    ctx = RunContext(p, build_components(p.matrix, "m.yaml"))
    assert ctx._adapter_options("gemma", HFCausalLMAdapter) == {"dtype": "float32", "device": "cuda"}
    p = plan(device="auto", models={"device": "cpu"})
    ctx = RunContext(p, build_components(p.matrix, "m.yaml"))
    assert ctx._adapter_options("gemma", HFCausalLMAdapter) == {"dtype": "float32", "device": "cpu"}


def test_check_matrix_resolves_devices_before_any_work(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    m = copy.deepcopy(MATRIX)
    m["models"][0]["device"] = "cuda"
    with pytest.raises(ConfigError, match=r"m.yaml: models\[0\].device: device 'cuda' asks for CUDA"):
        check_matrix(Matrix.model_validate(m), "m.yaml")
    m["executor"] = {"ray": {"address": "auto"}}  # Ray's workers have the GPUs, not the driver: checked past it
    with pytest.raises(ConfigError, match=r"saes\[0\].path: no such checkpoint"):
        check_matrix(Matrix.model_validate(m), "m.yaml")


def test_cache_dtype_keys_the_activation_caches_only_when_it_is_not_float32():
    base, same, half = plan(), plan(cache_dtype="float32"), plan(cache_dtype="bfloat16")
    assert base.saes["ckpt"].eval_cache == same.saes["ckpt"].eval_cache
    assert base.saes["ckpt"].eval_cache != half.saes["ckpt"].eval_cache
    assert base.saes["topk"].train_cache != half.saes["topk"].train_cache
    assert hashes(base) == hashes(same) and set(hashes(half).values()).isdisjoint(hashes(base).values())
    assert base.saes["topk"].train_hash == same.saes["topk"].train_hash != half.saes["topk"].train_hash
