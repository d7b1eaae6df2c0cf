"""A third-party plugin, installed for real: examples/saebench-batchtopk as a distribution with entry points.

The module fixture pip-installs the example (non-editable, from a copy so the
source tree gets no build/ or egg-info) into this interpreter's environment and
uninstalls it afterwards. Numbers are checked against float64 definitions
written here from the paper (Taggart 2024, ProLU), sharing no code with the plugin.
"""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import saebench
import saebench.kernel
from saebench import plugin_manager

ROOT = Path(__file__).resolve().parents[2]
EXAMPLE = ROOT / "examples" / "saebench-batchtopk"
SAEBENCH = Path(sys.executable).parent / "saebench"
DIST, VERSION, MODULE, ENTRY_POINT = "saebench-batchtopk", "0.1.0", "saebench_batchtopk", "batchtopk"
BUILTIN_ARCHS = {"relu", "topk", "jumprelu", "batchtopk", "matryoshka_batchtopk", "gated"}

D_IN, D_SAE = 16, 64
MARGIN = 1e-4  # a strict comparison whose operands differ by less than this may flip between float32 and float64


# -- installing and running ----------------------------------------------------------------------
def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", *args, "-q", "--disable-pip-version-check"]
    for attempt in range(3):  # another pip may hold the environment for a moment
        r = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
        if r.returncode == 0:
            return
        time.sleep(3 * (attempt + 1))
    raise RuntimeError(f"{' '.join(cmd)} failed:\n{r.stdout}\n{r.stderr}")


def _install(src: Path, workdir: Path) -> None:
    copy = workdir / src.name
    shutil.copytree(src, copy, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    _pip("install", "--no-deps", "--no-build-isolation", str(copy))
    importlib.invalidate_caches()
    plugin_manager.reset()


def _uninstall(dist: str, module: str) -> None:
    try:
        _pip("uninstall", "-y", dist)
    finally:
        sys.modules.pop(module, None)
        importlib.invalidate_caches()
        plugin_manager.reset()


def _cli(*args: str, load: str | None = None) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "SAEBENCH_LOAD_PLUGINS"}
    if load is not None:
        env["SAEBENCH_LOAD_PLUGINS"] = load
    return subprocess.run([str(SAEBENCH), *args], capture_output=True, text=True, env=env, timeout=300)


def _cli_json(load: str | None = None) -> dict:
    r = _cli("plugins", "--json", load=load)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    """The example plugin as an installed distribution; yields its freshly imported module."""
    with pytest.MonkeyPatch.context() as mp:
        mp.delenv("SAEBENCH_LOAD_PLUGINS", raising=False)
        _install(EXAMPLE, tmp_path_factory.mktemp("dist"))
        try:
            yield importlib.import_module(MODULE)
        finally:
            _uninstall(DIST, MODULE)


# -- independent float64 definitions ---------------------------------------------------------------
def _f64(t) -> np.ndarray:
    return torch.as_tensor(t).detach().double().numpy()


def ref_x_prime(x, w, cfg) -> np.ndarray:
    x = _f64(x) * cfg["act_scale"]
    return x - _f64(w["b_dec"]) if cfg["apply_b_dec_to_input"] else x


def ref_prolu(x, w, cfg) -> tuple[np.ndarray, np.ndarray]:
    """(f, jump quantity) of Taggart's ProLU(m, b) = m if m > 0 and m + b > 0, else 0, m = x'·W_enc, b = b_enc.

    The jump quantity is min(m, m + b): f jumps where it crosses 0.
    """
    m = ref_x_prime(x, w, cfg) @ _f64(w["W_enc"])
    b = _f64(w["b_enc"])
    fires = (m > 0) & (m + b > 0)
    return np.where(fires, m, 0.0), np.minimum(m, m + b)


def ref_decode(f, w, cfg) -> np.ndarray:
    return (f @ _f64(w["W_dec"]) + _f64(w["b_dec"])) / cfg["act_scale"]


