"""Text that ships with Python itself, so it needs no download and no install step.

Prose: every topic of ``pydoc_data.topics`` (the language reference's help pages), then, per
stdlib module, its module, class and function docstrings as one document. Code: the stdlib's
``.py`` files (tests, IDLE, tkinter, lib2to3, encodings tables and site-packages left out).
With ``mix: all`` the two streams are interleaved by characters, so any prefix holds about as
much prose as code. The order is fixed for a given interpreter: sorted paths, sorted topics.
"""

from __future__ import annotations

import ast
import os
import sysconfig
from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

import saebench

MIXES = ("all", "prose", "code")
EXCLUDED_DIRS = {
    "site-packages",
    "dist-packages",
    "test",
    "tests",
    "idlelib",
    "lib2to3",
    "tkinter",
    "turtledemo",
    "__pycache__",
    "encodings",
    "ensurepip",
    "lib-dynload",
    "__phello__",
    "pydoc_data",
}


def stdlib_files() -> list[Path]:
    """The stdlib's .py files, sorted by their path relative to the stdlib directory."""
    root = Path(sysconfig.get_paths()["stdlib"])
    files = []
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = [d for d in dirnames if d not in EXCLUDED_DIRS and not d.startswith("config-")]
        for f in filenames:
            if f.endswith(".py"):
                p = Path(dirpath, f)
                files.append((p.relative_to(root).as_posix(), p))
    return [p for _, p in sorted(files)]


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None


def _docstrings(source: str) -> str:
    """Module, class and function docstrings in source order, separated by blank lines."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return ""
    out: list[str] = []

    def visit(node: ast.AST) -> None:
        doc = (
            ast.get_docstring(node, clean=True)
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            else None
        )
        if doc:
            out.append(doc)
        for child in getattr(node, "body", []):
            if isinstance(child, (ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                visit(child)

    visit(tree)
    return "\n\n".join(out)


def prose_documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        if topics[key].strip():
            yield topics[key]
    for path in stdlib_files():
        source = _read(path)
        text = _docstrings(source) if source else ""
        if text.strip():
            yield text


def code_documents() -> Iterator[str]:
    for path in stdlib_files():
        source = _read(path)
        if source and source.strip():
            yield source


def interleave(a: Iterator[str], b: Iterator[str]) -> Iterator[str]:
    """Next document from whichever stream has produced fewer characters so far (a on ties)."""
    streams = [a, b]
    sizes = [0, 0]
    live = [True, True]
    while any(live):
        i = 0 if live[0] and (not live[1] or sizes[0] <= sizes[1]) else 1
        doc = next(streams[i], None)
        if doc is None:
            live[i] = False
            continue
        sizes[i] += len(doc)
        yield doc


class PythonStdlibSource(saebench.DataSource):
    """English prose (pydoc topics, docstrings) and Python source from the running interpreter's standard library.

    Option ``mix``: "all" (prose and code interleaved, the default), "prose" or "code".
    """

    name = "python-stdlib"

    class Options(saebench.Options):
        mix: str = Field("all", description="all (prose and code interleaved), prose or code")

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        if self.options.mix not in MIXES:
            raise saebench.ConfigError(
                f"mix must be one of {', '.join(MIXES)}, got {self.options.mix!r}", where="data.mix"
            )

    def documents(self) -> Iterator[str]:
        if self.options.mix == "prose":
            return prose_documents()
        if self.options.mix == "code":
            return code_documents()
        return interleave(prose_documents(), code_documents())


@saebench.hookimpl
def register_data_sources(register):
    register(PythonStdlibSource)
