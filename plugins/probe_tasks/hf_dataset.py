"""Probe task: a labelled Hugging Face dataset (sentiment, topic, language...), one label per text.

So that the many public text-classification sets can be probed without conversion. Needs the
optional ``datasets`` package (``pip install saebench[hf]``). ``path`` is a hub id (needs network
the first time), a local dataset folder or file that ``datasets.load_dataset`` reads, or a folder
written by ``save_to_disk``. Integer labels with a ClassLabel feature are named by it ("pos" rather
than "1"); other labels are used as their string form. Rows come in the split's order, at most
``max_texts`` of them.
"""

from __future__ import annotations

from typing import Any, Iterator

import saebench
from saebench.errors import ConfigError, DataError
from saebench.metrics import Option
from saebench.plugins.data_sources.hf_datasets import open_dataset


class HFDatasetTask(saebench.ProbeTask):
    """Sequence level: a Hugging Face dataset's text and label columns (ClassLabel names when it has them).

    Options: ``path`` (required), ``name`` (the dataset's config), ``split`` ("train"),
    ``text_field`` ("text"), ``label_field`` ("label"), ``max_texts`` (10000).
    """

    name = "hf_dataset"
    level = "sequence"
    OPTIONS = (
        Option("path", str, None, optional=True, help="hub id or local path (required)"),
        Option("name", str, None, optional=True, help="the dataset's config name"),
        Option("split", str, "train"),
        Option("text_field", str, "text"),
        Option("label_field", str, "label"),
        Option("max_texts", int, 10000, minimum=1, help="rows read at most"),
    )

    def __init__(self, **options: Any):
        # the "name" option would replace the class attribute the registry names this task by
        super().__init__(**options)
        self.config_name = self.options["name"]
        del self.name
        where = f"probe task {self.name}"
        if not self.path:
            raise ConfigError("option 'path' is required: a hub id or a local dataset path", where)
        try:
            import datasets  # noqa: F401
        except ImportError:
            raise ConfigError("the datasets package is not installed: pip install saebench[hf]", where) from None

    def _open(self):
        return open_dataset(self.path, self.config_name, self.split)

    def examples(self) -> Iterator[saebench.TaskExample]:
        import datasets

        ds = self._open()
        for field in (self.text_field, self.label_field):
            if field not in ds.column_names:
                raise ConfigError(f"no column {field!r}; columns: {', '.join(ds.column_names)}", self.path)
        feature = ds.features[self.label_field]
        names = feature.names if isinstance(feature, datasets.ClassLabel) else None
        ds = ds.select(range(min(self.max_texts, len(ds))))
        row = 0
        for batch in ds.select_columns([self.text_field, self.label_field]).iter(batch_size=1000):
            for text, label in zip(batch[self.text_field], batch[self.label_field]):
                if not isinstance(text, str):
                    raise DataError(f"row {row}: {self.text_field!r} is {type(text).__name__}, not text", self.path)
                if label is None or (names is not None and label < 0):  # ClassLabel marks "no label" as -1
                    row += 1
                    continue
                yield saebench.TaskExample(text, label=names[label] if names is not None else str(label))
                row += 1


@saebench.hookimpl
def register_probe_tasks(register):
    register(HFDatasetTask)
