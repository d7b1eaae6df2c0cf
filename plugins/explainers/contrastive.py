"""Contrastive explainer: activating and non-activating examples in one prompt.

Prompt (chat): a system message, one worked example, then two numbered sections: ``Fires on``
(at most ``n_examples`` of ``record.train``, marked as the ``llm`` explainer marks them) and
``Does not fire on`` (at most ``n_negatives`` of ``record.train_negatives``, hard negatives first:
windows that resemble the activating ones but where the latent is 0, which is where a too-broad
explanation shows). The answer is parsed after ``[EXPLANATION]:`` exactly like the ``llm``
explainer's; the test sets are never read.
"""

from __future__ import annotations

import saebench
from saebench.interfaces import LatentRecord
from saebench.metrics import Option
from saebench.prompts import EXPLANATION_MARKER, chat, numbered, render, spread

from saebench.plugins.explainers.llm import OPTIONS as LLM_OPTIONS
from saebench.plugins.explainers.llm import VALUES_NOTE, LLMExplainer, example_lines

SYSTEM = (
    "You explain a feature of a language model. Under 'Fires on' are excerpts where it fires, the tokens where "
    "it fires marked <<like this>>{values}; under 'Does not fire on' are excerpts where it never fires. Say what "
    "the marked tokens have in common that the other excerpts lack, including the context just before them "
    "where it matters. Give one short phrase. Reply with one line: " + EXPLANATION_MARKER + " <phrase>"
)

SHOT = (
    "Fires on:\n1. the dog <<ran>> home fast\n2. she <<jumped>> over the fence\n"
    "Does not fire on:\n1. the run was long and flat\n2. a jump of two metres",
    f"{EXPLANATION_MARKER} past-tense verbs of movement (not the nouns 'run', 'jump')",
)
SHOT_VALUES = SHOT[0].replace("<<ran>> home fast", "<<ran>> home fast\n   activations: ran=10").replace(
    "<<jumped>> over the fence", "<<jumped>> over the fence\n   activations: jumped=8")


class ContrastiveExplainer(LLMExplainer):
    """Explanation from activating and non-activating examples shown side by side."""

    name = "contrastive"
    OPTIONS = LLM_OPTIONS + (
        Option("n_negatives", int, 10, minimum=0, help="non-activating training examples shown, hard ones first"),
    )

    def messages(self, record: LatentRecord) -> tuple[dict[str, str], ...]:
        scale = record.max_activation if self.show_activations else None
        shown = spread(record.train, self.n_examples)
        # hard negatives first: they are the informative contrast; the sort keeps each kind's order
        negatives = sorted(record.train_negatives, key=lambda e: e.kind != "hard")[: self.n_negatives]
        user = f"Fires on:\n{numbered(example_lines(shown, scale))}"
        if negatives:
            user += f"\nDoes not fire on:\n{numbered([render(e.tokens) for e in negatives])}"
        system = SYSTEM.format(values=VALUES_NOTE if self.show_activations else "")
        shot = (SHOT_VALUES if self.show_activations else SHOT[0], SHOT[1])
        return chat(system, user, [shot])


@saebench.hookimpl
def register_explainers(register):
    register(ContrastiveExplainer)
