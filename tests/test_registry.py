"""registry.yaml, the installed entry points and what each built-in module registers must agree."""

import importlib
import types
from importlib.metadata import distribution
from pathlib import Path

import pytest
import yaml

import saebench
from saebench import plugin_manager

ROOT = Path(__file__).resolve().parents[1]
CATALOGUE = yaml.safe_load((ROOT / "registry.yaml").read_text())["plugins"]


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry rebuilt for the test; in-process plugins registered through it are removed after."""
    names = []

    def register(plugin, name):
        names.append(name)
        plugin_manager.register_plugin(plugin, name)

    plugin_manager.reset()
    yield register
    monkeypatch.undo()
    for name in names:
        plugin_manager.unregister_plugin(name)
    plugin_manager.reset()


def test_catalogue_entries_are_well_formed():
    keys = {(p["kind"], p["name"]) for p in CATALOGUE}
    assert len(keys) == len(CATALOGUE), "duplicate (kind, name) in registry.yaml"
    for p in CATALOGUE:
        assert set(p) == {"name", "kind", "module", "description"}, p
        assert p["kind"] in plugin_manager.KINDS
        # a reader finds each plugin in plugins/<kind>s/<name>.py
        assert p["module"].startswith("saebench.plugins."), p


def test_installed_entry_points_are_exactly_the_catalogue():
    eps = {ep.name: ep.value for ep in distribution("saebench").entry_points if ep.group == "saebench"}
    assert eps == {f"{p['kind']}.{p['name']}": p["module"] for p in CATALOGUE}


@pytest.mark.parametrize("entry", CATALOGUE, ids=lambda p: f"{p['kind']}.{p['name']}")
def test_each_module_registers_what_the_catalogue_says(entry):
    module = importlib.import_module(entry["module"])
    registered = []
    for kind, (hook, attr) in plugin_manager.KINDS.items():
        impl = getattr(module, hook, None)
        if impl is not None:
            impl(register=lambda obj, kind=kind, attr=attr: registered.append((kind, getattr(obj, attr), obj)))
    assert [(k, n) for k, n, _ in registered] == [(entry["kind"], entry["name"])]
    assert plugin_manager.describe(registered[0][2]) == entry["description"]


def test_registry_holds_every_builtin_with_no_failures(fresh_registry):
    registry = plugin_manager.get_registry()
    builtins = {(i.kind, i.name) for i in registry.entries.values() if i.source == "built-in"}
    assert builtins == {(p["kind"], p["name"]) for p in CATALOGUE}
    assert [f for f in registry.failures if f.source == "built-in"] == []
    assert {"relu", "topk", "jumprelu"} <= set(registry.names("architecture"))


def test_unknown_names_get_suggestions_and_the_known_list(fresh_registry):
    with pytest.raises(saebench.PluginError) as err:
        plugin_manager.get("loader", "saelen")
    msg = str(err.value)
    assert "unknown loader 'saelen'" in msg and "did you mean 'saelens'" in msg and "native" in msg
    with pytest.raises(saebench.PluginError, match="unknown plugin kind"):
        plugin_manager.get("widget", "x")


def _plugin_module(name, cls, hook="register_architectures"):
    mod = types.ModuleType(name)

    def impl(register):
        register(cls)

    setattr(mod, hook, saebench.hookimpl(impl))
    impl.__name__ = hook
    return mod


def test_in_process_plugins_register_like_any_other(fresh_registry):
    class DoubleReLU(saebench.SAE):
        """ReLU of twice the pre-activation (test only)."""

        arch = "double-relu"

        def activation(self, h):
            return (2 * h).relu()

    fresh_registry(_plugin_module("my_plugin", DoubleReLU), "my-plugin")
    info = plugin_manager.get_registry().entries[("architecture", "double-relu")]
    assert (info.source, info.plugin, info.description) == ("in-process", "my-plugin", "ReLU of twice the pre-activation (test only).")
    import torch

    w = {"W_enc": torch.eye(2), "W_dec": torch.eye(2), "b_enc": torch.zeros(2), "b_dec": torch.zeros(2)}
    assert saebench.build_sae("double-relu", w).encode(torch.tensor([[1.0, -1.0]])).tolist() == [[2.0, 0.0]]


def test_bad_registrations_are_failures_not_crashes(fresh_registry):
    class NotAnSAE:
        arch = "nope"

    class Clash(saebench.SAE):
        """Clashes with the built-in."""

        arch = "relu"

    fresh_registry(_plugin_module("bad_type", NotAnSAE), "bad-type")
    fresh_registry(_plugin_module("clash", Clash), "clash")
    registry = plugin_manager.get_registry()
    errors = {f.plugin: f.error for f in registry.failures}
    assert "not a subclass of SAE" in errors["bad-type"]
    assert "already registered by architecture.relu" in errors["clash"]
    assert registry.entries[("architecture", "relu")].source == "built-in"


def test_load_only_chosen_plugins(fresh_registry, monkeypatch):
    monkeypatch.setenv("SAEBENCH_LOAD_PLUGINS", "architecture.topk, loader.native")
    registry = plugin_manager.get_registry()
    assert sorted(registry.entries) == [("architecture", "topk"), ("loader", "native")]
    monkeypatch.setenv("SAEBENCH_LOAD_PLUGINS", "")
    plugin_manager.reset()
    assert plugin_manager.get_registry().entries == {}
