"""Probe tasks and the data probe scorers fit on.

A :class:`ProbeTask` (a plugin) yields labelled texts: one label per text (``level = "sequence"``,
e.g. which corpus a passage comes from) or labelled character spans (``level = "token"``, e.g. the
syntax node a piece of code belongs to: the language-model analogue of per-pixel segmentation
labels). :func:`build_probe_data` runs the subject model once over a task's texts and keeps the
activations at each hook point with their labels as a :class:`ProbeData`, cached on disk by the
runner, so every SAE and every probe scorer on that hook point reuses one forward pass.

Token labels come from character offsets: a token takes the label of the span that holds its first
non-whitespace character (a whitespace-only token: its first character); tokens outside every
span are unlabelled and left out. Texts are split into train and test as wholes (a seeded 80/20
split of the texts), so no text contributes tokens to both.
"""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from pydantic import Field
from safetensors.torch import load_file, save_file
from torch import Tensor

from saebench import plugin_manager
from saebench.errors import ConfigError, DataError, PluginError, SaebenchError
from saebench.files import building
from saebench.interfaces import ProbeTask
from saebench.options import Options

TRAIN_FRACTION = 0.8
#: bumped when what build_probe_data keeps changes (it keys the runner's cache)
PROBE_FORMAT = 2
#: texts read from a task at most, and texts per forward pass
MAX_TEXTS = 2000
BATCH_TEXTS = 8


def make_task(spec: str | dict[str, Any], where: str) -> ProbeTask:
    """A task from a scorer option: ``"name"`` or ``{name: ..., options: {...}}``."""
    if isinstance(spec, str):
        name, options = spec, {}
    elif isinstance(spec, dict) and isinstance(spec.get("name"), str) and set(spec) <= {"name", "options"}:
        name, options = spec["name"], spec.get("options") or {}
    else:
        raise ConfigError(f"a probe task is a name or {{name: ..., options: {{...}}}}, got {spec!r}", where)
    try:
        return plugin_manager.get("probe_task", name)(**options)
    except SaebenchError as exc:  # keep the task's own location (a file and line) after the matrix's
        raise exc.inside(where) from None


@dataclass
class ProbeData:
    """A task's activations at one hook point, with labels and a train/test split.

    Rows are tokens: for a token-level task, the labelled tokens; for a sequence-level task, every
    non-special token of every text (``sequence`` says which). ``labels`` and ``train`` are per row
    (token level) or per text (sequence level). ``token_text`` maps the token ids that occur to text.
    """

    task: str
    level: str
    classes: list[str]
    acts: Tensor  # [rows, d] float32
    token_ids: Tensor  # [rows] long
    sequence: Tensor  # [rows] long: index of the text each row came from
    labels: Tensor  # [rows] (token level) or [texts] (sequence level), long indices into classes
    train: Tensor  # bool, same length as labels
    token_text: dict[int, str] = field(default_factory=dict)
    taxonomy: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    _cache: dict[Any, Any] = field(default_factory=dict, repr=False, compare=False)

    def cached(self, key: Any, compute: Callable[[], Any]) -> Any:
        """``compute()`` once per ``key`` for this data: for what depends on the task's activations
        alone (a dense probe), not on the SAE, so every SAE cell of a run shares it."""
        if key not in self._cache:
            self._cache[key] = compute()
        return self._cache[key]

    @property
    def n_classes(self) -> int:
        return len(self.classes)

    def features(self, encode: Callable[[Tensor], Tensor] | None = None, batch: int = 4096) -> Tensor:
        """[len(labels), width]: ``encode(acts)`` (identity when None), mean-pooled per text for a
        sequence-level task. Encoding is batched; pooling happens after encoding (the mean of the
        latents, not the latents of the mean)."""
        n = self.labels.shape[0]
        parts, sums = [], None
        for i in range(0, self.acts.shape[0], batch):
            rows = encode(self.acts[i : i + batch]) if encode else self.acts[i : i + batch]
            if self.level == "token":
                parts.append(rows)
                continue
            if sums is None:  # pooled batch by batch: a sequence task's rows never all sit in memory encoded
                sums = rows.new_zeros(n, rows.shape[1])
            sums.index_add_(0, self.sequence[i : i + batch], rows)
        if self.level == "token":
            return torch.cat(parts) if parts else self.acts.new_zeros(0, self.acts.shape[1])
        counts = torch.bincount(self.sequence, minlength=n).clamp_min(1).to(sums.dtype)
        return sums / counts[:, None]

    def save(self, folder: Path) -> None:
        with building(folder) as tmp:
            self._write(tmp)

    def _write(self, tmp: Path) -> None:
        save_file(
            {
                "acts": self.acts.contiguous(),
                "token_ids": self.token_ids,
                "sequence": self.sequence,
                "labels": self.labels,
                "train": self.train,
            },
            str(tmp / "data.safetensors"),
        )
        meta = {
            "task": self.task,
            "level": self.level,
            "classes": self.classes,
            "taxonomy": self.taxonomy,
            "token_text": {str(k): v for k, v in self.token_text.items()},
            "stats": self.stats,
        }
        (tmp / "meta.json").write_text(json.dumps(meta))

    @classmethod
    def load(cls, folder: Path) -> ProbeData:
        folder = Path(folder)
        meta = json.loads((folder / "meta.json").read_text())
        t = load_file(str(folder / "data.safetensors"))
        return cls(
            meta["task"],
            meta["level"],
            meta["classes"],
            t["acts"],
            t["token_ids"],
            t["sequence"],
            t["labels"],
            t["train"],
            {int(k): v for k, v in meta["token_text"].items()},
            meta["taxonomy"],
            meta["stats"],
        )

    @staticmethod
    def exists(folder: Path) -> bool:
        return (Path(folder) / "meta.json").is_file()


