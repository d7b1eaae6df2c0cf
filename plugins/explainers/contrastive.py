"""Contrastive explainer: activating and non-activating examples in one prompt.

Prompt (chat): a system message, three short worked examples, then two numbered sections:
``Fires on`` (at most ``n_examples`` of ``record.train``, marked as the ``llm`` explainer marks
them) and ``Does not fire on`` (at most ``n_negatives`` of ``record.train_negatives``, hard
negatives first: windows that resemble the activating ones but where the latent is 0, which is
where a too-broad explanation shows), and the answer format restated last. The answer is parsed
after ``[EXPLANATION]:`` exactly like the ``llm`` explainer's (a copy of a worked example's
answer is a failure too); the test sets are never read.
"""

from __future__ import annotations

from pydantic import Field

import saebench
from saebench.interp.prompts import EXPLANATION_MARKER, chat, numbered, render, spread
from saebench.interp.types import LatentRecord
from saebench.plugins.explainers.llm import REPLY, VALUES_NOTE, LLMExplainer, example_lines, lines_with_values

SYSTEM = (
    "You explain a feature of a language model. Under 'Fires on' are excerpts where it fires, the tokens where "
    "it fires marked <<like this>>{values}; under 'Does not fire on' are excerpts where it never fires. Say what "
    "the marked tokens have in common that the other excerpts lack, including the context just before them "
    "where it matters: one short phrase, which may quote a few typical marked tokens. "
    + REPLY
    + " followed by the phrase."
)

#: worked examples: (fires-on excerpts, their activations lines, does-not-fire-on excerpts, answer);
#: each answer quotes its own excerpts, as the llm explainer's do
SHOTS = (
    (
        ("the dog <<ran>> home fast", "she <<jumped>> over the fence"),
        ("ran=10", "jumped=8"),
        ("the run was long and flat", "a jump of two metres"),
        'the words "ran", "jumped": past-tense verbs of movement, not the nouns "run", "jump"',
    ),
    (
        ("we flew to <<Paris>> in May", "the <<London>> office"),
        ("Paris=10", "London=6"),
        ("Paris Hilton waved", "a novel by Jack London"),
        'the words "Paris", "London" as city names, not as parts of a person\'s name',
    ),
    (
        ("y = f<<(>>x)", "print<<(>>'hi')"),
        ("(=10", "(=9"),
        ("x = (a + b) * 2", "a note (in brackets)"),
        'the token "(" right after a function name, as in "f(", "print(", not a bracket that groups',
    ),
)


def question(fires: list[str], quiet: list[str]) -> str:
    text = f"Fires on:\n{numbered(fires)}"
    if quiet:
        text += f"\nDoes not fire on:\n{numbered(quiet)}"
    return f"{text}\n\n{REPLY}"


class ContrastiveExplainer(LLMExplainer):
    """Explanation from activating and non-activating examples shown side by side."""

    name = "contrastive"

    class Options(LLMExplainer.Options):
        n_negatives: int = Field(10, ge=0, description="non-activating training examples shown, hard ones first")

    def messages(self, record: LatentRecord) -> tuple[dict[str, str], ...]:
        show = self.options.show_activations
        scale = record.max_activation if show else None
        shown = spread(record.train, self.options.n_examples)
        # hard negatives first: they are the informative contrast; the sort keeps each kind's order
        negatives = sorted(record.train_negatives, key=lambda e: e.kind != "hard")[: self.options.n_negatives]
        user = question(example_lines(shown, scale), [render(e.tokens) for e in negatives])
        system = SYSTEM.format(values=VALUES_NOTE if show else "")
        shots = [
            (question(lines_with_values(fires, values, show), list(quiet)), f"{EXPLANATION_MARKER} {answer}")
            for fires, values, quiet, answer in SHOTS
        ]
        return chat(system, user, shots)


@saebench.hookimpl
def register_explainers(register):
    register(ContrastiveExplainer)
