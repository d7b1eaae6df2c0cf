"""LLM explainer: a few-shot prompt of activating examples with the firing tokens marked.

Prompt (chat): a system message stating the task and the answer format, three short worked
examples (user excerpts / assistant answer), then the latent's excerpts, numbered, one per line,
its strongest tokens marked ``<<like this>>`` (``saebench.interp.prompts.highlight``) and, with
``show_activations``, a second line per excerpt giving each marked token's activation 0-10 of the
latent's maximum. Every question ends with the answer format restated (``REPLY``), which a small
model needs: SmolLM2-135M then writes the marker for nearly every latent, and without the worked
examples it never does. The answer is the first line after ``[EXPLANATION]:``; an answer without
it (or with nothing usable after it) gives ``text=None`` and a failure, never an explanation, and
so does an answer that repeats a worked example's (each quotes its own excerpts' tokens, so a
repeat is a parrot, not a description of this latent).

Which examples: at most ``n_examples`` of ``record.train`` evenly spread over the ranking by
maximum activation (``prompts.spread``), strongest first. Measured with SmolLM2's tokenizer on the
quickstart's records (windows of 32 Gemma tokens of Python documentation), the prompt is about
1,270 tokens with the default 20 excerpts and 2,180 with 40, of which 360 are instructions and
worked examples (delphi's explainer prompt is about 960 tokens by its own count).
"""

from __future__ import annotations

from pydantic import Field

import saebench
from saebench.errors import ConfigError
from saebench.interfaces import Explainer
from saebench.interp.llm import LLMRequest
from saebench.interp.prompts import EXPLANATION_MARKER, chat, highlight, numbered, parse_explanation, spread
from saebench.interp.types import Explanation, LatentRecord, Usage

# Restated at the end of every question: a small model answers the last thing it read, and without
# it SmolLM2-135M rarely writes the marker. No "<phrase>" placeholder: it copies that as an answer.
REPLY = "Reply with one line that starts with " + EXPLANATION_MARKER

SYSTEM = (
    "You explain a feature of a language model. You see text excerpts where the feature fires; the tokens "
    "where it fires are marked <<like this>>{values}. Say what the marked tokens have in common, including the "
    "context just before them where it matters: one short phrase, which may quote a few typical marked tokens, "
    "not a list of the examples. " + REPLY + " followed by the phrase."
)
VALUES_NOTE = ", and each excerpt's activations line gives the marked tokens' strength from 0 to 10"

#: worked examples: (excerpts with marks, activations lines, answer). Each answer quotes its own
#: excerpts' tokens: a verbatim copy describes the example, not the latent, and ``copied`` rejects it
#: (the answer of a generic example, e.g. "dunder names in Python", was copied onto every latent).
SHOTS = (
    (
        ("the dog <<ran>> home fast", "she <<jumped>> over the fence", "they <<swam>> across the lake"),
        ("ran=10", "jumped=8", "swam=6"),
        'the words "ran", "jumped", "swam": past-tense verbs of movement',
    ),
    (
        ("we flew to <<Paris>> in May", "the <<London>> office", "born in <<Tokyo>>, Japan"),
        ("Paris=10", "London=6", "Tokyo=9"),
        'the words "Paris", "London", "Tokyo": city names',
    ),
    (
        ("y = f<<(>>x)", "print<<(>>'hi')", "n = len<<(>>items)"),
        ("(=10", "(=9", "(=7"),
        'the token "(" right after a function name, as in "f(", "print(", "len("',
    ),
)


def example_lines(examples: list, scale: float | None) -> list[str]:
    return [highlight(e, scale=scale) for e in examples]


def lines_with_values(texts, values, show_activations: bool) -> list[str]:
    """A worked example's excerpt lines, with activations lines when the real question has them."""
    return [f"{t}\n   activations: {v}" if show_activations else t for t, v in zip(texts, values)]


def worked_examples(show_activations: bool) -> list[tuple[str, str]]:
    """The few-shot (question, answer) pairs, in the same format as the real question."""
    return [
        (
            f"Excerpts:\n{numbered(lines_with_values(texts, values, show_activations))}\n\n{REPLY}",
            f"{EXPLANATION_MARKER} {answer}",
        )
        for texts, values, answer in SHOTS
    ]


def copied(text: str, messages: tuple[dict[str, str], ...]) -> bool:
    """Whether an explanation repeats a worked example's answer of its own prompt (case and final
    period aside): a model that parrots the example has explained nothing."""
    norm = lambda t: t.casefold().rstrip(" .")
    shown = (parse_explanation(m["content"]) for m in messages if m["role"] == "assistant")
    return any(a is not None and norm(a) == norm(text) for a in shown)


class LLMExplainer(Explainer):
    """Few-shot explanation from activating examples with marked tokens, parsed after a fixed marker."""

    name = "llm"

    class Options(saebench.Options):
        n_examples: int = Field(20, ge=1, description="training examples shown (spread over activation strength)")
        show_activations: bool = Field(False, description="also list each marked token's activation 0-10")
        max_tokens: int = Field(256, ge=1, description="longest answer")
        temperature: float = Field(0.0, ge=0.0, description="sampling temperature of the explanation (0: greedy)")

    def messages(self, record: LatentRecord) -> tuple[dict[str, str], ...]:
        show = self.options.show_activations
        scale = record.max_activation if show else None
        shown = spread(record.train, self.options.n_examples)
        user = f"Excerpts:\n{numbered(example_lines(shown, scale))}\n\n{REPLY}"
        system = SYSTEM.format(values=VALUES_NOTE if show else "")
        return chat(system, user, worked_examples(show))

    async def explain(self, record: LatentRecord) -> Explanation:
        if not record.train:
            return Explanation(
                latent=record.latent, explainer=self.name, text=None, failure="no activating training examples"
            )
        return await self.ask(record, self.messages(record))

    async def ask(self, record: LatentRecord, messages: tuple[dict[str, str], ...]) -> Explanation:
        """Send one prompt and parse the answer after the marker; usage copied from the response."""
        if self.llm is None:
            raise ConfigError("no LLM client is configured for this explainer", f"explainer {self.name}")
        usage = Usage()
        request = LLMRequest(
            messages=messages, max_tokens=self.options.max_tokens, temperature=self.options.temperature
        )
        response = usage.add(await self.llm.complete(request))
        text = parse_explanation(response.text)
        failure = None
        if text is None:
            failure = f"unparsable answer: {response.text[:80]!r}"
        elif copied(text, messages):
            failure = f"answer copies a worked example: {text[:80]!r}"
            text = None
        if failure is not None:
            usage.parse_failures += 1
        return Explanation(latent=record.latent, explainer=self.name, text=text, failure=failure, **usage.usage())


@saebench.hookimpl
def register_explainers(register):
    register(LLMExplainer)
