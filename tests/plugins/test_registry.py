"""registry.yaml, the built-in module list and what each built-in module registers must agree; one registry per kind."""

import importlib
import re
import types
from importlib.metadata import distribution
from pathlib import Path

import pytest
import yaml

import saebench
import saebench.testing
from saebench import plugin_manager

ROOT = Path(__file__).resolve().parents[2]
CATALOGUE = yaml.safe_load((ROOT / "registry.yaml").read_text())["plugins"]
MODULES = list(dict.fromkeys(p["module"] for p in CATALOGUE))


@pytest.fixture
def fresh_registry(monkeypatch):
    """A registry rebuilt for the test; in-process plugins registered through it are removed after."""
    names = []

    def register(plugin, name):
        names.append(name)
        saebench.testing.register_plugin(plugin, name)

    plugin_manager.reset()
    yield register
    monkeypatch.undo()
    for name in names:
        saebench.testing.unregister_plugin(name)
    plugin_manager.reset()


def test_catalogue_entries_are_well_formed():
    keys = {(p["kind"], p["name"]) for p in CATALOGUE}
    assert len(keys) == len(CATALOGUE), "duplicate (kind, name) in registry.yaml"
    for p in CATALOGUE:
        assert set(p) == {"name", "kind", "module", "description"}, p
        assert p["kind"] in plugin_manager.KINDS
        # a reader finds each plugin under plugins/<kind>s/
        assert p["module"].startswith("saebench.plugins."), p


def test_the_builtin_module_list_is_exactly_the_catalogue():
    assert sorted(plugin_manager.DEFAULT_PLUGINS) == sorted(MODULES)
    assert len(set(plugin_manager.DEFAULT_PLUGINS)) == len(plugin_manager.DEFAULT_PLUGINS)


def test_builtins_are_no_entry_points():
    # they load from the module list, even from a checkout that was never re-installed
    assert [ep for ep in distribution("saebench").entry_points if ep.group == "saebench"] == []


@pytest.mark.parametrize("module", MODULES)
def test_each_module_registers_what_the_catalogue_says(module):
    loaded = importlib.import_module(module)
    registered = []
    for kind in plugin_manager.KINDS.values():
        impl = getattr(loaded, kind.hook, None)
        if impl is not None:
            impl(register=lambda obj, kind=kind: registered.append((kind.name, getattr(obj, kind.name_attr), obj)))
    listed = [(p["kind"], p["name"], p["description"]) for p in CATALOGUE if p["module"] == module]
    assert [(k, n, plugin_manager.describe(obj)) for k, n, obj in registered] == listed


def test_registry_holds_every_builtin_with_no_failures(fresh_registry):
    registry = plugin_manager.get_registry()
    builtins = {(i.kind, i.name) for i in registry.all() if i.source == "built-in"}
    assert builtins == {(p["kind"], p["name"]) for p in CATALOGUE}
    assert [f for f in registry.failures if f.source == "built-in"] == []
    assert {"relu", "topk", "jumprelu"} <= set(registry.names("architecture"))
    assert {i.plugin for i in registry.all() if i.source == "built-in"} == set(MODULES)


def test_one_registry_per_kind_with_its_base_class():
    registry = plugin_manager.get_registry()
    assert list(registry.kinds) == list(plugin_manager.KINDS)
    for name, kind in plugin_manager.KINDS.items():
        assert registry.of(name).kind is kind
        assert all(issubclass(info.obj, kind.base) for info in registry.of_kind(name))


def test_contributing_lists_every_hook_with_its_base_class_and_name_attribute():
    text = (ROOT / "CONTRIBUTING.md").read_text()
    rows = re.findall(r"^\| `(register_\w+)\(register\)` \| `(\w+)` \| `saebench\.(\w+)` \| `(\w+)` \|$", text, re.M)
    assert rows == [(k.hook, k.name, k.base.__name__, k.name_attr) for k in plugin_manager.KINDS.values()]


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
    info = plugin_manager.get_registry().info("architecture", "double-relu")
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
    assert "already registered by saebench.plugins.architectures.relu" in errors["clash"]
    assert registry.info("architecture", "relu").source == "built-in"


def test_the_env_var_chooses_third_party_plugins_never_builtins(fresh_registry, monkeypatch):
    monkeypatch.setenv("SAEBENCH_LOAD_PLUGINS", "")  # no entry point at all: the built-ins still load
    plugin_manager.reset()
    assert {(i.kind, i.name) for i in plugin_manager.get_registry().all()} == {(p["kind"], p["name"]) for p in CATALOGUE}


def test_a_builtin_that_fails_to_import_is_a_crash_not_a_failure_line(fresh_registry, monkeypatch):
    monkeypatch.setattr(plugin_manager, "DEFAULT_PLUGINS", (*plugin_manager.DEFAULT_PLUGINS, "saebench.plugins.nope"))
    plugin_manager.reset()
    with pytest.raises(ModuleNotFoundError):
        plugin_manager.get_registry()
