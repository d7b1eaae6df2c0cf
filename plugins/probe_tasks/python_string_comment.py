"""Probe task: whether each character of stdlib source is code, inside a string, or inside a comment.

Labels "code", "string" and "comment" for every non-whitespace character: STRING tokens of
``tokenize`` (prefix and quotes included, f-strings whole with their replacement fields) are
"string", COMMENT tokens "comment", everything else "code". Inside a docstring or a comment the
tokens are English, so the label is a mode the model has to carry from the opening quote or ``#``,
not a property of the token.
"""

from __future__ import annotations

import tokenize

import saebench
from saebench.plugins.probe_tasks import _code

CLASSES = ("code", "string", "comment")
_NAMES = (None,) + CLASSES
_CODE, _STRING, _COMMENT = 1, 2, 3


def label_spans(source: str) -> list[tuple[int, int, str]]:
    """[start, end) spans of non-whitespace characters of ``source`` labelled code, string or comment."""
    paint = bytearray([_CODE]) * len(source)  # what no STRING or COMMENT covers is code (a "\" line join too)
    for tok_type, _, start, end in _code.tokens(source):
        if tok_type == tokenize.STRING:
            paint[start:end] = bytes([_STRING]) * (end - start)
        elif tok_type == tokenize.COMMENT:
            paint[start:end] = bytes([_COMMENT]) * (end - start)
    return _code.runs(source, paint, _NAMES)


class PythonStringCommentTask(_code.StdlibCodeTask):
    """Token level: whether each character of Python code is code, in a string, or in a comment.

    Texts are ``lines`` whole lines of stdlib files, at most ``max_texts`` of them.
    """

    name = "python_string_comment"
    label_spans = staticmethod(label_spans)


@saebench.hookimpl
def register_probe_tasks(register):
    register(PythonStringCommentTask)
