"""Sparse probing: how much of a task's labels a handful of SAE latents carry.

Per probe task (default: ``text_source``, a label per passage, and ``python_syntax``, a label per
token; see ``saebench plugins``), on the task's cached activations at the SAE's hook point:

- ``dense``: a logistic probe on the raw activations (mean-pooled per text for sequence-level
  tasks): the ceiling a probe on latents is compared with.
- ``k{K}`` for K in ``ks``: the K latents whose mean activation on one class most exceeds their mean
  on the other classes (SAEBench's one-vs-rest class-mean difference, maximised over classes; SAE
  latents are non-negative, so a detector is a positive difference), chosen on the training split;
  then a logistic probe on those latents alone. Test accuracy and macro F1.
- ``probe_loss`` (Gao et al. 2024): per class (one-vs-rest; one problem for a binary task), the test
  cross-entropy of the best 1-D logistic probe on a single latent (searched among the 256 latents
  with the largest standardised class-mean difference), averaged over classes; lower is better.
  ``probe_loss_prior`` is the loss of predicting the class prior, its no-information level.
- token-level tasks also report ``token_identity_accuracy``: the best a classifier that sees only the
  token id can do; latents that merely echo the token cannot beat it.

The leaderboard gets each metric's mean over tasks (``k1_accuracy``, ``dense_accuracy``...); each
task's own values are in the details (``tasks.TASK.metrics``). Train and test hold disjoint texts.

Uncertainty: the units are the test texts of each task (a sequence task's test examples; a token
task's test tokens grouped by their text, since tokens of one text are correlated), resampled within
their task, with ids ``TASK:TEXT`` shared by every SAE (paired comparisons). The accuracies, the
probe loss and its prior get intervals (F1, not a mean over examples, gets none). The interval covers
test-set sampling only, with the probes, their latents and the split fixed (not probe retraining:
the ``seeds`` of a run cover the split).
"""

from __future__ import annotations

import math
import time
from typing import Any

import torch
from pydantic import Field, field_validator
from torch import Tensor

import saebench
from saebench.errors import ConfigError
from saebench.probes.linear import (
    Part,
    class_mean_difference,
    classification_metrics,
    correct_part,
    dense_predictions,
    fit_logistic,
    held_out_texts,
    one_dim_probe_losses,
    task_units,
    token_identity_predictions,
)
from saebench.probes.tasks import ProbeData, ProbeDataOptions, encoder, make_task

DEFAULT_TASKS = ["text_source", "python_syntax"]
#: latents tried per class for the 1-D probe loss
PROBE_LOSS_CANDIDATES = 256


