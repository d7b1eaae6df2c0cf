"""Models that ship inside PyPI packages, so a run needs no network (saebench.models.embedded)."""
