"""Probe task: the user's own labelled texts, from a CSV or JSONL file.

So that a probe can be run on any property someone has labels for, without writing a plugin.
Sequence level (``level: sequence``, the default): a ``.csv`` with columns ``text`` and ``label``
(other columns ignored), or a ``.jsonl`` of objects with ``"text"`` and ``"label"``. Token level
(``level: token``): a ``.jsonl`` whose objects have ``"text"`` and ``"spans"``: ``[[start, end,
label], ...]``, non-overlapping [start, end) character offsets into the text. ``taxonomy``
optionally names a JSON file ``{child: parent}`` over the labels, for tree probes.

The whole file is checked before any text is yielded; a bad row is reported as ``path:line``.
Errors found when the task is made name the file in their message too, as make_task keeps only the
message. The file's content hash is part of the task's identity, so editing the file invalidates
cached probes.
"""

from __future__ import annotations

import csv
import hashlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field

import saebench
from saebench.errors import ConfigError, DataError

LEVELS = ("sequence", "token")
FORMATS = (".csv", ".jsonl")


class FileTask(saebench.ProbeTask):
    """Your labelled texts: a CSV (text, label) or JSONL file (label per text, or token-level spans)."""

    name = "file"

    class Options(saebench.Options):
        path: str | None = Field(None, description="a .csv or .jsonl file (required)")
        level: str = Field("sequence", description="sequence (one label per text) or token (labelled spans)")
        taxonomy: str | None = Field(None, description="a JSON file {child: parent} over the labels")

    def __init__(self, **options: Any):
        super().__init__(**options)
        where = f"probe task {self.name}"
        path, level = self.options.path, self.options.level
        if not path:
            raise ConfigError("option 'path' is required: a .csv or .jsonl file of labelled texts", where)
        if level not in LEVELS:
            raise ConfigError(f"option 'level' must be one of {', '.join(LEVELS)}, got {level!r}", where)
        # the ProbeTask attribute build_probe_data reads, set from the option on this instance only
        self.level = level
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"no such file: {path}", path)
        if file.suffix.lower() not in FORMATS:
            raise ConfigError(f"a probe task file must be {' or '.join(FORMATS)}, got {path}", path)
        if level == "token" and file.suffix.lower() != ".jsonl":
            raise ConfigError(f"token-level labels (spans) must come in a .jsonl file, got {path}", path)
        self._file = file
        self._taxonomy = self._read_taxonomy(self.options.taxonomy) if self.options.taxonomy else {}

    @staticmethod
    def _read_taxonomy(path: str) -> dict[str, str]:
        file = Path(path).expanduser()
        if not file.is_file():
            raise ConfigError(f"no such file (option 'taxonomy'): {path}", path)
        try:
            tree = json.loads(file.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ConfigError(f"invalid JSON in {path}: {exc}", path) from None
        if not isinstance(tree, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in tree.items()):
            raise ConfigError(f"a taxonomy is a JSON object {{child: parent}} of strings; {path} is not", path)
        return tree

    def examples(self) -> Iterator[saebench.TaskExample]:
        rows = self._read_csv() if self._file.suffix.lower() == ".csv" else self._read_jsonl()
        if not rows:
            raise DataError("the file holds no labelled texts", self.options.path)
        yield from rows

    def _read_csv(self) -> list[saebench.TaskExample]:
        out = []
        try:
            with self._file.open(newline="", encoding="utf-8-sig") as f:
                reader = csv.DictReader(f)
                columns = reader.fieldnames or []
                missing = [c for c in ("text", "label") if c not in columns]
                if missing:
                    raise DataError(
                        f"no column {' or '.join(map(repr, missing))}; the header has "
                        f"{', '.join(map(repr, columns)) or 'nothing'}",
                        f"{self.options.path}:1",
                    )
                line = reader.line_num + 1
                for row in reader:
                    where = f"{self.options.path}:{line}"
                    if None in row:
                        raise DataError(
                            f"{len(columns) + len(row[None])} fields, the header has {len(columns)} "
                            "(a comma in an unquoted text?)",
                            where,
                        )
                    text, label = row["text"], row["label"]
                    if text is None or label is None:
                        raise DataError(f"fewer fields than the header's {len(columns)}", where)
                    if not label.strip():
                        raise DataError("empty label", where)
                    out.append(saebench.TaskExample(text, label=label))
                    line = reader.line_num + 1
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", self.options.path) from None
        except csv.Error as exc:
            raise DataError(f"malformed CSV: {exc}", self.options.path) from None
        return out

    def _read_jsonl(self) -> list[saebench.TaskExample]:
        out = []
        try:
            lines = self._file.read_text(encoding="utf-8").split("\n")
        except UnicodeDecodeError as exc:
            raise DataError(f"not UTF-8 text: {exc.reason} at byte {exc.start}", self.options.path) from None
        for n, raw in enumerate(lines, 1):
            if not raw.strip():
                continue
            where = f"{self.options.path}:{n}"
            try:
                obj = json.loads(raw)
            except json.JSONDecodeError as exc:
                raise DataError(f"invalid JSON: {exc.msg} (column {exc.colno})", where) from None
            if not isinstance(obj, dict):
                raise DataError(f"each line must be a JSON object, got {type(obj).__name__}", where)
            text = obj.get("text")
            if not isinstance(text, str):
                raise DataError('no "text" string', where)
            if self.options.level == "sequence":
                label = obj.get("label")
                if isinstance(label, int) and not isinstance(label, bool):
                    label = str(label)
                if not isinstance(label, str) or not label.strip():
                    raise DataError('no "label" (a non-empty string) for a sequence-level task', where)
                out.append(saebench.TaskExample(text, label=label))
            else:
                out.append(saebench.TaskExample(text, spans=_spans(obj.get("spans"), len(text), where)))
        return out

    def taxonomy(self) -> dict[str, str]:
        return dict(self._taxonomy)

    def identity(self) -> dict[str, Any]:
        digest = {"sha256": hashlib.sha256(self._file.read_bytes()).hexdigest()}
        taxonomy = self.options.taxonomy
        if taxonomy:
            digest["taxonomy_sha256"] = hashlib.sha256(Path(taxonomy).expanduser().read_bytes()).hexdigest()
        return {**super().identity(), **digest}


def _spans(value: Any, length: int, where: str) -> tuple[tuple[int, int, str], ...]:
    if not isinstance(value, list):
        raise DataError('no "spans" list ([[start, end, label], ...]) for a token-level task', where)
    spans = []
    for item in value:
        ok = (
            isinstance(item, list)
            and len(item) == 3
            and all(type(x) is int for x in item[:2])
            and isinstance(item[2], str)
            and item[2].strip()
        )
        if not ok:
            raise DataError(f"a span is [start, end, label] (two ints and a non-empty string), got {item!r}", where)
        start, end, label = item
        if not 0 <= start < end <= length:
            raise DataError(f"span {item!r} is not a non-empty range inside the text (length {length})", where)
        spans.append((start, end, label))
    spans.sort()
    for a, b in zip(spans, spans[1:]):
        if b[0] < a[1]:
            raise DataError(f"spans {list(a)} and {list(b)} overlap", where)
    return tuple(spans)


@saebench.hookimpl
def register_probe_tasks(register):
    register(FileTask)