def assert_latents_match(f, ref: np.ndarray, jump: np.ndarray) -> None:
    """f equals ref, except at entries whose jump quantity is within MARGIN of 0 (float32 may decide either way)."""
    f = _f64(f).reshape(ref.shape)
    safe = np.abs(jump) > MARGIN
    assert safe.mean() > 0.98, "test data too close to the threshold"
    np.testing.assert_allclose(f[safe], ref[safe], rtol=1e-4, atol=1e-4)


def densify(values, indices, d_sae: int) -> torch.Tensor:
    v, i = values.reshape(-1, values.shape[-1]), indices.reshape(-1, indices.shape[-1])
    return torch.zeros(v.shape[0], d_sae, dtype=torch.float64).scatter_add_(1, i, v.double())


def prolu_weights(seed: int = 0) -> dict[str, torch.Tensor]:
    """Mostly negative biases (they gate), some positive ones (no effect: ProLU ignores b > 0)."""
    g = torch.Generator().manual_seed(seed)
    return {
        "W_enc": torch.randn(D_IN, D_SAE, generator=g) / D_IN**0.5,
        "W_dec": torch.randn(D_SAE, D_IN, generator=g) / D_SAE**0.5,
        "b_enc": torch.randn(D_SAE, generator=g) * 0.4 - 0.2,
        "b_dec": torch.randn(D_IN, generator=g) * 0.1,
    }


CONFIGS = [
    {"apply_b_dec_to_input": False, "act_scale": 1.0},
    {"apply_b_dec_to_input": True, "act_scale": 2.5},
]


# -- discovery: the CLI and the registry -----------------------------------------------------------
def test_json_listing_has_the_architecture_beside_the_builtins(installed):
    data = _cli_json()
    rows = {(p["kind"], p["name"]): p for p in data["plugins"]}
    for name, cls in (("prolu", installed.ProLUSAE),):
        row = rows[("architecture", name)]
        assert (row["source"], row["version"], row["plugin"]) == (DIST, VERSION, ENTRY_POINT)
        assert row["description"] == plugin_manager.describe(cls) != ""
    for name in BUILTIN_ARCHS:
        assert rows[("architecture", name)]["source"] == "built-in"
    assert rows[("loader", "native")]["source"] == "built-in"
    assert not [f for f in data["failures"] if f["source"] == DIST]


def test_text_listing_shows_them(installed):
    r = _cli("plugins")
    assert r.returncode == 0
    lines = {tuple(line.split()[:2]): line for line in r.stdout.splitlines()}
    for name, cls in (("prolu", installed.ProLUSAE),):
        line = lines[("architecture", name)]
        assert line.split()[2:4] == [DIST, VERSION]
        assert line.endswith(plugin_manager.describe(cls))
    assert all(lines[("architecture", n)].split()[2] == "built-in" for n in BUILTIN_ARCHS)
    assert DIST not in r.stderr


def test_in_process_registry_loads_the_installed_distribution(installed):
    assert not Path(installed.__file__).resolve().is_relative_to(EXAMPLE.resolve()), "imported the source tree, not the install"
    registry = plugin_manager.get_registry()
    info = registry.info("architecture", "prolu")
    assert (info.source, info.version, info.plugin) == (DIST, VERSION, ENTRY_POINT)
    assert info.obj.__module__ == MODULE
    assert issubclass(info.obj, saebench.SAE)
    # the package's first two architectures are now built in: the example no longer registers them
    assert registry.info("architecture", "batchtopk").source == "built-in"
    assert registry.info("architecture", "gated").source == "built-in"


def test_load_plugins_env_var_selects_entry_points(installed):
    everything = _cli_json()
    builtins = {(p["kind"], p["name"]) for p in everything["plugins"] if p["source"] == "built-in"}
    assert ("architecture", "relu") in builtins
    none = _cli_json(load="")  # no entry point: the built-ins alone, which cannot be switched off
    assert {(p["kind"], p["name"]) for p in none["plugins"]} == builtins and none["failures"] == []

    only_example = _cli_json(load=f"{ENTRY_POINT}, some-other-plugin")
    assert {(p["name"], p["source"]) for p in only_example["plugins"] if p["source"] != "built-in"} == {
        ("prolu", DIST),
    }
    assert {(p["kind"], p["name"]) for p in only_example["plugins"] if p["source"] == "built-in"} == builtins


