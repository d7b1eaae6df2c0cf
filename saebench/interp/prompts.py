"""What the LLM explainers and judges share: showing examples, parsing answers, counting usage.

Conventions (one way each):

- Text is shown with ``render``: the tokens concatenated, newlines and tabs escaped (``\\n``,
  ``\\t``) so one example is one line of the prompt.
- Tokens where a latent fires are marked ``<<like this>>`` (delphi's convention): a run of
  consecutive tokens whose activation is at least ``threshold`` × the example's maximum (and > 0)
  is wrapped in one pair of markers; a leading space stays outside the opening marker.
- Answers are parsed strictly: an answer that does not have the asked-for shape is ``None`` and the
  caller counts a parse failure. Nothing unparsable is ever turned into an explanation or a 0/1.
- A probability is read from the top-logprob alternatives at the generated token holding a digit;
  an alternative counts for digit d when it is d once whitespace, brackets, commas and quotes are
  stripped (" 1", "[1", "1," all count for "1").
- A one-excerpt judge answers Yes or No: only the answer's first word is read ("yes"/"no" or
  "1"/"0", any case, trailing punctuation allowed), and P(Yes) is read from the first generated
  token's alternatives, each counted as yes or no once spaces are stripped and case folded.
"""

from __future__ import annotations

import math
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

from saebench.interp.llm import LLMResponse, TokenLogprob
from saebench.interp.types import Example

HIGHLIGHT_THRESHOLD = 0.3
OPEN, CLOSE = "<<", ">>"
EXPLANATION_MARKER = "[EXPLANATION]:"

_ESCAPES = str.maketrans({"\n": "\\n", "\t": "\\t", "\r": "\\r"})
_LIST = re.compile(r"\[([^\[\]]*)\]")
_INT = re.compile(r"\s*([+-]?\d+)\s*")
_STRIP = " \t\n[](),'\""
_YES_NO = {"yes": 1, "1": 1, "no": 0, "0": 0}


def render(tokens: Sequence[str]) -> str:
    """The tokens as one line of text (newlines and tabs escaped)."""
    return "".join(tokens).translate(_ESCAPES)


def highlight_mask(example: Example, threshold: float = HIGHLIGHT_THRESHOLD) -> list[bool]:
    """Which tokens are marked: activation > 0 and >= threshold × the example's maximum."""
    top = example.max_activation
    if top <= 0:
        return [False] * len(example.tokens)
    return [a > 0 and a >= threshold * top for a in example.activations]


def mark(tokens: Sequence[str], mask: Sequence[bool]) -> str:
    """``render`` with each run of masked tokens wrapped in ``<<``…``>>``."""
    out: list[str] = []
    i = 0
    while i < len(tokens):
        if not mask[i]:
            out.append(render([tokens[i]]))
            i += 1
            continue
        j = i
        while j < len(tokens) and mask[j]:
            j += 1
        run = render(tokens[i:j])
        body = run.lstrip(" ") or run  # a run of spaces only is still shown marked
        out.append(run[: len(run) - len(body)] + OPEN + body + CLOSE)
        i = j
    return "".join(out)


def highlight(example: Example, threshold: float = HIGHLIGHT_THRESHOLD, scale: float | None = None) -> str:
    """The example with its strongest tokens marked; with ``scale`` (the latent's maximum activation)
    a second line lists each marked token's activation as an integer 0-10 of that scale."""
    mask = highlight_mask(example, threshold)
    text = mark(example.tokens, mask)
    if scale is None or scale <= 0:
        return text
    values = [
        f"{render([t]).strip() or render([t])}={round(10 * a / scale)}"
        for t, a, m in zip(example.tokens, example.activations, mask)
        if m
    ]
    return f"{text}\n   activations: {', '.join(values)}"


def numbered(lines: Sequence[str]) -> str:
    """``1. first`` / ``2. second``... one per line."""
    return "\n".join(f"{i}. {line}" for i, line in enumerate(lines, 1))


def spread(examples: Sequence[Example], n: int | None) -> list[Example]:
    """At most ``n`` examples, strongest first, evenly spaced over the ranking by maximum activation,
    so weak activations are represented as well as the top ones (delphi samples across quantiles).
    The sort is stable: negatives (all 0) keep the order they came in."""
    ranked = sorted(examples, key=lambda e: -e.max_activation)
    if n is None or len(ranked) <= n:
        return ranked
    if n <= 1:
        return ranked[:n]
    step = (len(ranked) - 1) / (n - 1)
    return [ranked[round(i * step)] for i in range(n)]


def parse_explanation(text: str, marker: str = EXPLANATION_MARKER) -> str | None:
    """The first line after the last ``marker`` (markdown emphasis and quotes stripped), or None when
    the marker is missing or what follows has no letter or digit."""
    at = text.rfind(marker)
    if at < 0:
        return None
    rest = text[at + len(marker) :].strip()
    line = rest.splitlines()[0] if rest else ""
    line = line.strip().strip("*_`").strip()
    if len(line) >= 2 and line[0] == line[-1] and line[0] in "\"'":  # a wrapping pair only: 'cat' stays whole
        line = line[1:-1].strip()
    if not any(c.isalnum() for c in line):
        return None
    return line