class SparseProbingScorer(saebench.Scorer):
    """Sparse probing: logistic probes on the k most class-selective latents vs a dense probe, and 1-D probe loss."""

    name = "sparse_probing"
    family = "probe"
    handles_transcoders = True  # probes read the latents of the hook point the SAE reads
    headline = (saebench.Metric(r"k\d+_accuracy"),)

    class Options(ProbeDataOptions):
        tasks: list[str | dict] = Field(
            DEFAULT_TASKS, min_length=1, description="probe tasks: names or {name, options}"
        )
        ks: list[int] = Field([1, 2, 5, 20], description="numbers of latents per sparse probe (positive integers)")
        l2: float = Field(1e-3, ge=0, description="L2 penalty of every probe (mean-CE objective)")

        @field_validator("ks")
        @classmethod
        def _positive(cls, ks: list[int]) -> list[int]:
            if not all(k >= 1 for k in ks):
                raise ValueError("must be a list of positive integers")
            return ks

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.task_objects = [make_task(t, f"scorer {self.name}: tasks[{i}]") for i, t in enumerate(self.options.tasks)]

    def score(self, sae: saebench.SAE, inputs: saebench.EvalInputs) -> saebench.ScoreResult:
        if inputs.probe_data is None:
            raise ConfigError("this scorer needs probe-task data, which the runner provides", f"scorer {self.name}")
        metrics: dict[str, float | None] = {}
        details: dict[str, dict] = {}
        per_task: list[dict[str, float | None]] = []
        per_task_parts = []
        for task in self.task_objects:
            data = inputs.probe_data(task, context_length=self.options.context_length, max_rows=self.options.max_rows)
            start = time.perf_counter()
            result, parts = self.score_task(sae, data)
            result["seconds"] = time.perf_counter() - start
            per_task.append(result)
            per_task_parts.append((task.name, held_out_texts(data), parts))
            details[task.name] = {"metrics": result, "classes": data.classes, "data": data.stats}
        for key in per_task[0]:
            if key == "seconds":
                continue
            values = [r.get(key) for r in per_task]
            if all(v is not None and not math.isnan(v) for v in values):
                metrics[key] = sum(values) / len(values)
        units = task_units(per_task_parts, metrics)
        return saebench.ScoreResult(metrics=metrics, details={"tasks": details}, units=units)

    @torch.no_grad()
    def score_task(self, sae: saebench.SAE, data: ProbeData) -> tuple[dict[str, float | None], dict[str, list[Part]]]:
        """One task's metrics, and the per-test-row parts of those that average over test rows (see
        ``task_units``)."""
        train, test = data.train, ~data.train
        y_tr, y_te = data.labels[train], data.labels[test]
        C = data.n_classes
        l2 = self.options.l2
        out: dict[str, float | None] = {}
        parts: dict[str, list[Part]] = {}
        pred = data.cached(("dense_predictions", l2), lambda: dense_predictions(data, l2))
        self._classified("dense", pred, y_te, C, out, parts)
        latents = data.features(encoder(sae))
        diff = class_mean_difference(latents[train], y_tr, C).max(0).values
        order = torch.argsort(diff, descending=True, stable=True)
        for k in sorted(set(self.options.ks)):
            chosen = order[:k]
            probe = fit_logistic(latents[train][:, chosen], y_tr, C, l2=l2)
            self._classified(f"k{k}", probe.predict(latents[test][:, chosen]), y_te, C, out, parts)
        losses = self.probe_loss(latents[train], y_tr, latents[test], y_te, C)
        for name, rows in zip(("probe_loss", "probe_loss_prior"), losses):
            out[name] = sum(float(r.mean()) for r in rows) / len(rows) if rows else None
            parts[name] = [(r, torch.ones_like(r)) for r in rows]
        if data.level == "token":
            pred = data.cached("token_identity_predictions", lambda: token_identity_predictions(data))
            out["token_identity_accuracy"] = classification_metrics(pred, y_te, C)["accuracy"]
            parts["token_identity_accuracy"] = correct_part(pred, y_te)
        return out, parts

    @staticmethod
    def _classified(prefix: str, pred, y, C, out: dict, parts: dict) -> None:
        """``{prefix}_accuracy`` and ``{prefix}_f1`` of test predictions into ``out``, the accuracy's parts into ``parts``."""
        m = classification_metrics(pred, y, C)
        out[f"{prefix}_accuracy"], out[f"{prefix}_f1"] = m["accuracy"], m["f1"]
        parts[f"{prefix}_accuracy"] = correct_part(pred, y)

    def probe_loss(self, x_tr, y_tr, x_te, y_te, C) -> tuple[list[Tensor], list[Tensor]]:
        """Per class (one-vs-rest; one for a binary task), each test row's cross-entropy under the best
        1-D probe, and under the class prior: the probe loss and its prior are their means over rows
        and classes (empty lists: undefined)."""
        # A 1-D probe has two parameters: the best one per class is searched among the latents with
        # the largest standardised class-mean difference, which keeps this linear in d_sae.
        std = x_tr.std(0)
        live = std > 0
        if not bool(live.any()):
            return [], []
        diff = class_mean_difference(x_tr, y_tr, C).abs() / torch.where(live, std, torch.ones_like(std)).double()
        classes = [1] if C == 2 else range(C)
        best, prior = [], []
        for c in classes:
            b_tr, b_te = (y_tr == c).long(), (y_te == c).long()
            if int(b_tr.sum()) in (0, b_tr.numel()) or b_te.numel() == 0:
                continue
            cand = torch.topk(diff[c] * live, min(PROBE_LOSS_CANDIDATES, int(live.sum()))).indices
            rows = one_dim_probe_losses(x_tr[:, cand], b_tr, x_te[:, cand], b_te, per_row=True)
            best.append(rows[:, int(rows.mean(0).argmin())])
            p = float(b_tr.double().mean())
            q = b_te.double()
            prior.append(-(q * math.log(p) + (1 - q) * math.log(1 - p)))
        return best, prior


@saebench.hookimpl
def register_scorers(register):
    register(SparseProbingScorer)
