"""A corpus of malformed inputs, each run through the console script as a user would.

Every case starts from a copy of one valid matrix whose results store already holds a finished
cell, breaks one thing, and runs ``saebench run matrix.yaml --quiet`` (or ``saebench inspect``).
Each must end with exit code 2 and exactly one line on stderr, ``saebench: error: WHERE: PROBLEM``
naming the place (the file, the key path or the checkpoint), no traceback, and the existing
results store untouched. The cases run as subprocesses, two at a time, in one module fixture.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import sqlite3
import subprocess
import sys
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
import yaml
from safetensors.torch import save_file

import saebench
from reference import random_weights

SAEBENCH = Path(sys.executable).parent / "saebench"
D_MODEL, D_SAE = 32, 64
OUTPUT = "runs/base"


# -- building blocks ------------------------------------------------------------------------------
def load(d: Path) -> dict[str, Any]:
    return yaml.safe_load((d / "matrix.yaml").read_text())


def save(d: Path, m: Any) -> None:
    (d / "matrix.yaml").write_text(yaml.safe_dump(m, sort_keys=False, allow_unicode=True))


def edit(fn: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    """A malformation that edits the parsed matrix in place."""

    def apply(d: Path) -> None:
        m = load(d)
        fn(m)
        save(d, m)

    return apply


def text(content: str | bytes) -> Callable[[Path], None]:
    """A malformation that replaces the whole matrix file."""

    def apply(d: Path) -> None:
        f = d / "matrix.yaml"
        f.write_bytes(content) if isinstance(content, bytes) else f.write_text(content)

    return apply


def sae_at(path: str, fmt: str | None = None) -> Callable[[dict[str, Any]], None]:
    def fn(m: dict[str, Any]) -> None:
        m["saes"][0]["path"] = path
        if fmt:
            m["saes"][0]["format"] = fmt

    return fn


def both(*steps: Callable[[Path], None]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        for step in steps:
            step(d)

    return apply


def native_sae(folder: Path, d_in: int = D_MODEL, d_sae: int = D_SAE, **changes: Any) -> Path:
    weights = random_weights(d_in, d_sae, arch="relu")
    weights.update(changes)
    return saebench.save_sae(saebench.build_sae("relu", weights, hook_name="layers.1"), folder)


def weights_file(d: Path) -> Path:
    return d / "sae" / "sae_weights.safetensors"


def cfg_file(d: Path) -> Path:
    return d / "sae" / "cfg.json"


def truncate(file: Callable[[Path], Path], keep: float | int) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        f = file(d)
        data = f.read_bytes()
        f.write_bytes(data[: int(len(data) * keep) if isinstance(keep, float) else keep])

    return apply


def overwrite(file: Callable[[Path], Path], content: bytes | str) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        f = file(d)
        f.write_bytes(content) if isinstance(content, bytes) else f.write_text(content)

    return apply


def cfg_edit(fn: Callable[[dict[str, Any]], Any]) -> Callable[[Path], None]:
    def apply(d: Path) -> None:
        cfg = json.loads(cfg_file(d).read_text())
        fn(cfg)
        cfg_file(d).write_text(json.dumps(cfg))

    return apply


def tensors_edit(fn: Callable[[dict[str, torch.Tensor]], Any]) -> Callable[[Path], None]:
    """Rewrite the native SAE's safetensors with changed tensors (cfg.json untouched)."""

    def apply(d: Path) -> None:
        from safetensors.torch import load_file

        tensors = load_file(str(weights_file(d)))
        fn(tensors)
        save_file({k: v.contiguous() for k, v in tensors.items()}, str(weights_file(d)))

    return apply