def find_int_list(text: str) -> tuple[list[int], list[int]] | None:
    """The last ``[...]`` list of integers in ``text``: its values and each value's character offset
    (of its last digit). None when no bracketed list holds only integers."""
    for match in reversed(list(_LIST.finditer(text))):
        body, start = match.group(1), match.start(1)
        if not body.strip():
            continue
        values, offsets, pos, ok = [], [], start, True
        for item in body.split(","):
            m = _INT.fullmatch(item)
            if m is None:
                ok = False
                break
            values.append(int(m.group(1)))
            offsets.append(pos + m.end(1) - 1)
            pos += len(item) + 1
        if ok:
            return values, offsets
    return None


def parse_int_list(text: str, n: int, lo: int, hi: int) -> list[int] | None:
    """Exactly ``n`` integers in [lo, hi] from the answer's last bracketed list, else None."""
    found = find_int_list(text)
    if found is None or len(found[0]) != n or not all(lo <= v <= hi for v in found[0]):
        return None
    return found[0]


def parse_binary_list(text: str, n: int) -> list[int] | None:
    """Exactly ``n`` values, each 0 or 1, from the answer's last bracketed list, else None."""
    return parse_int_list(text, n, 0, 1)


def parse_yes_no(text: str) -> int | None:
    """1 for an answer whose first word is yes or 1, 0 for no or 0 (any case, trailing punctuation
    allowed, later words ignored); None otherwise: "Maybe", "**Yes**" and "Yesterday" are not answers."""
    words = text.split(maxsplit=1)
    if not words:
        return None
    return _YES_NO.get(words[0].rstrip(string.punctuation).casefold())


def prob_yes(response: LLMResponse) -> float | None:
    """P(Yes) / (P(Yes) + P(No)) among the first generated token's alternatives (the token itself
    included); None without logprobs or when neither word is among them."""
    if not response.logprobs:
        return None
    first = response.logprobs[0]
    candidates = {**first.top}
    candidates.setdefault(first.token, first.logprob)
    mass = {"yes": 0.0, "no": 0.0}
    for text, logprob in candidates.items():
        word = text.strip().casefold()
        if word in mass and math.isfinite(logprob):
            mass[word] += math.exp(logprob)
    total = mass["yes"] + mass["no"]
    return mass["yes"] / total if total > 0 else None


def token_at(response: LLMResponse, offset: int) -> TokenLogprob | None:
    """The generated token that holds character ``offset`` of ``response.text``; None when there are
    no logprobs or their tokens do not spell the text (then no offset can be trusted)."""
    lp = response.logprobs
    if not lp or "".join(t.token for t in lp) != response.text:
        return None
    pos = 0
    for t in lp:
        if pos <= offset < pos + len(t.token):
            return t
        pos += len(t.token)
    return None


def digit_probs(token: TokenLogprob, digits: Sequence[str]) -> dict[str, float]:
    """Probability of each digit among ``token``'s alternatives, renormalised over the digits seen."""
    candidates = {**token.top}
    candidates.setdefault(token.token, token.logprob)  # the generated token itself, if not in top
    mass: dict[str, float] = {}
    for text, logprob in candidates.items():
        d = text.strip(_STRIP)
        if d in digits and math.isfinite(logprob):
            mass[d] = mass.get(d, 0.0) + math.exp(logprob)
    total = sum(mass.values())
    return {d: p / total for d, p in mass.items()} if total > 0 else {}


def prob_one(response: LLMResponse, offsets: Sequence[int]) -> list[float | None]:
    """P("1") against P("0") at each digit offset of a 0/1 answer; None where it cannot be read."""
    out: list[float | None] = []
    for offset in offsets:
        token = token_at(response, offset)
        probs = digit_probs(token, ("0", "1")) if token is not None else {}
        out.append(probs.get("1", 0.0) if probs else None)
    return out


def expected_digit(token: TokenLogprob | None) -> float | None:
    """Expected value of a single digit 0-9 over the token's alternatives; None when no digit is seen."""
    if token is None:
        return None
    probs = digit_probs(token, tuple("0123456789"))
    return sum(int(d) * p for d, p in probs.items()) if probs else None


@dataclass
class Usage:
    """Tokens and cost summed over responses; cost is None as soon as one response has no price."""

    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = 0.0

    def add(self, response: LLMResponse) -> LLMResponse:
        self.prompt_tokens += response.prompt_tokens
        self.completion_tokens += response.completion_tokens
        if self.cost_usd is None or response.cost_usd is None:
            self.cost_usd = None
        else:
            self.cost_usd += response.cost_usd
        return response

    def fields(self) -> dict:
        return {
            "prompt_tokens": self.prompt_tokens,
            "completion_tokens": self.completion_tokens,
            "cost_usd": self.cost_usd,
        }


def chat(system: str, user: str, shots: Sequence[tuple[str, str]] = ()) -> tuple[dict[str, str], ...]:
    """Chat messages: the system prompt, worked (user, assistant) examples, then the question."""
    messages = [{"role": "system", "content": system}]
    for question, answer in shots:
        messages += [{"role": "user", "content": question}, {"role": "assistant", "content": answer}]
    messages.append({"role": "user", "content": user})
    return tuple(messages)
