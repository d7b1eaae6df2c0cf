"""Probe task: how deeply nested in ``()[]{}`` each character of stdlib source is.

Labels "0", "1", "2" and "3+" for every non-whitespace character, from the ``tokenize`` OP tokens
of the whole file (so a bracket inside a string or a comment does not count, and strings and
comments take the depth they sit at). A bracket belongs to the outer depth: the ``(`` and ``)`` of
``f(x)`` are at 0, ``x`` at 1. Depth is a counter the model has to keep over arbitrary distances,
which a token's own identity cannot give away.
"""

from __future__ import annotations

import tokenize

import saebench
from saebench.plugins.probe_tasks import _code

CLASSES = ("0", "1", "2", "3+")
_NAMES = (None,) + CLASSES
_OPEN, _CLOSE = frozenset("([{"), frozenset(")]}")
_UNLABELLED = frozenset({tokenize.NEWLINE, tokenize.NL, tokenize.INDENT, tokenize.DEDENT})


def label_spans(source: str) -> list[tuple[int, int, str]]:
    """[start, end) spans of non-whitespace characters of ``source`` with their bracket depth."""
    paint = bytearray(len(source))
    depth = 0
    for tok_type, string, start, end in _code.tokens(source):
        if tok_type in _UNLABELLED:
            continue
        if tok_type == tokenize.OP and string in _CLOSE:
            depth = max(depth - 1, 0)  # an unmatched closer: tokenize raises, but only at the end of the file
        paint[start:end] = bytes([1 + min(depth, 3)]) * (end - start)
        if tok_type == tokenize.OP and string in _OPEN:
            depth += 1
    return _code.runs(source, paint, _NAMES)


class BracketDepthTask(_code.StdlibCodeTask):
    """Token level: the ()[]{} nesting depth of each character of Python code (0, 1, 2, 3+).

    Texts are ``lines`` whole lines of stdlib files, at most ``max_texts`` of them.
    """

    name = "bracket_depth"
    label_spans = staticmethod(label_spans)


@saebench.hookimpl
def register_probe_tasks(register):
    register(BracketDepthTask)
