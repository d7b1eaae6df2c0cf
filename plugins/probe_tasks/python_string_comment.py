"""Probe task: whether each character of stdlib source is code, inside a string, or inside a comment.

Labels "code", "string" and "comment" for every non-whitespace character: STRING tokens of
``tokenize`` (prefix and quotes included, f-strings whole with their replacement fields) are
"string", COMMENT tokens "comment", everything else "code". Inside a docstring or a comment the
tokens are English, so the label is a mode the model has to carry from the opening quote or ``#``,
not a property of the token.
"""

from __future__ import annotations

import tokenize
from typing import Iterator

import saebench
from saebench.metrics import Option
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


class PythonStringCommentTask(saebench.ProbeTask):
    """Token level: whether each character of Python code is code, in a string, or in a comment.

    Texts are ``lines`` whole lines of stdlib files, at most ``max_texts`` of them.
    """

    name = "python_string_comment"
    level = "token"
    OPTIONS = (
        Option("lines", int, 24, minimum=1, help="lines per text"),
        Option("max_texts", int, 400, minimum=1, help="texts yielded at most"),
    )

    def examples(self) -> Iterator[saebench.TaskExample]:
        yield from _code.code_examples(label_spans, self.lines, self.max_texts)

    def identity(self):
        return {**super().identity(), "python": _code.python_tag()}


@saebench.hookimpl
def register_probe_tasks(register):
    register(PythonStringCommentTask)
