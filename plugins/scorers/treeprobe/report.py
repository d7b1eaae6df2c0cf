"""TreeProbe's section of ``saebench report``: each cell's tree as nested, collapsible lists of named rules.

It reads only what TreeProbe stored in its cells' details (``tasks.TASK.tree``, the tree with its
rules per node, and ``tasks.TASK.metrics``), through the same hook a third party's section uses.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import saebench
from saebench.results.html import esc, finite, fmt

#: the scorer whose cells this section draws
SCORER = "treeprobe"


class TreeProbeSection(saebench.ReportSection):
    """TreeProbe trees: each task's induced tree with its rules, accuracies and rule latents."""

    name = "trees"
    title = "TreeProbe trees"

    def render(self, cells: Sequence[Mapping[str, Any]]) -> str:
        parts = []
        for c in (c for c in cells if c["plugin"] == SCORER):
            tasks = c["details"].get("tasks") if isinstance(c["details"], dict) else None
            for task, d in tasks.items() if isinstance(tasks, dict) else ():
                if isinstance(d, dict) and isinstance(d.get("tree"), dict):
                    parts.append(_task(c, task, d))
        return "".join(parts) or '<p class="empty">No TreeProbe cell in this run.</p>'


def _task(cell: Mapping[str, Any], task: str, d: dict) -> str:
    m = d.get("metrics") if isinstance(d.get("metrics"), dict) else {}
    facts = " · ".join(
        f"{k} {fmt(m[k])}"
        for k in ("head_accuracy", "tree_hard_accuracy", "rule_flip_rate", "random_flip_rate", "taxonomy_agreement")
        if finite(m.get(k))
    )
    return (
        f"<h3>{esc(cell['sae'])} <small>{esc(cell['scorer'])} · task {esc(task)}</small></h3>"
        f'<p class="note">{esc(d.get("tree_is", ""))} tree, rules named from '
        f'{esc(d.get("rule_names_from", "?"))}. {esc(facts)}</p><ul class="tree">{_node(d["tree"])}</ul>'
    )


def _node(node: Any) -> str:
    if not isinstance(node, dict):
        return f"<li>{esc(node)}</li>"
    children = node.get("children")
    if not isinstance(children, list) or not children:
        return f'<li class="leaf">{esc(node.get("name", node.get("id")))}</li>'
    explanations = node.get("explanations") if isinstance(node.get("explanations"), dict) else {}
    items = [f"<li>latent {esc(j)}: {esc(explanations.get(str(j)) or '')}</li>" for j in node.get("latents") or []]
    # a rule may hold dozens of latents: the strongest few stay in view, the rest fold away
    latents = "".join(items[:3]) + (
        f"<li><details><summary>{len(items) - 3} more rule latents</summary><ul>"
        f"{''.join(items[3:])}</ul></details></li>"
        if len(items) > 3
        else ""
    )
    facts = " · ".join(
        f"{k} {fmt(node[k])}"
        for k in ("accuracy", "rule_accuracy", "flip_rate", "random_flip_rate")
        if finite(node.get(k))
    )
    leaves = ", ".join(str(x) for x in node.get("leaves") or [])
    return (
        f'<li><details open><summary><span class="rule">{esc(node.get("rule") or "(no rule)")}</span> '
        f'<span class="classes">[{esc(leaves)}]</span></summary><div class="node-info">node {esc(node.get("id"))}'
        f"{' · ' + esc(facts) if facts else ''}<ul>{latents}</ul></div>"
        f"<ul>{''.join(_node(c) for c in children)}</ul></details></li>"
    )


@saebench.hookimpl
def register_report_sections(register):
    register(TreeProbeSection)