class ProbeDataOptions(Options):
    """The options of every scorer that reads probe-task data (with the task, they key the shared cache)."""

    context_length: int = Field(128, ge=2, description="tokens per text (longer texts are cut)")
    max_rows: int = Field(
        16384, ge=16, description="at most this many labelled tokens (texts, for a sequence task) per task"
    )


def encoder(sae: Any) -> Callable[[Tensor], Tensor]:
    """``encode(x)``: the SAE's latents of raw activations, float32, without gradients."""

    def encode(x: Tensor) -> Tensor:
        with torch.no_grad():
            return sae.encode(x.to(sae.W_dec.dtype)).float()

    return encode


def token_labels(strings: Sequence[str], spans: Sequence[tuple[int, int, str]]) -> list[str | None]:
    """The label of each token (see the module docstring), from the tokens' texts and the spans."""
    starts = sorted(spans)
    out: list[str | None] = []
    pos = 0
    j = 0
    for s in strings:
        stripped = len(s) - len(s.lstrip())
        anchor = pos + (stripped if stripped < len(s) else 0)
        while j < len(starts) and starts[j][1] <= anchor:
            j += 1
        label = None
        if s and j < len(starts) and starts[j][0] <= anchor < starts[j][1]:
            label = starts[j][2]
        out.append(label)
        pos += len(s)
    return out


def build_probe_data(
    adapter: Any,
    task: ProbeTask,
    hookpoints: Sequence[str],
    *,
    context_length: int = 128,
    max_rows: int = 16384,
    seed: int = 0,
    progress: Callable[[int], None] | None = None,
) -> dict[str, ProbeData]:
    """Run ``adapter`` once over ``task``'s texts; a ProbeData per hook point.

    Texts are truncated to ``context_length`` tokens (BOS included); collection stops after
    ``MAX_TEXTS`` texts or once ``max_rows`` labelled rows (tokens of a token-level task, texts of a
    sequence-level one) are held. A text whose token strings do not spell it (a tokenizer that normalises)
    is skipped and counted in ``stats["unaligned"]``.
    """
    texts, classes, stats = _collect(adapter, task, context_length, max_rows)
    order = list(range(len(texts)))
    random.Random(seed).shuffle(order)
    is_train = [False] * len(texts)
    for i in order[: max(1, int(round(TRAIN_FRACTION * len(texts))))]:
        is_train[i] = True
    if all(is_train):
        is_train[order[-1]] = False
    rows = _capture(adapter, texts, hookpoints, task.level == "token", is_train, progress)
    ids = rows["token_ids"]
    names = sorted(classes, key=classes.__getitem__)
    try:  # token texts name rules by their strongest tokens; a sequence task's adapter may lack them
        token_text = {t: adapter.token_strings([t])[0] for t in sorted(set(ids))}
    except PluginError:
        token_text = {}
    labels, train = (rows["labels"], rows["train"]) if task.level == "token" else ([lab for _, lab in texts], is_train)
    stats = {"texts": len(texts), "rows": len(ids), "unaligned": stats["unaligned"], "train_texts": sum(is_train)}
    ids_t, sequence = torch.tensor(ids, dtype=torch.long), torch.tensor(rows["sequence"], dtype=torch.long)
    return {
        h: ProbeData(
            task.name,
            task.level,
            names,
            torch.cat(rows["acts"][h]),
            ids_t,
            sequence,
            torch.tensor(labels, dtype=torch.long),
            torch.tensor(train, dtype=torch.bool),
            token_text,
            task.taxonomy(),
            dict(stats),
        )
        for h in hookpoints
    }


