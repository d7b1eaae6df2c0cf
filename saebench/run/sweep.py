"""``sweep:`` on an SAE entry: a grid of training settings expanded into named SAEs, before the
matrix is validated (every point is then an ordinary SAE entry with a ``train:`` block)."""

from __future__ import annotations

import itertools
import re
from pathlib import Path
from typing import Any

from saebench.errors import ConfigError
from saebench.training import TrainConfig


def in_sweep(exc: ConfigError, origin: list[tuple[int, str | None]]) -> ConfigError:
    """An error about the j-th expanded SAE, placed at the entry of the file it came from."""

    def place(m: re.Match[str]) -> str:
        j = int(m.group(1))
        if j >= len(origin):
            return m.group(0)
        i, name = origin[j]
        return f"saes[{i}]" + (f" (sweep point {name})" if name is not None else "")

    if exc.where is None or not any(o != (j, None) for j, o in enumerate(origin)):
        return exc
    return ConfigError(exc.problem, re.sub(r"saes\[(\d+)\]", place, exc.where, count=1))


def expand_sweeps(saes: list[Any], where: str | Path) -> tuple[list[Any], list[tuple[int, str | None]]]:
    """Each SAE entry with a ``sweep:`` grid of training settings becomes one entry per point of the
    grid (in the grid's order, the last key varying fastest), its ``train:`` updated with the point
    and its name formatted from it: ``{name: "topk-{d_sae}-k{k}", train: {...}, sweep: {d_sae: [1024,
    2048], k: [16, 32]}}`` gives topk-1024-k16, topk-1024-k32, topk-2048-k16, topk-2048-k32.

    Returns the entries and, for each, (index of the entry in the file, name of its sweep point or
    None), so that later errors name the file's entry."""
    out: list[Any] = []
    origin: list[tuple[int, str | None]] = []
    for i, entry in enumerate(saes):
        if not isinstance(entry, dict) or "sweep" not in entry:
            out.append(entry)
            origin.append((i, None))
            continue
        at = f"{where}: saes[{i}]"
        grid = entry["sweep"]
        if not isinstance(grid, dict) or not grid:
            raise ConfigError("a sweep is a non-empty mapping of training settings to lists of values", f"{at}.sweep")
        if not isinstance(entry.get("train"), dict):
            raise ConfigError("a sweep varies a training config: give 'train:' beside it", f"{at}.sweep")
        for key, values in grid.items():
            if key not in TrainConfig.model_fields:
                known = ", ".join(TrainConfig.model_fields)
                raise ConfigError(f"not a training setting; settings: {known}", f"{at}.sweep.{key}")
            if not isinstance(values, list) or not values:
                raise ConfigError("give a non-empty list of values", f"{at}.sweep.{key}")
        name = str(entry.get("name", ""))
        points = list(itertools.product(*grid.values()))
        names = []
        for point in points:
            setting = dict(zip(grid, point))
            try:
                names.append(name.format(**setting))
            except (KeyError, IndexError, ValueError) as exc:
                raise ConfigError(
                    f"cannot format the name from the grid ({exc}); use {{KEY}} of swept keys", f"{at}.name"
                ) from None
            train = {**entry["train"], **setting}
            try:
                TrainConfig.from_mapping(train, f"{at}.train")
            except ConfigError as exc:
                swept = next((k for k in setting if (exc.where or "").endswith(f".train.{k}")), None)
                if swept is None:
                    raise
                raise ConfigError(f"{setting[swept]!r}: {exc.problem}", f"{at}.sweep.{swept}") from None
            out.append({**{k: v for k, v in entry.items() if k != "sweep"}, "name": names[-1], "train": train})
            origin.append((i, names[-1]))
        if len(set(names)) < len(names):
            varied = [k for k, v in grid.items() if len(v) > 1]
            raise ConfigError(
                f"the grid's SAEs need distinct names: put {', '.join('{' + k + '}' for k in varied)} in it",
                f"{at}.name",
            )
    return out, origin
