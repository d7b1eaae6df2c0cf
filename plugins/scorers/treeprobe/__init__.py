"""TreeProbe: a neural-backed decision tree (NBDT, SegNBDT) over SAE latents, per token.

SegNBDT turns a segmentation network's per-pixel linear head into a decision tree whose inner
nodes ask human-readable questions ("Is there a window?"). Here each token is the pixel, the SAE's
latents are the features, and the questions are named from the latents' explanations:

1. A logistic head on the latents for a token-level task (``head_accuracy``), beside a dense probe
   on the raw activations (``dense_accuracy``) and the token-identity baseline (the best a classifier
   that sees only the token id does): latents that merely echo the token cannot beat it.
2. A hierarchy induced over the head's class rows (Ward clustering of the rows in the units the
   head is fitted in, standardised latents; an inner node's weight is the mean of its leaves' rows),
   from the rows as they are and from unit-normalised rows (``norm_*``).
3. Soft inference (product of node softmaxes along a class's path) and hard inference (greedy
   descent): ``tree_soft_accuracy``, ``tree_hard_accuracy``, ``tree_gap`` = head − hard tree (SegNBDT
   loses 2–4 mIoU points to its network). With ``finetune_epochs`` > 0 the head is also fine-tuned
   with the tree-supervision loss (−log path probability) and re-scored (``ft_*``).
4. Per inner node of the tree in use (the fine-tuned one when ``finetune_epochs`` > 0), the fewest
   latents that carry 90% of the node's decision accuracy (on the training tokens; 90% of what the
   latents add over the node's bias alone), named as a rule "Is there ⟨explanation⟩?" from the
   run's explainer (an LLM's explanations when the matrix configures one, else the top-tokens
   explainer; failing both, the task tokens where the latent is strongest).
5. Faithfulness on test tokens: zeroing a node's rule latents flips its decisions
   (``rule_flip_rate``) far more often than zeroing as many random latents of matched activation
   frequency (``random_flip_rate``).

Also: ``taxonomy_agreement`` of the induced tree with the task's reference hierarchy (triplet
agreement; ``random_taxonomy_agreement`` is the same for random trees over the same classes, the
control) and ``stability``: the mean triplet agreement between trees induced from heads fitted on
bootstrap resamples of the training tokens with different seeds. The tree and its rules are in the
details as JSON (``tasks.TASK.tree``), beside each task's metrics (``tasks.TASK.metrics``); the
leaderboard gets their means over tasks.

Uncertainty: the units are the test texts of each task (their test tokens grouped by text, since
tokens of one text are correlated), resampled within their task, with ids ``TASK:TEXT`` shared by
every SAE (paired comparisons). The accuracies, ``tree_gap`` and the flip rates (a mean over nodes of
a rate over the node's correctly routed test tokens) get intervals; F1, the taxonomy agreements,
the stability and the rule sizes (not means over test tokens) get none. The interval covers
test-set sampling only, with the heads, trees and rules fixed (not refitting them: the ``seeds`` of a
run cover the split).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

import saebench
from saebench.errors import ConfigError
from saebench.plugins.scorers.treeprobe import nbdt
from saebench.plugins.scorers.treeprobe.rules import (
    flips,
    matched_random,
    random_tree,
    rule_latents,
    triplet_agreement,
)
from saebench.probes.linear import (
    LinearProbe,
    Part,
    classification_metrics,
    correct_part,
    dense_predictions,
    fit_logistic,
    held_out_texts,
    task_units,
    token_identity_predictions,
)
from saebench.probes.tasks import ProbeData, ProbeDataOptions, encoder, make_task

RANDOM_TREES = 20
RANDOM_DRAWS = 5


@dataclass
class Split:
    """A task's SAE latents (``x``: every row) and labels, split into train and test tokens; ``parts``:
    the per-test-token statistics of the metrics that average over test tokens (see ``task_units``)."""

    x: Tensor
    x_tr: Tensor
    y_tr: Tensor
    x_te: Tensor
    y_te: Tensor
    n_classes: int
    parts: dict[str, list[Part]] = field(default_factory=dict)

    @classmethod
    def encode(cls, sae: saebench.SAE, data: ProbeData) -> Split:
        x = data.features(encoder(sae))
        tr, te = data.train, ~data.train
        return cls(x, x[tr], data.labels[tr], x[te], data.labels[te], data.n_classes)

    def accuracy(self, pred: Tensor, name: str | None = None) -> float:
        """Test accuracy of predictions for the test tokens (their correctness kept as ``parts[name]``)."""
        if name is not None:
            self.parts[name] = correct_part(pred, self.y_te)
        return classification_metrics(pred, self.y_te, self.n_classes)["accuracy"]

    def tree_accuracies(self, tree: nbdt.Tree, prefix: str = "", x_te: Tensor | None = None) -> dict[str, float]:
        """``{prefix}tree_soft_accuracy`` and ``{prefix}tree_hard_accuracy`` of ``tree`` on the test
        tokens (``x_te`` in the tree's units when not the latents)."""
        x_te = self.x_te if x_te is None else x_te
        soft, hard = f"{prefix}tree_soft_accuracy", f"{prefix}tree_hard_accuracy"
        return {
            soft: self.accuracy(nbdt.soft_log_probs(tree, x_te).argmax(-1), soft),
            hard: self.accuracy(nbdt.hard_predict(tree, x_te), hard),
        }


class TreeProbeScorer(saebench.Scorer):
    """TreeProbe: an induced decision tree over a linear head on SAE latents, with rules named from explanations."""

    name = "treeprobe"
    family = "probe"
    handles_transcoders = True  # the head reads the latents of the hook point the SAE reads
    #: the runner passes ``inputs.explain`` and keys this scorer's cells by the explainer it uses
    uses_explanations = True
    headline = (
        saebench.Metric("head_accuracy"),
        saebench.Metric("tree_hard_accuracy"),
        saebench.Metric("rule_flip_rate"),
    )

    class Options(ProbeDataOptions):
        tasks: list[str | dict] = Field(
            ["python_syntax"], min_length=1, description="token-level probe tasks: names or {name, options}"
        )
        l2: float = Field(1e-3, ge=0, description="L2 penalty of the heads (mean-CE objective)")
        rule_target: float = Field(
            0.9, gt=0, le=1, description="fraction of a node's accuracy its rule latents must keep"
        )
        max_rule_latents: int = Field(32, ge=1, description="most latents a rule may use")
        finetune_epochs: int = Field(100, ge=0, description="tree-supervised fine-tuning steps (0: off)")
        seeds: int = Field(3, ge=1, description="bootstrap heads for the stability measure")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self.task_objects = [make_task(t, f"scorer {self.name}: tasks[{i}]") for i, t in enumerate(self.options.tasks)]
        for i, task in enumerate(self.task_objects):
            if task.level != "token":
                raise ConfigError(
                    f"task {task.name!r} labels whole texts; TreeProbe needs a token-level task",
                    f"scorer {self.name}: tasks[{i}]",
                )

    def score(self, sae: saebench.SAE, inputs: saebench.EvalInputs) -> saebench.ScoreResult:
        if inputs.probe_data is None:
            raise ConfigError("this scorer needs probe-task data, which the runner provides", f"scorer {self.name}")
        metrics: dict[str, float | None] = {}
        details: dict[str, Any] = {}
        per_task = []
        per_task_parts = []
        for task in self.task_objects:
            data = inputs.probe_data(task, context_length=self.options.context_length, max_rows=self.options.max_rows)
            if data.n_classes < 3:
                raise ConfigError(
                    f"task {task.name!r} has {data.n_classes} classes; a tree over fewer than 3 is trivial",
                    f"scorer {self.name}",
                )
            start = time.perf_counter()
            result, detail, parts = self.score_task(sae, data, inputs)
            detail["seconds"] = time.perf_counter() - start
            detail["metrics"] = result
            per_task.append(result)
            per_task_parts.append((task.name, held_out_texts(data), parts))
            details[task.name] = detail
        for key in per_task[0]:
            values = [r.get(key) for r in per_task]
            if all(v is not None and not math.isnan(v) for v in values):
                metrics[key] = sum(values) / len(values)
        units = task_units(per_task_parts, metrics)
        return saebench.ScoreResult(metrics=metrics, details={"tasks": details}, units=units)

    @torch.no_grad()
    def score_task(self, sae: saebench.SAE, data: ProbeData, inputs: saebench.EvalInputs):
        """One task's metrics, details (the heads, the induced and fine-tuned trees, the rules) and the
        per-test-token parts of the metrics that average over test tokens."""
        l2 = self.options.l2
        out: dict[str, float | None] = {}
        split = Split.encode(sae, data)
        dense = data.cached(("dense_predictions", l2), lambda: dense_predictions(data, l2))
        out["dense_accuracy"] = split.accuracy(dense, "dense_accuracy")
        identity = data.cached("token_identity_predictions", lambda: token_identity_predictions(data))
        out["token_identity_accuracy"] = split.accuracy(identity, "token_identity_accuracy")
        head = fit_logistic(split.x_tr, split.y_tr, split.n_classes, l2=l2)
        out["head_accuracy"] = split.accuracy(head.predict(split.x_te), "head_accuracy")
        out["head_f1"] = classification_metrics(head.predict(split.x_te), split.y_te, split.n_classes)["f1"]
        tree = _induce(head.weight, head.bias, _scale(split.x_tr))
        out.update(split.tree_accuracies(tree))
        out["tree_gap"] = out["head_accuracy"] - out["tree_hard_accuracy"]
        (head_hit, ones), (tree_hit, _) = split.parts["head_accuracy"][0], split.parts["tree_hard_accuracy"][0]
        split.parts["tree_gap"] = [(head_hit - tree_hit, ones)]
        out.update(_normalised_tree_accuracies(head, split))
        # rules explain the tree that is used: the fine-tuned one when there is one (SegNBDT's), whose
        # decisions are as accurate as the head's, not the induced tree before training
        explained = tree
        if self.options.finetune_epochs:
            explained = self.finetune(tree, head, split, out)
        nodes = self.node_rules(explained, split)
        rule_info = _name_rules(nodes, split.x, data, inputs)
        out.update(_rule_metrics(nodes))
        if data.taxonomy:
            out.update(_taxonomy_metrics(tree, head, data))
        out["stability"] = self.stability(split.x_tr, split.y_tr, split.n_classes)
        C = split.n_classes
        detail = {
            "classes": data.classes,
            "class_counts": {
                "train": torch.bincount(split.y_tr, minlength=C).tolist(),
                "test": torch.bincount(split.y_te, minlength=C).tolist(),
            },
            "data": data.stats,
            "tree": explained.to_dict(data.classes, nodes),
            "tree_is": "fine-tuned" if self.options.finetune_epochs else "induced",
            "rule_names_from": rule_info,
        }
        return out, detail, split.parts

    def finetune(self, tree: nbdt.Tree, head: LinearProbe, split: Split, out: dict[str, float | None]) -> nbdt.Tree:
        """The head fine-tuned with the tree-supervision loss on ``tree``'s hierarchy, as a tree; its
        accuracies (``ft_*``) go into ``out``."""
        settings = nbdt.Finetune(epochs=self.options.finetune_epochs, seed=0)
        with torch.enable_grad():
            w, b = nbdt.finetune_head(head.weight, head.bias, split.x_tr, split.y_tr, settings, children=tree.children)
        ft = nbdt.build_tree(tree.children, w, b)  # the hierarchy the fine-tuning was supervised with
        out["ft_head_accuracy"] = split.accuracy((split.x_te @ w.T + b).argmax(-1), "ft_head_accuracy")
        out.update(split.tree_accuracies(ft, "ft_"))
        return ft

    def node_rules(self, tree: nbdt.Tree, split: Split) -> dict[int, dict]:
        """Per inner node: its rule latents (see ``rule_latents``), their flip rate on the test tokens
        and the flip rate of frequency-matched random latents (the control); their per-token flips
        and correct routings into ``split.parts``."""
        frequency = (split.x != 0).float().mean(0)
        nodes: dict[int, dict] = {}
        rule_parts, random_parts = split.parts.setdefault("rule_flip_rate", []), []
        for i in range(len(tree.children)):
            node = tree.n_classes + i
            rule = rule_latents(
                tree,
                split.x_tr,
                split.y_tr,
                node,
                target=self.options.rule_target,
                max_latents=self.options.max_rule_latents,
            )
            latents = rule["latents"]
            correct, flipped = flips(tree, split.x_te, split.y_te, node, latents)
            flip = float(flipped[correct].double().mean()) if latents and bool(correct.any()) else None
            if flip is not None:
                rule_parts.append((flipped.double(), correct.double()))
            controls = []
            # the control needs as many latents again, disjoint from the rule: a narrow SAE may not have them
            matchable = flip is not None and frequency.numel() >= 2 * len(latents)
            for draw in range(RANDOM_DRAWS if matchable else 0):
                other = matched_random(latents, frequency, exclude=latents, seed=draw)
                controls.append(flips(tree, split.x_te, split.y_te, node, other)[1].double())
            if controls:
                random_parts.append((torch.stack(controls).mean(0), correct.double()))
                controls = [float(c[correct].mean()) for c in controls]
            nodes[node] = {
                **rule,
                "flip_rate": flip,
                "random_flip_rate": sum(controls) / len(controls) if controls else None,
            }
        split.parts["random_flip_rate"] = random_parts
        return nodes

    def stability(self, x_tr: Tensor, y_tr: Tensor, C: int) -> float | None:
        """Mean triplet agreement between the trees of heads fitted on bootstrap resamples (``seeds``)."""
        if self.options.seeds < 2:
            return None
        trees = []
        for seed in range(self.options.seeds):
            g = torch.Generator().manual_seed(seed)
            idx = torch.randint(0, x_tr.shape[0], (x_tr.shape[0],), generator=g)
            head = fit_logistic(x_tr[idx], y_tr[idx], C, l2=self.options.l2)
            trees.append(_induce(head.weight, head.bias, _scale(x_tr[idx])))
        leaves = list(range(C))
        pairs = [triplet_agreement(a, b, leaves) for i, a in enumerate(trees) for b in trees[i + 1 :]]
        pairs = [p for p in pairs if p is not None]
        return sum(pairs) / len(pairs) if pairs else None


def _normalised_tree_accuracies(head: LinearProbe, split: Split) -> dict[str, float]:
    """``norm_tree_*``: the tree of unit-normalised rows (NBDT's variant) in the head's own units,
    standardised latents."""
    mean = split.x_tr.mean(0)
    scale = _scale(split.x_tr)
    norm = nbdt.induce_tree(head.weight * scale, head.bias + head.weight @ mean, normalise=True)
    return split.tree_accuracies(norm, "norm_", (split.x_te - mean) / scale)


def _rule_metrics(nodes: dict[int, dict]) -> dict[str, float | None]:
    """The rules' size and faithfulness, averaged over the inner nodes."""
    sizes = [len(n["latents"]) for n in nodes.values()]
    rates = [n["flip_rate"] for n in nodes.values() if n["flip_rate"] is not None]
    controls = [n["random_flip_rate"] for n in nodes.values() if n["random_flip_rate"] is not None]
    return {
        "rule_latents_per_node": sum(sizes) / len(sizes) if sizes else None,
        "rule_flip_rate": sum(rates) / len(rates) if rates else None,
        "random_flip_rate": sum(controls) / len(controls) if controls else None,
    }


def _taxonomy_metrics(tree: nbdt.Tree, head: LinearProbe, data: ProbeData) -> dict[str, float | None]:
    """Triplet agreement of the induced tree with the task's taxonomy, and of random trees (the control)."""
    reference, leaves, C = data.taxonomy, data.classes, data.n_classes
    randoms = [
        triplet_agreement(_named(random_tree(C, head.weight, head.bias, seed=s), leaves), reference, leaves)
        for s in range(RANDOM_TREES)
    ]
    randoms = [r for r in randoms if r is not None]
    return {
        "taxonomy_agreement": triplet_agreement(_named(tree, leaves), reference, leaves),
        "random_taxonomy_agreement": sum(randoms) / len(randoms) if randoms else None,
    }


def _name_rules(nodes: dict[int, dict], x: Tensor, data: ProbeData, inputs: saebench.EvalInputs) -> str:
    """Add each node's latents' ``explanations`` and its ``rule`` ("Is there ...?", from its first
    latent) to ``nodes``; returns where the names came from."""
    wanted = sorted({j for n in nodes.values() for j in n["latents"]})
    texts: dict[int, str] = {}
    source = "task tokens"
    if wanted and inputs.explain is not None:
        texts = {j: t for j, t in inputs.explain(wanted).items() if t}
        source = "explainer"
    fallback = _strongest_tokens(x, data, [j for j in wanted if j not in texts])
    for info in nodes.values():
        info["explanations"] = {str(j): texts.get(j) or fallback.get(j) for j in info["latents"]}
        top = info["latents"][0] if info["latents"] else None
        info["rule"] = f"Is there {info['explanations'][str(top)]}?" if top is not None else None
    return source


def _scale(x: torch.Tensor) -> torch.Tensor:
    std = x.std(0, unbiased=False)
    return torch.where(std > 1e-8, std, torch.ones_like(std))


def _induce(weight: torch.Tensor, bias: torch.Tensor, scale: torch.Tensor) -> nbdt.Tree:
    """The induced tree of a head: Ward clustering of its rows in the units it was fitted in
    (standardised latents; in raw units a rarely firing latent's large weight would dominate the
    distances), node weights kept in raw units (averaging commutes with the rescaling, so the
    decisions are the same either way, and ablating a latent is zeroing it)."""
    children = nbdt.induce_tree(weight * scale, bias).children
    return nbdt.build_tree(children, weight, bias)


def _named(tree: nbdt.Tree, names: list[str]) -> dict[str, str]:
    """A tree as a {child: parent} map over class names (inner nodes named by id)."""
    out = {}
    for i, (a, b) in enumerate(tree.children):
        parent = f"node{tree.n_classes + i}"
        for child in (a, b):
            out[names[child] if child < tree.n_classes else f"node{child}"] = parent
    return out


def _strongest_tokens(x: torch.Tensor, data: ProbeData, latents: list[int], n: int = 5) -> dict[int, str]:
    """'tokens: "def", " class"': the task tokens with the highest mean activation of each latent."""
    out = {}
    ids = data.token_ids
    for j in latents:
        col = x[:, j]
        fired = col > 0
        if not bool(fired.any()):
            continue
        sums = torch.zeros(int(ids.max()) + 1).index_add_(0, ids[fired], col[fired])
        counts = torch.bincount(ids[fired], minlength=sums.numel()).clamp_min(1)
        means = sums / counts
        top = torch.argsort(means, descending=True)[:n]
        words = [repr(data.token_text.get(int(t), str(int(t)))) for t in top if means[t] > 0]
        out[j] = "tokens " + ", ".join(words)
    return out


@saebench.hookimpl
def register_scorers(register):
    register(TreeProbeScorer)
