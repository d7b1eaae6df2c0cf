"""Helpers shared by the probe tasks over stdlib source: files, tokens, line chunks, spans cut to a chunk.

The code tasks label a whole file (labels such as "inside a string" or "bracket depth 2" depend on
everything before a line), then cut it into texts of whole lines and keep the spans that fall in
each text, shifted to its start.
"""

from __future__ import annotations

import bisect
import io
import random
import re
import sys
import tokenize
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path

from pydantic import Field

import saebench
from saebench.interfaces import TaskExample
from saebench.plugins.data_sources.python_stdlib import _read, stdlib_files

Span = tuple[int, int, str]

#: whole-file analysis costs time in proportion to the file; bigger files are left out so that
#: ``examples()`` stays well under two seconds (most stdlib modules are smaller)
MAX_FILE_CHARS = 40_000
#: texts taken from one file, evenly spaced through it: many files, not the first few, make the texts
CHUNKS_PER_FILE = 4
#: tokenize errors, and what a file that is not Python 3.x of this interpreter raises
SOURCE_ERRORS = (SyntaxError, tokenize.TokenError, ValueError, RecursionError, MemoryError)

_WHITESPACE = re.compile(r"\s+")
_RUN = re.compile(rb"([^\x00])\1*", re.DOTALL)  # a run of one non-zero byte
_FSTRING_START = getattr(tokenize, "FSTRING_START", None)  # 3.12+: f-strings come in pieces
_FSTRING_END = getattr(tokenize, "FSTRING_END", None)


def python_tag() -> str:
    """Which stdlib the texts came from; part of a code task's identity, as the texts change with it."""
    return f"{sys.version_info[0]}.{sys.version_info[1]}"


def code_files() -> Iterator[tuple[Path, str]]:
    """(path, source) of readable stdlib files up to MAX_FILE_CHARS, in a fixed shuffled order.

    Shuffled (with a fixed seed) so that any prefix mixes packages instead of being all ``_*.py``.
    """
    files = stdlib_files()
    random.Random(0).shuffle(files)
    for path in files:
        source = _read(path)
        if source and source.strip() and len(source) <= MAX_FILE_CHARS:
            yield path, source


def line_starts(source: str) -> list[int]:
    """Offset of each line's first character. Lines end at "\\n" only, as in ``tokenize`` and ``ast``
    (``str.splitlines`` also splits at form feeds and other separators, which the stdlib holds)."""
    return [0] + [m.end() for m in re.finditer("\n", source)]


def tokens(source: str) -> Iterator[tuple[int, str, int, int]]:
    """(type, string, start, end) of ``source``'s tokens, with absolute character offsets.

    An f-string is one STRING token, as in Python 3.11; on 3.12+ its pieces are merged back, so the
    labels do not depend on the interpreter. Raises tokenize.TokenError or SyntaxError on bad source.
    """
    starts = line_starts(source)
    n_lines = len(starts)
    fstring_depth, fstring_start = 0, 0
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.ENDMARKER:
            break
        (r0, c0), (r1, c1) = tok.start, tok.end
        if r0 > n_lines or r1 > n_lines:  # the NEWLINE/DEDENT tokenize adds after a last line without "\n"
            continue
        start, end = starts[r0 - 1] + c0, starts[r1 - 1] + c1
        if _FSTRING_START is not None:
            if tok.type == _FSTRING_START:
                if fstring_depth == 0:
                    fstring_start = start
                fstring_depth += 1
                continue
            if tok.type == _FSTRING_END:
                fstring_depth -= 1
                if fstring_depth == 0:
                    yield tokenize.STRING, source[fstring_start:end], fstring_start, end
                continue
            if fstring_depth:
                continue
        yield tok.type, tok.string, start, end


def runs(source: str, paint: bytearray, names: Sequence[str | None]) -> list[Span]:
    """Spans of equal non-zero ``paint`` (one byte per character; ``names[value]`` the label), with
    whitespace characters left unlabelled: labels are for the characters a token is anchored on."""
    for m in _WHITESPACE.finditer(source):
        paint[m.start() : m.end()] = bytes(m.end() - m.start())
    return [(m.start(), m.end(), names[m.group()[0]]) for m in _RUN.finditer(bytes(paint))]


def line_chunks(source: str, lines: int) -> list[tuple[int, int]]:
    """[start, end) of consecutive texts of ``lines`` whole lines (the last may be shorter)."""
    starts = line_starts(source)
    if starts[-1] == len(source):  # a final "\n" does not begin another line
        starts.pop()
    bounds = starts + [len(source)]
    return [(bounds[i], bounds[min(i + lines, len(starts))]) for i in range(0, len(starts), lines)]


def spread(n: int, k: int) -> list[int]:
    """k indices evenly spread over range(n) (all of them when n <= k)."""
    if n <= k:
        return list(range(n))
    return [(2 * i + 1) * n // (2 * k) for i in range(k)]


def clip(spans: Sequence[Span], start: int, end: int) -> tuple[Span, ...]:
    """The parts of sorted, non-overlapping ``spans`` inside [start, end), relative to ``start``."""
    i = bisect.bisect_right([s[1] for s in spans], start)
    out = []
    for s, e, label in spans[i:]:
        if s >= end:
            break
        s, e = max(s, start), min(e, end)
        if s < e:
            out.append((s - start, e - start, label))
    return tuple(out)


def code_examples(label_spans: Callable[[str], list[Span]], lines: int, max_texts: int) -> list[TaskExample]:
    """Up to ``max_texts`` texts of ``lines`` lines from stdlib files, labelled by ``label_spans``
    (run on each whole file); files it cannot label are skipped, and so are texts with no label."""
    out: list[TaskExample] = []
    if max_texts <= 0:
        return out
    for _, source in code_files():
        try:
            spans = sorted(label_spans(source))
        except SOURCE_ERRORS:
            continue
        chunks = line_chunks(source, lines)
        for i in spread(len(chunks), CHUNKS_PER_FILE):
            s, e = chunks[i]
            cut = clip(spans, s, e)
            if cut:
                out.append(TaskExample(source[s:e], spans=cut))
                if len(out) >= max_texts:
                    return out
    return out


class StdlibCodeTask(saebench.ProbeTask):
    """Token-level labels painted over stdlib code: a subclass sets ``name`` and ``label_spans``.

    Texts are ``lines`` whole lines of stdlib files, at most ``max_texts`` of them; the cache key
    carries the interpreter's version, whose stdlib the texts come from.
    """

    level = "token"

    class Options(saebench.Options):
        lines: int = Field(24, ge=1, description="lines per text")
        max_texts: int = Field(400, ge=1, description="texts yielded at most")

    @staticmethod
    def label_spans(source: str) -> list[Span]:
        raise NotImplementedError

    def examples(self) -> Iterator[TaskExample]:
        yield from code_examples(self.label_spans, self.options.lines, self.options.max_texts)

    def identity(self):
        return {**super().identity(), "python": python_tag()}