def gemmascope(folder: Path, d_in: int = D_MODEL, d_sae: int = D_SAE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    w = random_weights(d_in, d_sae, arch="jumprelu")
    np.savez(folder / "params.npz", **{k: v.numpy() for k, v in w.items()})
    return folder / "params.npz"


def saelens(folder: Path, d_in: int = D_MODEL, d_sae: int = D_SAE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    w = random_weights(d_in, d_sae, arch="relu")
    save_file(w, str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": d_in, "d_sae": d_sae, "dtype": "float32",
           "metadata": {"model_name": "tiny", "hook_name": "layers.1"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def sparsify(folder: Path, d_in: int = D_MODEL, d_sae: int = D_SAE) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    w = random_weights(d_in, d_sae, arch="relu")
    save_file({"encoder.weight": w["W_enc"].T.contiguous(), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"],
               "b_dec": w["b_dec"]}, str(folder / "sae.safetensors"))
    (folder / "cfg.json").write_text(json.dumps({"k": 8, "num_latents": d_sae, "d_in": d_in}))
    return folder


def openai(file: Path, d_in: int = D_MODEL, d_sae: int = D_SAE) -> Path:
    file.parent.mkdir(parents=True, exist_ok=True)
    w = random_weights(d_in, d_sae, arch="relu")
    save_file({"pre_bias": w["b_dec"], "latent_bias": w["b_enc"], "encoder.weight": w["W_enc"].T.contiguous(),
               "decoder.weight": w["W_dec"].T.contiguous()}, str(file))
    return file


def corrupt_middle(file: Path) -> None:
    """Overwrite the middle third of a file with 0xFF bytes (keeps the length)."""
    data = bytearray(file.read_bytes())
    n = len(data)
    data[n // 3: 2 * n // 3] = b"\xff" * (2 * n // 3 - n // 3)
    file.write_bytes(bytes(data))


DIRECTORY = "tiny-res-jb:\n  repo_id: saebench-test/absent\n  saes:\n  - {id: blocks.1.hook_resid_post, path: sae}\n"


def release(name: str, sae_id: str) -> Callable[[Path], None]:
    """The SAE as a release of the directory cli() points SAEBENCH_SAE_DIRECTORY at (saes.yaml in the case's folder)."""

    def fn(m: dict[str, Any]) -> None:
        del m["saes"][0]["path"]
        m["saes"][0].update(release=name, sae_id=sae_id)

    return both(overwrite(lambda d: d / "saes.yaml", DIRECTORY), edit(fn))


def empty_corpus(d: Path) -> None:
    (d / "empty").mkdir()
    for i in range(3):
        (d / "empty" / f"e{i}.txt").write_text("")
    edit(lambda m: m["data"].update(paths=["empty/*.txt"]))(d)


@dataclass
class Case:
    id: str
    make: Callable[[Path], Any]
    expect: tuple[str, ...]  # substrings of the one stderr line: the place, and the problem
    argv: tuple[str, ...] = ("run", "matrix.yaml", "--quiet")


M = "matrix.yaml: "
CASES = [
    # -- the file itself --------------------------------------------------------------------------
    Case("yaml-tab-indent", text("name: x\nmodels:\n\t- name: tiny\n"), ("matrix.yaml", "invalid YAML at line 3")),
    Case("yaml-unclosed-bracket", text("name: x\nscorers: [sparsity\n"), ("matrix.yaml", "invalid YAML")),
    Case("matrix-empty-file", text(""), ("matrix.yaml", "is empty")),
    Case("matrix-not-a-mapping", text("- sparsity\n- reconstruction\n"), ("matrix.yaml", "mapping", "list")),
    Case("binary-file-as-matrix", text(b"\x89PNG\r\n\x1a\n\x00\xff\xfe\x80" * 16), ("matrix.yaml", "not a text file")),
    Case("matrix-missing-file", lambda d: (d / "matrix.yaml").unlink(), ("matrix.yaml", "no such matrix file")),
    # -- types and keys ---------------------------------------------------------------------------
    Case("key-unknown", edit(lambda m: m.update(scorer=["sparsity"])), (M + "scorer", "Extra inputs")),
    Case("tokens-negative", edit(lambda m: m["data"].update(tokens=-1024)), (M + "data.tokens", "greater than 0")),
    Case("context_length-absurd", edit(lambda m: m["data"].update(context_length=10**12)), (M + "data", "fewer than")),
    Case("sae-name-duplicate", edit(lambda m: m["saes"].append(dict(m["saes"][0]))),
         (M + "saes[1].name", "duplicate")),
    # -- devices (this test machine has no CUDA: the cases are skipped where it has) -----------------
    *([] if torch.cuda.is_available() else [
        Case("device-cuda-without-cuda", edit(lambda m: m.update(device="cuda")), (M + "device", "CUDA", "no CUDA device")),
        Case("model-device-cuda-1", edit(lambda m: m["models"][0].update(device="cuda:1")), (M + "models[0].device", "CUDA")),
    ]),
    Case("device-unknown", edit(lambda m: m.update(device="tpu")), (M + "device", "unknown device 'tpu'")),
    Case("device-given-twice", edit(lambda m: m["models"][0].update(device="cpu", options={"device": "cpu"})),
         (M + "models[0].device", "once")),
    Case("dtype-contradicts-options", edit(lambda m: m["models"][0].update(dtype="bfloat16", options={"dtype": "float32"})),
         (M + "models[0].dtype", "contradicts")),
    # -- plugin names -----------------------------------------------------------------------------
    Case("scorer-unknown", edit(lambda m: m["scorers"].append("sparsityy")), (M + "scorers[1].name", "sparsityy")),
    Case("option-wrong-type", edit(lambda m: m.update(scorers=[{"name": "sparsity", "options": {"batch_tokens": "big"}}])),
         (M + "scorers[0].options", "batch_tokens")),
    Case("scorer-llm-not-used", edit(lambda m: m.update(scorers=[{"name": "sparsity", "llm": "judge"}])),
         (M + "scorers[0].llm",)),
    Case("probe-task-unknown",
         edit(lambda m: m["scorers"].append({"name": "sparse_probing", "options": {"tasks": ["no-such-task"]}})),
         (M + "scorers[1].options", "no-such-task")),
    Case("explainer-unknown", edit(lambda m: m.update(explainers=["no-such-explainer"], scorers=["sparsity", "detection"])),
         (M + "explainers[0].name", "no-such-explainer")),
    Case("llm-client-unknown", edit(lambda m: m.update(llms={"judge": {"client": "no-such-client"}})),
         (M + "llms.judge.client", "no-such-client")),
    Case("llm-missing-api-key-env",
         edit(lambda m: m.update(llms={"judge": {"client": "anthropic", "model": "m", "api_key_env": "SAEBENCH_NO_SUCH_KEY"}},
                                 scorers=["sparsity", "detection"])),
         (M + "llms.judge", "SAEBENCH_NO_SUCH_KEY")),
    Case("data-source-unknown", edit(lambda m: m["data"].update(source="text-filez")), (M + "data.source", "text-filez")),
    Case("train-d_sae-absurd", edit(lambda m: m["saes"].append(
        {"name": "t", "model": "tiny", "hookpoint": "layers.1", "train": {"arch": "relu", "d_sae": 10**12, "tokens": 1024}})),
         (M + "saes[1].train.d_sae", "GiB")),
    Case("train-arch-unknown", edit(lambda m: m["saes"].append(
        {"name": "t", "model": "tiny", "hookpoint": "layers.1", "train": {"arch": "temporal", "d_sae": 64, "tokens": 1024}})),
         (M + "saes[1].train.arch", "temporal")),
    # -- references, files and data ----------------------------------------------------------------
    Case("sweep-key-unknown", edit(lambda m: m["saes"].append(
        {"name": "t{d_sea}", "model": "tiny", "hookpoint": "layers.1", "train": {"arch": "relu", "d_sae": 64, "tokens": 1024},
         "sweep": {"d_sea": [32, 64]}})), (M + "saes[1].sweep.d_sea", "not a training setting")),
    Case("sweep-grid-empty", edit(lambda m: m["saes"].append(
        {"name": "t", "model": "tiny", "hookpoint": "layers.1", "train": {"arch": "relu", "d_sae": 64, "tokens": 1024},
         "sweep": {}})), (M + "saes[1].sweep", "non-empty")),
    Case("compare-metric-unknown", edit(lambda m: m.update(compare=["decoder", "weights"])),
         (M + "compare.metrics[1]", "should be 'decoder'")),
    Case("baseline-kind-unknown", edit(lambda m: m["saes"].append(
        {"name": "b", "model": "tiny", "hookpoint": "layers.1", "baseline": {"kind": "lasso", "k": 4}})),
         (M + "saes[1].baseline", "lasso")),
    Case("sae-model-unknown", edit(lambda m: m["saes"][0].update(model="big")), (M + "saes[0].model", "big")),
    Case("hookpoint-undeclared", edit(lambda m: m["saes"][0].update(hookpoint="layers.0")),
         (M + "saes[0].hookpoint", "layers.0")),
    Case("hookpoint-missing", edit(lambda m: (m["models"][0].update(hookpoints=["layers.7"]),
                                              m["saes"][0].update(hookpoint="layers.7"))),
         (M + "models[0].hookpoints", "layers.7")),
    Case("sae-path-missing", edit(sae_at("no/such/sae")), (M + "saes[0].path", "no/such/sae")),
    Case("sae-path-and-train", edit(lambda m: m["saes"][0].update(train={"arch": "relu", "d_sae": 8, "tokens": 64})),
         (M + "saes[0]", "exactly one")),
    Case("sae-format-unknown", edit(sae_at("sae", "saelense")), (M + "saes[0].format", "saelense")),
    Case("sae-format-wrong", edit(sae_at("sae", "gemmascope")), ("params.npz", "missing")),
    Case("sae-not-a-checkpoint", both(overwrite(lambda d: d / "notes.txt", "hello"), edit(sae_at("notes.txt"))),
         ("notes.txt", "not a checkpoint")),
    Case("sae-d_in-mismatch", lambda d: native_sae(d / "sae", d_in=16), (M + "saes[0]", "d_in 16", "width 32")),
    Case("safetensors-truncated", truncate(weights_file, 0.5), ("sae_weights.safetensors", "truncated")),
    Case("cfg-json-truncated", truncate(cfg_file, 0.5), ("cfg.json", "invalid JSON")),
    Case("cfg-d_sae-wrong-type", cfg_edit(lambda c: c.update(d_sae="many")), ("cfg.json", "d_sae")),
    Case("cfg-d_sae-absurd", cfg_edit(lambda c: c.update(d_sae=10**12)), ("sae_weights.safetensors", "d_sae=1000000000000")),
    Case("sae-path-too-long", edit(sae_at("s" * 5000)), (M + "saes[0].path", "too long")),
    Case("sae-hub-not-cached", edit(sae_at("hf://saebench-test/absent/sae")),
         (M + "saes[0].path: hf://saebench-test/absent/sae", "not in the Hugging Face cache", "HF_HUB_OFFLINE")),
    Case("sae-hub-path-malformed", edit(sae_at("hf://saebench-test")), (M + "saes[0].path", "hf://ORG/REPO/SUBFOLDER")),
    Case("sae-release-unknown", release("tiny-res-bj", "blocks.1.hook_resid_post"),
         (M + "saes[0].release", "tiny-res-bj", "did you mean 'tiny-res-jb'")),
    Case("sae-id-unknown", release("tiny-res-jb", "blocks.1.hook_resid_pots"),
         (M + "saes[0].sae_id", "did you mean 'blocks.1.hook_resid_post'")),
    Case("hookpoint-omitted-unmapped", both(cfg_edit(lambda c: c.update(hook_name="blocks.0.hook_resid_pre")),
                                            edit(lambda m: m["saes"][0].pop("hookpoint"))),
         (M + "saes[0].hookpoint", "blocks.0.hook_resid_pre", "embeddings")),
    Case("hookpoint-omitted-not-in-model", both(cfg_edit(lambda c: c.update(hook_name="blocks.7.hook_resid_post")),
                                                edit(lambda m: m["saes"][0].pop("hookpoint"))),
         (M + "saes[0].hookpoint", "'relu'", "blocks.7.hook_resid_post", "'layers.7'")),
    Case("cfg-arch-unknown", cfg_edit(lambda c: c.update(arch="temporal")), ("cfg.json", "temporal")),
    Case("nan-weights", tensors_edit(lambda t: t["W_enc"].__setitem__((0, 0), float("nan"))),
         ("sae_weights.safetensors", "W_enc")),
    Case("weights-shape-mismatch", tensors_edit(lambda t: t.update(W_dec=torch.zeros(D_SAE, 31))),
         ("sae_weights.safetensors", "W_dec")),
    Case("npz-corrupt", both(lambda d: corrupt_middle(gemmascope(d / "gs")), edit(sae_at("gs", "gemmascope"))),
         ("params.npz", "npz")),
    Case("npz-truncated", both(lambda d: gemmascope(d / "gs"), truncate(lambda d: d / "gs" / "params.npz", 0.6),
                               edit(sae_at("gs/params.npz", "gemmascope"))), ("params.npz", "npz")),
    Case("data-paths-empty-glob", edit(lambda m: m["data"].update(paths=["no/such/*.txt"])), (M + "data.paths", "no/such/*.txt")),
    Case("data-option-unknown", edit(lambda m: m["data"].update(pathz=["x"])), (M + "data.pathz", "pathz")),
    Case("data-empty-files", empty_corpus, (M + "data", "only 0 tokens")),
    Case("model-path-missing", edit(lambda m: m["models"][0].update(path=str(Path("no/such/model").absolute()))),
         (M + "models[0]", "no/such/model", "does not exist")),
    Case("model-option-unknown", edit(lambda m: m["models"][0].update(options={"bogus": 1})),
         (M + "models[0]", "bogus")),
    Case("ray-address-unreachable", edit(lambda m: m.update(executor={"ray": {"address": "127.0.0.1:1"}},
                                                            scorers=["sparsity", "reconstruction"])),  # work to do
         (M + "executor.ray.address", "cannot reach a Ray cluster")),
    Case("ray-stage-unknown", edit(lambda m: m.update(executor={"ray": {"resources": {"trian": {"num_cpus": 1}}}})),
         (M + "executor.ray.resources.trian", "'train'")),
    # -- saebench inspect on corrupt checkpoints, one per loader format ------------------------------
    Case("inspect-saelens-corrupt-cfg", lambda d: (cfg := saelens(d / "sl") / "cfg.json").write_text(cfg.read_text()[:-9]),
         ("sl/cfg.json", "invalid JSON"), argv=("inspect", "sl", "--format", "saelens")),
    Case("inspect-sparsify-truncated", lambda d: truncate(lambda _: sparsify(d / "sp") / "sae.safetensors", 0.7)(d),
         ("sp/sae.safetensors", "truncated"), argv=("inspect", "sp", "--format", "sparsify")),
    Case("inspect-gemmascope-corrupt", lambda d: corrupt_middle(gemmascope(d / "gs")), ("gs/params.npz", "npz"),
         argv=("inspect", "gs")),
    Case("inspect-openai-truncated", lambda d: truncate(lambda _: openai(d / "oa" / "ae.safetensors"), 0.7)(d),
         ("oa/ae.safetensors", "truncated"), argv=("inspect", "oa/ae.safetensors", "--format", "openai")),
]
RUN_CASES = [c for c in CASES if c.argv[0] == "run"]
INSPECT_CASES = [c for c in CASES if c.argv[0] == "inspect"]


# -- the valid base run and the cases ------------------------------------------------------------
def cli(args, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SAEBENCH_NO_SUCH_KEY"}
    # hf:// and release cases: never the network, a cache and a directory of the case's own
    env.update(HF_HUB_OFFLINE="1", HF_HUB_CACHE="hf-cache", SAEBENCH_SAE_DIRECTORY="saes.yaml")
    return subprocess.run([str(SAEBENCH), *args], cwd=cwd, capture_output=True, text=True, timeout=300, env=env)


def snapshot(d: Path) -> dict[str, Any]:
    """What must not change: the store's bytes and rows, and every file of the output folder but the cache."""
    out = d / OUTPUT
    files = {str(f.relative_to(out)): (f.stat().st_size, f.stat().st_mtime_ns)
             for f in sorted(out.rglob("*")) if f.is_file() and "cache" not in f.relative_to(out).parts}
    db_file = out / "results.sqlite"
    db = sqlite3.connect(f"file:{db_file}?immutable=1", uri=True)  # creates no -shm/-wal file
    try:
        rows = {t: db.execute(f"SELECT * FROM {t} ORDER BY rowid").fetchall() for t in ("runs", "cells", "metrics", "latents")}
    finally:
        db.close()
    return {"sha256": hashlib.sha256(db_file.read_bytes()).hexdigest(), "files": files, "rows": rows}


@pytest.fixture(scope="module")
def base(tmp_path_factory, tiny_llama, tiny_corpus) -> Path:
    d = tmp_path_factory.mktemp("base")
    native_sae(d / "sae")
    matrix = {
        "name": "bad-inputs",
        "output": OUTPUT,
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 1024, "context_length": 64},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": [{"name": "relu", "model": "tiny", "hookpoint": "layers.1", "path": "sae"}],
        "scorers": ["sparsity"],
    }
    save(d, matrix)
    out = cli(["run", "matrix.yaml", "--quiet"], d)
    assert out.returncode == 0, out.stderr
    rows = snapshot(d)["rows"]
    assert [r[5] for r in rows["cells"]] == ["done"] and rows["metrics"]
    return d


@pytest.fixture(scope="module")
def outcomes(base, tmp_path_factory, request) -> dict[str, tuple]:
    """Every selected case, run two at a time: id -> (completed process, snapshot before, snapshot after)."""
    wanted = {item.callspec.id for item in request.session.items
              if getattr(item, "callspec", None) and item.module is request.module}
    root = tmp_path_factory.mktemp("cases")

    def one(case: Case):
        d = root / case.id
        shutil.copytree(base, d)
        before = snapshot(d)
        case.make(d)
        out = cli(case.argv, d)
        return case.id, (out, before, snapshot(d))

    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, [c for c in CASES if c.id in wanted]))


def check(case: Case, outcomes) -> None:
    out, before, after = outcomes[case.id]
    assert "Traceback" not in out.stderr + out.stdout, out.stderr
    lines = out.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("saebench: error: "), out.stderr
    for want in case.expect:
        assert want in lines[0], f"{want!r} not in {lines[0]!r}"
    assert out.returncode == 2, out.stderr
    assert after == before, "the results store or output folder changed"


def test_corpus_is_large_enough():
    assert len(RUN_CASES) >= 40 and len({c.id for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", RUN_CASES, ids=lambda c: c.id)
def test_bad_input_run(case, outcomes):
    check(case, outcomes)


@pytest.mark.parametrize("case", INSPECT_CASES, ids=lambda c: c.id)
def test_bad_checkpoint_inspect(case, outcomes):
    check(case, outcomes)
