"""A Hugging Face dataset as documents, one row's text column each, in the split's order.

``path`` is a hub id (needs network, and ``pip install saebench[hf]``), a local dataset folder
or file that ``datasets.load_dataset`` reads, or a folder written by ``save_to_disk`` (read
with ``load_from_disk``). The dataset is opened when documents are first asked for.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from pydantic import Field

import saebench


def _saved_to_disk(path: Path) -> bool:
    return path.is_dir() and (
        (path / "dataset_info.json").is_file()
        and (path / "state.json").is_file()
        or (path / "dataset_dict.json").is_file()
    )


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
        raise saebench.ConfigError(
            f"cannot load the dataset: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}", where=path
        ) from exc


class DatasetOptions(saebench.Options):
    """Where a Hugging Face dataset is and which column to read (the hf-datasets source, the hf_dataset task)."""

    path: str | None = Field(None, description="hub id, local dataset folder or file (required)")
    name: str | None = Field(None, description="the dataset's config name")
    split: str = Field("train", description="the split read")
    text_field: str = Field("text", description="the column holding the texts")


class HFDatasetsSource(saebench.DataSource):
    """A Hugging Face dataset (hub id or local path) through the datasets library; one text column."""

    name = "hf-datasets"

    Options = DatasetOptions

    def __init__(self, **options: object) -> None:
        super().__init__(**options)
        if not self.options.path:
            raise saebench.ConfigError(
                f"data source {self.name!r} needs the option 'path' (a hub id or a local path)", where="data.path"
            )
        for key in ("split", "text_field"):
            value = getattr(self.options, key)
            if not value:
                raise saebench.ConfigError(f"{key!r} must be a string, got {value!r}", where=f"data.{key}")
        try:
            import datasets  # noqa: F401
        except ImportError as exc:
            raise saebench.ConfigError(
                "install saebench[hf] (the datasets package) to use the hf-datasets source", where="data.source"
            ) from exc

    def _open(self):
        return open_dataset(self.options.path, self.options.name, self.options.split)

    def documents(self) -> Iterator[str]:
        path, text_field = self.options.path, self.options.text_field
        ds = self._open()
        columns = list(getattr(ds, "column_names", None) or [])
        if columns and text_field not in columns:
            raise saebench.ConfigError(
                f"no column {text_field!r}; columns: {', '.join(columns)}", where=f"{path} (data.text_field)"
            )
        row = 0
        for batch in ds.select_columns([text_field]).iter(batch_size=1000):
            for text in batch[text_field]:
                if not isinstance(text, str):
                    raise saebench.ConfigError(
                        f"row {row}: {text_field!r} is {type(text).__name__}, not text", where=path
                    )
                row += 1
                yield text


@saebench.hookimpl
def register_data_sources(register):
    register(HFDatasetsSource)
