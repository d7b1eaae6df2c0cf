"""Probe task: the lexical category of each Python token in stdlib source.

Labels come from the ``tokenize`` module: "keyword" (``keyword.kwlist``; soft keywords such as
``match`` are names), "builtin" (a name in ``builtins``), "identifier" (any other name), "number",
"string" (docstrings and f-strings included), "comment", "bracket" (``()[]{}``) and "operator"
(every other OP token). NEWLINE, NL, INDENT and DEDENT carry no characters worth labelling and are
left out. A lexical category is the simplest structure of code a model must track, so it is the
baseline the other code probes (syntax, bracket depth) are read against.
"""

from __future__ import annotations

import builtins
import keyword
import tokenize

import saebench
from saebench.plugins.probe_tasks import _code

CLASSES = ("keyword", "builtin", "identifier", "number", "string", "comment", "operator", "bracket")
BRACKETS = frozenset("()[]{}")
_KEYWORDS = frozenset(keyword.kwlist)
# Public names only (builtins.__name__ is no more a builtin than any module's __name__; "_" exists only
# after an interactive session printed something), plus what site.py adds, so that ``python -S``
# labels the same.
_BUILTINS = frozenset(n for n in dir(builtins) if not n.startswith("_")) | {
    "copyright",
    "credits",
    "exit",
    "help",
    "license",
    "quit",
}


def token_class(tok_type: int, string: str) -> str | None:
    if tok_type == tokenize.NAME:
        if string in _KEYWORDS:
            return "keyword"
        return "builtin" if string in _BUILTINS else "identifier"
    if tok_type == tokenize.NUMBER:
        return "number"
    if tok_type == tokenize.STRING:
        return "string"
    if tok_type == tokenize.COMMENT:
        return "comment"
    if tok_type == tokenize.OP:
        return "bracket" if string in BRACKETS else "operator"
    return None  # NEWLINE, NL, INDENT, DEDENT, ERRORTOKEN


def label_spans(source: str) -> list[tuple[int, int, str]]:
    """[start, end) character spans of ``source``'s tokens with their class; raises on untokenizable source."""
    out = []
    for tok_type, string, start, end in _code.tokens(source):
        label = token_class(tok_type, string)
        if label is not None and start < end:
            out.append((start, end, label))
    return out


class PythonTokenTypeTask(_code.StdlibCodeTask):
    """Token level: the tokenize category of each Python token (keyword, builtin, identifier, number, string...).

    Texts are ``lines`` whole lines of stdlib files, at most ``max_texts`` of them.
    """

    name = "python_token_type"
    label_spans = staticmethod(label_spans)


@saebench.hookimpl
def register_probe_tasks(register):
    register(PythonTokenTypeTask)
