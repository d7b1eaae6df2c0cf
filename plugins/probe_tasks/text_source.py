"""Probe task: which kind of text a passage is, from text that ships with Python.

Labels (sequence level): "prose" (the language reference's help pages in ``pydoc_data.topics``),
"code" (stdlib ``.py`` source, docstrings and comments left in), "docstring" (stdlib docstrings)
and, when the Debian package python3.11-doc is installed and ``sources`` names it, "python-docs"
(the reST sources of the Python documentation). Prose and docstrings are both English about the
same library and code holds docstrings too, so telling them apart asks for more than a vocabulary:
register, layout, the surrounding syntax.

Passages are runs of whole lines of about ``chars`` characters, a few evenly spaced ones per
document so that many documents contribute; code and docstrings come from disjoint halves of the
stdlib files, so no passage is in two classes. Classes are interleaved (one passage of each in
turn), so any prefix of ``examples()`` is balanced.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterator
from pathlib import Path

from pydantic import Field

import saebench
from saebench.errors import ConfigError
from saebench.plugins.data_sources.python_stdlib import _docstrings, _read
from saebench.plugins.probe_tasks import _code

#: where Debian's python3.11-doc package puts the documentation's reST sources
PYTHON_DOCS = Path("/usr/share/doc/python3.11/html/_sources")
#: passages per document in the first pass; more only when documents run out
PER_DOC = 2
DEFAULT_SOURCES = ("prose", "code", "docstring")


def _stdlib_half(half: int) -> Iterator[str]:
    """Every other stdlib file (as the code tasks pick them: shuffled, big ones left out, as parsing
    them for docstrings costs time), so code and docstrings never come from the same file."""
    for i, (_, source) in enumerate(_code.code_files()):
        if i % 2 == half:
            yield source


def prose_documents() -> Iterator[str]:
    from pydoc_data.topics import topics

    for key in sorted(topics):
        yield topics[key]


def code_documents() -> Iterator[str]:
    yield from _stdlib_half(0)


def docstring_documents() -> Iterator[str]:
    for source in _stdlib_half(1):
        yield _docstrings(source)


def python_docs_documents() -> Iterator[str]:
    files = sorted(PYTHON_DOCS.rglob("*.rst.txt"), key=lambda p: p.relative_to(PYTHON_DOCS).as_posix())
    random.Random(0).shuffle(files)
    for path in files:
        yield _read(path) or ""


SOURCES: dict[str, Callable[[], Iterator[str]]] = {
    "prose": prose_documents,
    "code": code_documents,
    "docstring": docstring_documents,
    "python-docs": python_docs_documents,
}


def required_path(source: str) -> Path | None:
    """What a source needs installed besides Python (looked up late, so tests can point it elsewhere)."""
    return PYTHON_DOCS if source == "python-docs" else None


def passages(doc: str, chars: int) -> list[str]:
    """``doc`` cut at line ends into passages of at most ``chars`` characters; a passage with less
    than ``chars // 2`` non-blank characters, or one longer line, is dropped, so lengths do not give
    the class away."""
    out: list[str] = []
    current: list[str] = []
    size = 0

    def flush() -> None:
        text = "".join(current)
        if len(text) <= chars and len(text.strip()) >= chars // 2:
            out.append(text)

    for line in doc.splitlines(keepends=True):
        if current and size + len(line) > chars:
            flush()
            current, size = [], 0
        current.append(line)
        size += len(line)
    if current:
        flush()
    return out


def pick(documents: Iterator[str], n: int, chars: int) -> list[str]:
    """``n`` passages: PER_DOC evenly spaced ones from each document in turn, then, if the documents
    run out first, the others round-robin."""
    out: list[str] = []
    rest: list[list[str]] = []
    for doc in documents:
        chunks = passages(doc, chars)
        chosen = set(_code.spread(len(chunks), PER_DOC))
        out.extend(chunks[i] for i in sorted(chosen))
        if len(out) >= n:
            return out[:n]
        rest.append([c for i, c in enumerate(chunks) if i not in chosen])
    depth = 0
    while len(out) < n:
        more = [r[depth] for r in rest if depth < len(r)]
        if not more:
            break
        out.extend(more)
        depth += 1
    return out[:n]


class TextSourceTask(saebench.ProbeTask):
    """Sequence level: whether a passage is prose (pydoc help pages), Python code, or a docstring."""

    name = "text_source"
    level = "sequence"

    class Options(saebench.Options):
        sources: list[str] = Field(
            default_factory=lambda: list(DEFAULT_SOURCES),
            description="classes: prose, code, docstring, python-docs (needs Debian's python3.11-doc)",
        )
        per_class: int = Field(150, ge=1, description="passages per class")
        chars: int = Field(600, ge=40, description="characters per passage, about")

    def __init__(self, **options):
        super().__init__(**options)
        where = f"probe task {self.name}"
        sources = self.options.sources
        for s in sources:
            if s not in SOURCES:
                raise ConfigError(f"unknown source {s!r} in option 'sources'; sources: {', '.join(SOURCES)}", where)
        if len(set(sources)) != len(sources):
            raise ConfigError(f"option 'sources' names a source twice: {sources}", where)
        if len(sources) < 2:
            raise ConfigError(f"option 'sources' needs at least two sources (classes), got {sources}", where)
        for s in sources:
            path = required_path(s)
            if path is not None and not path.is_dir():
                raise ConfigError(
                    f"source {s!r} reads {path}, which is not installed (Debian: apt-get install python3.11-doc)", where
                )

    def examples(self) -> Iterator[saebench.TaskExample]:
        sources = self.options.sources
        chosen = {s: pick(SOURCES[s](), self.options.per_class, self.options.chars) for s in sources}
        for i in range(max(len(v) for v in chosen.values())):
            for s in sources:
                if i < len(chosen[s]):
                    yield saebench.TaskExample(chosen[s][i], label=s)

    def identity(self):
        return {**super().identity(), "python": _code.python_tag()}


@saebench.hookimpl
def register_probe_tasks(register):
    register(TextSourceTask)