def _collect(adapter: Any, task: ProbeTask, context_length: int, max_rows: int):
    """The task's usable texts as (token ids, per-token label indices or the text's label index), the
    class indices, and how many texts were seen and left unaligned."""
    keep = context_length - (1 if adapter.bos_token_id is not None else 0)
    texts: list[tuple[list[int], Any]] = []
    classes: dict[str, int] = {}
    rows = unaligned = seen = 0
    for ex in task.examples():
        if len(texts) >= MAX_TEXTS or rows >= max_rows:
            break
        seen += 1
        ids = adapter.tokenize(ex.text)[:keep]
        if not ids:
            continue
        if task.level == "sequence":
            if ex.label is None:
                raise DataError(f"probe task {task.name!r} yielded a text without a label", task.name)
            texts.append((ids, classes.setdefault(ex.label, len(classes))))
            rows += 1  # a sequence task's labelled row is the text
            continue
        strings = adapter.token_strings(ids)
        if not ex.text.startswith("".join(strings)):
            unaligned += 1
            continue
        labels = [
            None if lab is None else classes.setdefault(lab, len(classes)) for lab in token_labels(strings, ex.spans)
        ]
        n = sum(lab is not None for lab in labels)
        if n:
            texts.append((ids, labels))
            rows += n
    if not texts:
        raise DataError(
            f"probe task {task.name!r} gave no usable examples ({seen} texts seen, {unaligned} unaligned)", task.name
        )
    if len(texts) < 2:
        raise DataError(
            f"probe task {task.name!r} gave {len(texts)} usable text(s); train and test need one each", task.name
        )
    if len(classes) < 2:
        raise DataError(f"probe task {task.name!r} has only {len(classes)} class(es); a probe needs two", task.name)
    return texts, classes, {"unaligned": unaligned}


def _capture(
    adapter: Any,
    texts: list,
    hookpoints: Sequence[str],
    token_level: bool,
    is_train: list[bool],
    progress: Callable[[int], None] | None,
) -> dict[str, Any]:
    """The activations of the kept rows at each hook point, with each row's token, text, label and split."""
    bos = adapter.bos_token_id
    off = 1 if bos is not None else 0
    pad = adapter.pad_token_id if adapter.pad_token_id is not None else (adapter.eos_token_id or 0)
    out: dict[str, Any] = {
        "acts": {h: [] for h in hookpoints},
        "token_ids": [],
        "sequence": [],
        "labels": [],
        "train": [],
    }
    for start in range(0, len(texts), BATCH_TEXTS):
        batch = texts[start : start + BATCH_TEXTS]
        tokens = torch.full((len(batch), max(len(ids) for ids, _ in batch) + off), pad, dtype=torch.long)
        select = torch.zeros(tokens.shape, dtype=torch.bool)
        for b, (ids, labels) in enumerate(batch):
            if bos is not None:
                tokens[b, 0] = bos
            tokens[b, off : off + len(ids)] = torch.tensor(ids)
            for p, tok in enumerate(ids):
                if token_level and labels[p] is None:
                    continue
                select[b, off + p] = True
                out["token_ids"].append(tok)
                out["sequence"].append(start + b)
                if token_level:
                    out["labels"].append(labels[p])
                    out["train"].append(is_train[start + b])
        captured = adapter.capture(tokens, list(hookpoints))  # right padding cannot change earlier positions
        for h in hookpoints:
            out["acts"][h].append(captured[h][select].float())
        if progress is not None:
            progress(len(batch))
    return out
