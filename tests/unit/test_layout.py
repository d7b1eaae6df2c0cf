"""The package's shape, as the restructuring left it: no import cycle, short modules and functions, a small core.

The import graph counts every ``import`` in saebench/ and plugins/, at module level or inside a
function, and also those under ``if TYPE_CHECKING:`` (a type-only cycle is still two modules that
cannot be read apart). A function over ``MAX_FUNCTION_LINES`` needs a comment saying why, on the
line before its ``def``: ``# long: REASON``.
"""

import ast
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[2]
MAX_MODULE_LINES = 400
MAX_FUNCTION_LINES = 60
MAX_CORE_LINES = 2800


def modules() -> dict[str, Path]:
    """Module name -> file, for saebench/ and plugins/ (installed as saebench.plugins)."""
    out = {}
    for base, package in ((ROOT / "saebench", "saebench"), (ROOT / "plugins", "saebench.plugins")):
        for path in sorted(base.rglob("*.py")):
            parts = list(path.relative_to(base).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts = parts[:-1]
            out[".".join([package, *parts])] = path
    return out


MODULES = modules()


def imports(name: str, path: Path) -> set[str]:
    """The saebench modules ``name`` imports (a ``from pkg import x`` of a submodule x counts as that submodule)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parent = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(parent + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES else base for a in node.names)
    out = set()
    for target in found:
        while target and target not in MODULES:
            target = target.rpartition(".")[0]
        if target and target != name:
            out.add(target)
    return out


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index, low, stack, on_stack, found = {}, {}, [], set(), []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in graph:
        if v not in index:
            visit(v)
    return found


def test_the_import_graph_has_no_cycle():
    graph = {name: imports(name, path) for name, path in MODULES.items()}
    assert cycles(graph) == []


def test_the_cycle_finder_finds_a_planted_cycle():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_runtime_never_imports_the_testing_helpers():
    users = [name for name, path in MODULES.items()
             if not name.startswith("saebench.testing") and any(m.startswith("saebench.testing") for m in imports(name, path))]
    assert users == []


@pytest.mark.parametrize("name", sorted(MODULES))
def test_modules_are_short_enough_to_read_in_one_sitting(name):
    n = len(MODULES[name].read_text().splitlines())
    assert n <= MAX_MODULE_LINES, f"{name}: {n} lines"


@pytest.mark.parametrize("name", sorted(MODULES))
def test_long_functions_say_why(name):
    lines = MODULES[name].read_text().splitlines()
    for node in ast.walk(ast.parse("\n".join(lines))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            length = node.end_lineno - node.lineno + 1
            first = min([node.lineno] + [d.lineno for d in node.decorator_list])
            reason = lines[first - 2].strip().startswith("# long:") if first >= 2 else False
            assert length <= MAX_FUNCTION_LINES or reason, f"{name}.{node.name} is {length} lines"


def test_the_core_stays_small():
    core = [p for p in (ROOT / "saebench").glob("*.py")]
    total = sum(len(p.read_text().splitlines()) for p in core)
    assert total <= MAX_CORE_LINES, total


def test_every_package_folder_is_installed():
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]
    declared = set(config["packages"])
    folders = {name for name, path in MODULES.items() if path.name == "__init__.py"}
    assert folders == declared
