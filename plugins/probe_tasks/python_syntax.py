"""Probe task: the innermost ``ast`` node each character of stdlib source belongs to.

Each non-whitespace, non-comment character is labelled with the type name of the deepest AST node
whose (lineno, col_offset, end_lineno, end_col_offset) range covers it ("Name", "Call",
"FunctionDef", "arg"...): the model's analogue of per-pixel segmentation labels, and a label set
with a known hierarchy (the ``ast`` class tree: Name is an expr, FunctionDef a stmt), which
``taxonomy()`` returns for tree probes. Only the ``top_classes`` node types covering the most
characters of the task's texts are kept, so that every class has enough examples to probe.
An f-string (JoinedStr) is a leaf: before Python 3.12 the positions of the nodes inside one are
unreliable.
"""

from __future__ import annotations

import ast
import re
import tokenize
from collections import Counter, deque
from collections.abc import Iterator

from pydantic import Field

import saebench
from saebench.plugins.probe_tasks import _code

Span = tuple[int, int, str]
_STRINGS = (ast.Constant, ast.JoinedStr)
_HASH = re.compile("#")


def label_spans(source: str) -> list[Span]:
    """[start, end) spans of ``source`` labelled with the innermost AST node type; whitespace and
    comments unlabelled. Raises SyntaxError (or ValueError) when ``source`` does not parse."""
    tree = ast.parse(source)
    starts = _code.line_starts(source)
    lines = source.split("\n")  # the same lines as line_starts: ast counts lines at "\n" only

    def offset(lineno: int, col: int) -> int:
        line = lines[lineno - 1]
        if not line.isascii():  # col_offset counts UTF-8 bytes
            col = len(line.encode("utf-8")[:col].decode("utf-8", errors="replace"))
        return starts[lineno - 1] + col

    names: list[str | None] = [None]
    ids: dict[str, int] = {}
    paint = bytearray(len(source))
    multiline_strings: list[tuple[int, int]] = []
    # breadth first, so a node is painted after all its ancestors and the innermost node wins
    queue: deque[ast.AST] = deque([tree])
    while queue:
        node = queue.popleft()
        if getattr(node, "end_col_offset", None) is not None and getattr(node, "lineno", None) is not None:
            start, end = offset(node.lineno, node.col_offset), offset(node.end_lineno, node.end_col_offset)
            if start < end:
                name = type(node).__name__
                if name not in ids:
                    ids[name] = len(names)
                    names.append(name)
                paint[start:end] = bytes([ids[name]]) * (end - start)
                if isinstance(node, _STRINGS) and node.end_lineno > node.lineno:
                    multiline_strings.append((start, end))
        if not isinstance(node, ast.JoinedStr):
            queue.extend(ast.iter_child_nodes(node))
    _unpaint_comments(source, paint, {ids[n] for n in ("Constant", "JoinedStr") if n in ids}, multiline_strings)
    return _code.runs(source, paint, names)


def _unpaint_comments(
    source: str, paint: bytearray, string_ids: set[int], multiline_strings: list[tuple[int, int]]
) -> None:
    """Clear the comments, which lie inside their enclosing block's range but are no part of a node.

    Outside string literals a "#" always starts a comment (to the end of the line), and a literal is
    a leaf, so the paint under a "#" says which it is, except between the pieces of an implicitly
    concatenated string written over several lines: those few literals are tokenized. (Tokenizing
    every file would cost a third of the task's time.)
    """
    for m in _HASH.finditer(source):
        p = m.start()
        if paint[p] and paint[p] not in string_ids:
            end = source.find("\n", p)
            end = len(source) if end < 0 else end
            paint[p:end] = bytes(end - p)
    for start, end in multiline_strings:
        if "#" in source[start:end]:
            try:
                for tok_type, _, s, e in _code.tokens(source[start:end]):
                    if tok_type == tokenize.COMMENT:
                        paint[start + s : start + e] = bytes(e - s)
            except _code.SOURCE_ERRORS:
                pass


def ast_parent(name: str) -> str:
    """The name of the direct base class of ast.<name> ("Name" -> "expr", "arg" -> "AST")."""
    return getattr(ast, name).__bases__[0].__name__


class PythonSyntaxTask(_code.StdlibCodeTask):
    """Token level: the innermost ast node type (Name, Call, FunctionDef...) covering each character of Python code.

    Texts are ``lines`` whole lines of stdlib files (parsed whole, then cut), at most ``max_texts``;
    labels are the ``top_classes`` most frequent node types by characters covered.
    """

    name = "python_syntax"
    label_spans = staticmethod(label_spans)

    class Options(_code.StdlibCodeTask.Options):
        top_classes: int = Field(12, ge=2, description="node types kept as labels, the most frequent first")

    def __init__(self, **options):
        super().__init__(**options)
        self._examples: list[saebench.TaskExample] | None = None
        self._classes: list[str] = []

    def _build(self) -> list[saebench.TaskExample]:
        if self._examples is None:
            texts = list(super().examples())
            chars: Counter[str] = Counter()
            for ex in texts:
                for s, e, label in ex.spans:
                    chars[label] += e - s
            # ties broken by name, so the label set is a function of the options alone
            ranked = sorted(chars.items(), key=lambda kv: (-kv[1], kv[0]))
            self._classes = [n for n, _ in ranked][: self.options.top_classes]
            keep = set(self._classes)
            self._examples = []
            for ex in texts:
                spans = tuple(s for s in ex.spans if s[2] in keep)
                if spans:
                    self._examples.append(saebench.TaskExample(ex.text, spans=spans))
        return self._examples

    def classes(self) -> list[str]:
        """The labels this task uses, the most frequent first."""
        self._build()
        return list(self._classes)

    def examples(self) -> Iterator[saebench.TaskExample]:
        yield from self._build()

    def taxonomy(self) -> dict[str, str]:
        out: dict[str, str] = {}
        for label in self.classes():
            parent = ast_parent(label)
            out[label] = parent
            if parent != "AST":
                out[parent] = "AST"
        return out


@saebench.hookimpl
def register_probe_tasks(register):
    register(PythonSyntaxTask)