# -- prolu -----------------------------------------------------------------------------------------
@pytest.mark.parametrize("cfg", CONFIGS, ids=["plain", "b_dec+scale"])
def test_prolu_end_to_end(installed, tmp_path, cfg, monkeypatch):
    w = prolu_weights()
    sae = saebench.build_sae("prolu", w, **cfg)
    assert isinstance(sae, installed.ProLUSAE)
    assert set(sae.weights()) == {"W_enc", "W_dec", "b_enc", "b_dec"}
    x = torch.randn(3, 7, D_IN, generator=torch.Generator().manual_seed(1))
    ref, jump = ref_prolu(x, w, cfg)
    assert 0.05 < (ref != 0).mean() < 0.6
    m = ref_x_prime(x, w, cfg) @ _f64(w["W_enc"])
    b = _f64(w["b_enc"])
    assert ((m > 0) & (m + b <= 0)).any() and (b > 0).any()  # the bias gates some latents; positive ones do not

    f = sae.encode(x)
    assert f.shape == (3, 7, D_SAE)
    assert_latents_match(f, ref, jump)

    values, indices = sae.encode_sparse(x)
    assert values.shape == indices.shape and values.shape[:2] == (3, 7)
    assert values.shape[-1] == int((f != 0).sum(-1).max())
    assert int((values != 0).sum()) == int((f != 0).sum())
    assert_latents_match(densify(values, indices, D_SAE), ref.reshape(-1, D_SAE), jump.reshape(-1, D_SAE))

    x_hat = sae.decode_sparse(values, indices)
    np.testing.assert_allclose(_f64(x_hat), ref_decode(ref, w, cfg), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_f64(sae.decode(f)), ref_decode(ref, w, cfg), rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(_f64(sae(x)), ref_decode(ref, w, cfg), rtol=1e-4, atol=1e-4)

    xg = x.clone().requires_grad_()
    fg = sae.encode(xg)
    assert_latents_match(fg, ref, jump)
    vg, ig = sae.encode_sparse(xg)
    assert_latents_match(densify(vg.detach(), ig, D_SAE), ref.reshape(-1, D_SAE), jump.reshape(-1, D_SAE))
    fg.sum().backward()
    assert torch.isfinite(xg.grad).all()

    saebench.save_sae(sae, tmp_path / "sae")
    loaded = saebench.load_sae(tmp_path / "sae")
    assert type(loaded) is type(sae) and loaded.cfg.k is None
    assert loaded.cfg.model_dump(exclude={"metadata"}) == sae.cfg.model_dump(exclude={"metadata"})
    for name, tensor in sae.weights().items():
        assert torch.equal(loaded.weights()[name], tensor), name
    assert torch.equal(loaded.encode(x), f)

    # the fused hooks work on any slice of latents: 64 latents in 4 blocks give the same latents
    monkeypatch.setattr(saebench.kernel, "MAX_BLOCK_LATENTS", 16)
    blocked = saebench.build_sae("prolu", w, **cfg)
    assert len(saebench.kernel.plan_for(blocked).blocks) == 4
    assert_latents_match(blocked.encode(x), ref, jump)
    v4, i4 = blocked.encode_sparse(x)
    assert_latents_match(densify(v4, i4, D_SAE), ref.reshape(-1, D_SAE), jump.reshape(-1, D_SAE))


def test_prolu_ignores_positive_biases_and_gates_with_negative_ones(installed):
    """By hand: W_enc = I, so m = x; b = [−0.5, 0.5, 0]: m = 0.4 is gated off by −0.5, kept at 0.4 (not 0.9) by +0.5."""
    w = {"W_enc": torch.eye(3), "W_dec": torch.eye(3), "b_enc": torch.tensor([-0.5, 0.5, 0.0]), "b_dec": torch.zeros(3)}
    sae = saebench.build_sae("prolu", w)
    x = torch.tensor([[0.4, 0.4, 0.4], [0.6, -0.2, 0.0]])
    want = [[0.0, 0.4, 0.4], [0.6, 0.0, 0.0]]
    np.testing.assert_allclose(_f64(sae.encode(x)), want, atol=1e-6)
    xg = x.clone().requires_grad_()
    np.testing.assert_allclose(_f64(sae.encode(xg)), want, atol=1e-6)  # the reference path agrees
    values, indices = sae.encode_sparse(x)
    np.testing.assert_allclose(_f64(densify(values, indices, 3)), want, atol=1e-6)


def test_contributing_prints_the_example_as_it_runs(installed):
    """CONTRIBUTING.md's worked example, executed as printed, is the example's class (same description, same latents)."""
    from docs import snippet_module

    doc = snippet_module("## Worked example: `examples/saebench-batchtopk`", "contributing_prolu")
    assert doc.ProLUSAE.arch == "prolu" and plugin_manager.describe(doc.ProLUSAE) == plugin_manager.describe(installed.ProLUSAE)
    w, cfg = prolu_weights(seed=2), CONFIGS[1]
    sae = doc.ProLUSAE.from_weights(w, saebench.SAEConfig(arch="prolu", d_in=D_IN, d_sae=D_SAE, **cfg))
    x = torch.randn(40, D_IN, generator=torch.Generator().manual_seed(3))
    ref, jump = ref_prolu(x, w, cfg)
    assert_latents_match(sae.encode(x), ref, jump)
    values, indices = sae.encode_sparse(x)
    assert_latents_match(densify(values, indices, D_SAE), ref, jump)


# -- a broken plugin -------------------------------------------------------------------------------
def test_broken_plugin_is_reported_and_the_others_still_load(installed, tmp_path):
    before = _cli_json()
    src = tmp_path / "saebench-broken-example"
    src.mkdir()
    (src / "pyproject.toml").write_text(textwrap.dedent("""\
        [build-system]
        requires = ["setuptools>=68"]
        build-backend = "setuptools.build_meta"

        [project]
        name = "saebench-broken-example"
        version = "0.0.1"

        [project.entry-points.saebench]
        broken_example = "saebench_broken_example"

        [tool.setuptools]
        py-modules = ["saebench_broken_example"]
        """))
    (src / "saebench_broken_example.py").write_text('raise ImportError("needs the package frobnicate, which is not installed")\n')
    error = "ImportError: needs the package frobnicate, which is not installed"

    (tmp_path / "work").mkdir()
    _install(src, tmp_path / "work")
    try:
        data = _cli_json()
        text = _cli("plugins")
        plugin_manager.reset()
        registry = plugin_manager.get_registry()
    finally:
        _uninstall("saebench-broken-example", "saebench_broken_example")

    assert {"plugin": "broken_example", "source": "saebench-broken-example", "error": error} in data["failures"]
    assert data["plugins"] == before["plugins"]  # every other plugin is still listed, unchanged
    assert [f for f in data["failures"] if f["plugin"] != "broken_example"] == before["failures"]

    assert text.returncode == 0
    assert f"failed to load plugin broken_example (saebench-broken-example): {error}" in text.stderr
    assert "broken_example" not in text.stdout
    names = {tuple(line.split()[:2]) for line in text.stdout.splitlines()}
    assert {("architecture", n) for n in BUILTIN_ARCHS | {"prolu"}} <= names

    assert any(f.plugin == "broken_example" and f.error == error for f in registry.failures)
    assert registry.get("architecture", "prolu") is installed.ProLUSAE
    with pytest.raises(saebench.PluginError, match="failed to load: .*broken_example"):
        registry.get("architecture", "proluu")

    assert not [f for f in plugin_manager.get_registry().failures if f.plugin == "broken_example"]  # uninstalled again
