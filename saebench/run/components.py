"""The plugins a run uses, built from the matrix: scorers, explainers and LLM clients, each with its options.

Building them is where a bad option or a missing API key stops the run, before any work. Cells
name their component by index (``Cell.component``) and an LLM client by its ``llms`` key.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from saebench import plugin_manager
from saebench.errors import ConfigError, SaebenchError
from saebench.interfaces import Explainer, InterpScorer, Scorer
from saebench.interp.llm import LLMClient
from saebench.interp.records import RecordConfig
from saebench.run.matrix import ExplainerSpec, Matrix, effective_explainers, resolve_llm

#: the explainer that names TreeProbe-style rules when the matrix has none (needs no LLM)
FALLBACK_RULE_EXPLAINER = "top-tokens"


@dataclass
class Components:
    llms: dict[str, LLMClient]
    scorers: list[Scorer]  # one per matrix.scorers entry
    judges: list[str | None]  # the ``llms`` key each scorer calls (interp scorers that need one)
    explainers: list[tuple[ExplainerSpec, Explainer, str | None]]  # the effective explainers and their ``llms`` keys
    record_config: RecordConfig
    #: the explainer that names rules of scorers with ``uses_explanations``: the matrix's first, else top-tokens
    rule_explainer: tuple[str, Explainer]

    def rule_config(self) -> dict[str, Any]:
        """What a rule-naming cell's hash covers of its explanations."""
        first = self.explainers[0] if self.explainers else None
        return {
            "explainer": first[0].model_dump() if first else {"name": FALLBACK_RULE_EXPLAINER},
            "llm": first[1].llm.identity if first and first[1].llm else None,
            "interp": self.record_config.model_dump(),
        }


def construct(kind: str, name: str, options: dict[str, Any], where: str) -> Any:
    """A plugin of ``kind`` built with the matrix's options; its errors located at ``where``."""
    cls = plugin_manager.get(kind, name)
    try:
        return cls(**options)
    except SaebenchError as exc:
        raise ConfigError(exc.problem, where) from None
    except TypeError as exc:
        raise ConfigError(str(exc), where) from None


def build_components(m: Matrix, source: str) -> Components:
    llms = {
        key: construct("llm_client", spec.client, spec.options, f"{source}: llms.{key}") for key, spec in m.llms.items()
    }
    scorers, judges = [], []
    for i, spec in enumerate(m.scorers):
        scorer = construct("scorer", spec.name, spec.options, f"{source}: scorers[{i}].options")
        judge = None
        if isinstance(scorer, InterpScorer) and scorer.needs_llm:
            judge = resolve_llm(m, "scorer", spec.llm, f"{source}: scorers[{i}]")
            try:
                scorer.check_llm(llms[judge])
            except SaebenchError as exc:
                raise ConfigError(exc.problem, f"{source}: scorers[{i}].llm") from None
        scorers.append(scorer)
        judges.append(judge)
    explainers = []
    for i, spec in enumerate(effective_explainers(m)):
        explainer = construct("explainer", spec.name, spec.options, f"{source}: explainers[{i}].options")
        llm = resolve_llm(m, "explainer", spec.llm, f"{source}: explainers[{i}]") if explainer.needs_llm else None
        explainer.llm = llms.get(llm) if llm else None
        explainers.append((spec, explainer, llm))
    rule = (
        (explainers[0][0].name, explainers[0][1])
        if explainers
        else (FALLBACK_RULE_EXPLAINER, construct("explainer", FALLBACK_RULE_EXPLAINER, {}, f"{source}: explainers"))
    )
    return Components(llms, scorers, judges, explainers, RecordConfig(**m.interp), rule)
