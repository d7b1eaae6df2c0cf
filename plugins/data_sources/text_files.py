"""Local files as documents: each plain-text file is one document, each JSONL line is one.

``paths`` is a list of globs (``**`` matches across folders), relative to the current folder
unless absolute; each glob's matches are read in sorted order, globs in the order given, a file
matched twice read once. A glob that matches no file is an error, found when the source is built.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from pydantic import Field, field_validator

import saebench


class TextFilesSource(saebench.DataSource):
    """Plain-text and JSONL files matched by a list of globs (JSONL reads a text field)."""

    name = "text-files"

    class Options(saebench.Options):
        paths: list[str] | str | None = Field(None, description="a glob or a list of globs (required)")
        text_field: str = Field("text", description="the key of a JSONL line's text")

        @field_validator("paths", mode="before")
        @classmethod
        def _globs(cls, value: Any) -> Any:
            if isinstance(value, tuple):  # a tuple of globs reads as a list, as it always has
                value = list(value)
            globs = isinstance(value, list) and value and all(isinstance(p, str) for p in value)
            if not (value is None or isinstance(value, str) or globs):
                raise ValueError("must be a non-empty list of globs")
            return value

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        paths = self.options.paths
        if paths is None:
            raise saebench.ConfigError(
                f"data source {self.name!r} needs the option 'paths' (a list of globs)", where="data.paths"
            )
        if isinstance(paths, str):
            paths = [paths]
        if not self.options.text_field:
            raise saebench.ConfigError(
                f"'text_field' must be a string, got {self.options.text_field!r}", where="data.text_field"
            )
        self.files: list[Path] = []
        seen: set[str] = set()
        for pattern in paths:
            matches = sorted(m for m in glob.glob(os.path.expanduser(pattern), recursive=True) if os.path.isfile(m))
            if not matches:
                raise saebench.ConfigError(
                    f"glob {pattern!r} matches no file (relative to {os.getcwd()})", where="data.paths"
                )
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
            text = row.get(self.options.text_field) if isinstance(row, dict) else None
            if not isinstance(text, str):
                raise saebench.ConfigError(f"line {lineno} has no string field {self.options.text_field!r}", where=path)
            yield text


@saebench.hookimpl
def register_data_sources(register):
    register(TextFilesSource)
