"""What the tests that run a matrix share: run a folder's matrix.yaml in this process, edit it."""

from pathlib import Path

import yaml

from saebench.run.execute import execute
from saebench.run.matrix import load_matrix
from saebench.run.progress import Progress


def run(folder: Path):
    """``saebench run`` of ``folder/matrix.yaml`` in this process (the matrix's relative paths are from the cwd)."""
    return execute(load_matrix(folder / "matrix.yaml"), source="matrix.yaml", progress=Progress(False))


def edit(folder: Path, **changes) -> dict:
    """Replace top-level keys of ``folder/matrix.yaml``; returns the new matrix."""
    m = yaml.safe_load((folder / "matrix.yaml").read_text())
    m.update(changes)
    (folder / "matrix.yaml").write_text(yaml.safe_dump(m, sort_keys=False))
    return m
