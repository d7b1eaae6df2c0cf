"""A Hugging Face dataset as documents, one row's text column each, in the split's order.

``path`` is a hub id (needs network, and ``pip install saebench[hf]``), a local dataset folder
or file that ``datasets.load_dataset`` reads, or a folder written by ``save_to_disk`` (read
with ``load_from_disk``). The dataset is opened when documents are first asked for.
"""

from __future__ import annotations

from pathlib import Path
from typing import Iterator

import saebench

OPTIONS = ("path", "name", "split", "text_field")


def _saved_to_disk(path: Path) -> bool:
    return path.is_dir() and ((path / "dataset_info.json").is_file() and (path / "state.json").is_file()
                              or (path / "dataset_dict.json").is_file())


def open_dataset(path: str, config_name: str | None, split: str):
    """One split of a dataset: a ``save_to_disk`` folder, or anything ``datasets.load_dataset`` reads.
    Any failure is a ConfigError naming ``path``."""
    import datasets

    local = Path(path).expanduser()
    try:
        if _saved_to_disk(local):
            ds = datasets.load_from_disk(str(local))
            if isinstance(ds, datasets.DatasetDict):
                if split not in ds:
                    raise saebench.ConfigError(f"no split {split!r}; splits: {', '.join(ds)}", where=path)
                ds = ds[split]
            return ds
        return datasets.load_dataset(path, config_name, split=split)
    except saebench.SaebenchError:
        raise
    except Exception as exc:  # the datasets library raises many kinds; all mean "cannot open this"
        raise saebench.ConfigError(f"cannot load the dataset: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}",
                                   where=path) from exc


class HFDatasetsSource(saebench.DataSource):
    """A Hugging Face dataset (hub id or local path) through the datasets library; one text column.

    Options: ``path`` (required), ``name`` (the dataset's config), ``split`` ("train"),
    ``text_field`` ("text").
    """

    name = "hf-datasets"

    def __init__(self, path: str | None = None, name: str | None = None, split: str = "train",
                 text_field: str = "text", **unknown: object) -> None:
        if unknown:
            raise saebench.ConfigError(f"unknown option(s) {', '.join(map(repr, sorted(unknown)))} for data source "
                                       f"{self.name!r}; options: {', '.join(OPTIONS)}", where=f"data.{sorted(unknown)[0]}")
        if not isinstance(path, str) or not path:
            raise saebench.ConfigError(f"data source {self.name!r} needs the option 'path' (a hub id or a local path)",
                                       where="data.path")
        for key, value in (("split", split), ("text_field", text_field)):
            if not isinstance(value, str) or not value:
                raise saebench.ConfigError(f"{key!r} must be a string, got {value!r}", where=f"data.{key}")
        try:
            import datasets  # noqa: F401
        except ImportError as exc:
            raise saebench.ConfigError("install saebench[hf] (the datasets package) to use the hf-datasets source",
                                       where="data.source") from exc
        self.path, self.config_name, self.split, self.text_field = path, name, split, text_field

    def _open(self):
        return open_dataset(self.path, self.config_name, self.split)

    def documents(self) -> Iterator[str]:
        ds = self._open()
        columns = list(getattr(ds, "column_names", None) or [])
        if columns and self.text_field not in columns:
            raise saebench.ConfigError(f"no column {self.text_field!r}; columns: {', '.join(columns)}",
                                       where=f"{self.path} (data.text_field)")
        row = 0
        for batch in ds.select_columns([self.text_field]).iter(batch_size=1000):
            for text in batch[self.text_field]:
                if not isinstance(text, str):
                    raise saebench.ConfigError(f"row {row}: {self.text_field!r} is {type(text).__name__}, not text",
                                               where=self.path)
                row += 1
                yield text


@saebench.hookimpl
def register_data_sources(register):
    register(HFDatasetsSource)
