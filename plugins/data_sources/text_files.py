"""Local files as documents: each plain-text file is one document, each JSONL line is one.

``paths`` is a list of globs (``**`` matches across folders), relative to the current folder
unless absolute; each glob's matches are read in sorted order, globs in the order given, a file
matched twice read once. A glob that matches no file is an error, found when the source is built.
"""

from __future__ import annotations

import glob
import json
import os
from pathlib import Path
from typing import Iterator

import saebench


class TextFilesSource(saebench.DataSource):
    """Plain-text and JSONL files matched by a list of globs (JSONL reads a text field).

    Options: ``paths`` (list of globs, required), ``text_field`` (the JSONL key, "text").
    """

    name = "text-files"

    def __init__(self, paths: list[str] | str | None = None, text_field: str = "text", **unknown: object) -> None:
        if unknown:
            raise saebench.ConfigError(f"unknown option(s) {', '.join(map(repr, sorted(unknown)))} for data source "
                                       f"{self.name!r}; options: paths, text_field", where=f"data.{sorted(unknown)[0]}")
        if paths is None:
            raise saebench.ConfigError(f"data source {self.name!r} needs the option 'paths' (a list of globs)",
                                       where="data.paths")
        if isinstance(paths, str):
            paths = [paths]
        if not isinstance(paths, (list, tuple)) or not paths or not all(isinstance(p, str) for p in paths):
            raise saebench.ConfigError(f"'paths' must be a non-empty list of globs, got {paths!r}", where="data.paths")
        if not isinstance(text_field, str) or not text_field:
            raise saebench.ConfigError(f"'text_field' must be a string, got {text_field!r}", where="data.text_field")
        self.text_field = text_field
        self.files: list[Path] = []
        seen: set[str] = set()
        for pattern in paths:
            matches = sorted(m for m in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(m))
            if not matches:
                raise saebench.ConfigError(f"glob {pattern!r} matches no file (relative to {os.getcwd()})",
                                           where="data.paths")
            for m in matches:
                key = os.path.realpath(m)
                if key not in seen:
                    seen.add(key)
                    self.files.append(Path(m))

    def documents(self) -> Iterator[str]:
        for path in self.files:
            if path.suffix == ".jsonl":
                yield from self._jsonl(path)
            else:
                yield self._read(path)

    @staticmethod
    def _read(path: Path) -> str:
        try:
            return path.read_text(encoding="utf-8")
        except UnicodeDecodeError as exc:
            raise saebench.ConfigError(f"not UTF-8 text ({exc.reason} at byte {exc.start})", where=path) from exc
        except OSError as exc:
            raise saebench.ConfigError(f"cannot read: {exc.strerror}", where=path) from exc

    def _jsonl(self, path: Path) -> Iterator[str]:
        for lineno, line in enumerate(self._read(path).splitlines(), 1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise saebench.ConfigError(f"line {lineno} is not valid JSON ({exc.msg})", where=path) from exc
            text = row.get(self.text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise saebench.ConfigError(f"line {lineno} has no string field {self.text_field!r}", where=path)
            yield text


@saebench.hookimpl
def register_data_sources(register):
    register(TextFilesSource)
