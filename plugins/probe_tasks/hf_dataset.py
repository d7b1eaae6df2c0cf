"""Probe task: a labelled Hugging Face dataset (sentiment, topic, language...), one label per text.

So that the many public text-classification sets can be probed without conversion. Needs the
optional ``datasets`` package (``pip install saebench[hf]``). ``path`` is a hub id (needs network
the first time), a local dataset folder or file that ``datasets.load_dataset`` reads, or a folder
written by ``save_to_disk``. Integer labels with a ClassLabel feature are named by it ("pos" rather
than "1"); other labels are used as their string form. Rows come in the split's order, at most
``max_texts`` of them.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

from pydantic import Field

import saebench
from saebench.errors import ConfigError, DataError
from saebench.plugins.data_sources.hf_datasets import DatasetOptions, open_dataset


class HFDatasetTask(saebench.ProbeTask):
    """Sequence level: a Hugging Face dataset's text and label columns (ClassLabel names when it has them)."""

    name = "hf_dataset"
    level = "sequence"

    class Options(DatasetOptions):
        label_field: str = Field("label", description="the column holding the labels")
        max_texts: int = Field(10000, ge=1, description="rows read at most")

    def __init__(self, **options: Any):
        super().__init__(**options)
        where = f"probe task {self.name}"
        if not self.options.path:
            raise ConfigError("option 'path' is required: a hub id or a local dataset path", where)
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise ConfigError("the datasets package is not installed: pip install saebench[hf]", where) from None

    def _open(self):
        return open_dataset(self.options.path, self.options.name, self.options.split)

    def examples(self) -> Iterator[saebench.TaskExample]:
        import datasets

        path, text_field, label_field = self.options.path, self.options.text_field, self.options.label_field
        ds = self._open()
        for field in (text_field, label_field):
            if field not in ds.column_names:
                raise ConfigError(f"no column {field!r}; columns: {', '.join(ds.column_names)}", path)
        feature = ds.features[label_field]
        names = feature.names if isinstance(feature, datasets.ClassLabel) else None
        ds = ds.select(range(min(self.options.max_texts, len(ds))))
        row = 0
        for batch in ds.select_columns([text_field, label_field]).iter(batch_size=1000):
            for text, label in zip(batch[text_field], batch[label_field]):
                if not isinstance(text, str):
                    raise DataError(f"row {row}: {text_field!r} is {type(text).__name__}, not text", path)
                if label is None or (names is not None and label < 0):  # ClassLabel marks "no label" as -1
                    row += 1
                    continue
                yield saebench.TaskExample(text, label=names[label] if names is not None else str(label))
                row += 1


@saebench.hookimpl
def register_probe_tasks(register):
    register(HFDatasetTask)
