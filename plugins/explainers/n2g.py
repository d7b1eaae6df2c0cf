"""N2G explainer (no LLM): n-gram patterns ending at the tokens a latent fires on, read back by the ``n2g`` scorer.

**What N2G is.** Neuron to Graph (Foote et al. 2023, "Neuron to Graph: Interpreting Language Model Neurons at
Scale", arXiv:2305.19911, its method section; short version arXiv:2304.12918) explains a neuron from its max-activating examples:

1. *prune*: cut each example after its max-activating ("pivot") token and keep the shortest context before it for
   which the neuron still reaches half its original activation;
2. *saliency*: replace each kept token in turn by a padding token; a token whose replacement keeps the activation
   (saliency 1 - new/original below 0.5) does not matter and becomes a wildcard;
3. *augment* with examples where important tokens are swapped for DistilBERT's likely substitutes;
4. store the patterns in a *trie* read backwards from the activating token; the trie predicts, at each token of a
   text, whether (and how strongly) the neuron fires there.

Gao et al. 2024 ("Scaling and evaluating sparse autoencoders", arXiv:2406.04093: the explainability evaluation in
§4 and its N2G appendix) explain SAE latents this way and score the explanations by the precision and
recall of those per-token predictions (the ``n2g`` scorer). Their released code (openai/sparse_autoencoder,
``sparse_autoencoder/explanations.py``: ``create_n2g_explanation``, ``NtgExplanation``) does steps 1, 2 and 4 with
the subject model, thresholds of 0.5, and no augmentation.

**What this explainer does instead.** It sees no model, only the latent record, so every question N2G asks the
model ("does the latent still fire without this token?") is asked of the training data instead: ``record.train``
plus ``record.train_negatives`` (never the test sets). A *pattern* is a run of tokens whose last one is the token
the latent fires on; ``*`` stands for any token. It matches at position i of a window when its last element lines
up with token i and the earlier ones with the tokens before it, inside the window (a pattern never reaches across
a window's start, as the released code's patterns never reach before the text's start). On the training data a
pattern has ``matches`` (positions where it matches), ``hits`` (those where the latent fires, activation > 0),
precision = hits / matches, and the evidence score ``s = hits / (matches + 1)``: precision with one more
non-firing match counted, so that at equal precision the pattern seen more often wins and a context seen only at
its own pivot (s = 1/2) does not beat a shorter pattern that fired at 9 of 10 matches (s = 9/11).

For each pivot, the max-activating token of each training example (the first of ties; ``pivots: all`` takes every
token with activation > 0):

1. *prune*: candidates are the pivot token with its L nearest preceding tokens, L = 0 .. ``max_context``, each
   after step 2; keep the one with the highest s, the shortest context of ties: context is kept only where it
   raises s (choice: N2G keeps the shortest context that preserves half the activation; with no model,
   "preserves" becomes "makes firing likelier in the data". Each length is scored after its wildcards, not
   before as N2G orders the steps, so that ``"a" * ["c"]``, seen at many pivots, beats the ``"z" ["c"]`` seen
   once that a shorter unwildcarded context would give);
2. *saliency*: each context token, nearest first, becomes ``*`` when that does not lower s (N2G's test
   "replacing it keeps the activation"), then the activating token itself when that raises s (choice: strictly,
   because in a sample of 40 windows the token after a context is often the same one by co-occurrence, and a tie
   would turn ``"a" ["b"]`` into "anything after a"); leading wildcards are dropped (``* "a" ["b"]`` is read as
   ``"a" ["b"]``);
3. the pattern is kept when its training precision is at least ``min_precision`` (0.5, N2G's threshold);
   otherwise this pivot goes unexplained;
4. the trie: the distinct patterns, less every pattern that another one generalises (no more elements, each
   ``*`` or equal, aligned at the activating token): the union of their matches, hence every prediction, is
   unchanged.

No augmentation (it needs a masked LM and the subject model), and no start-of-text anchor (the released code's
``token(^)``, decided by running the model on a start-padded text; windows here begin mid-document anyway).
Tokens are compared exactly, case and leading space included, as N2G and the released code compare token strings.

**The text** (what is stored and what scorers read): a header line, then one pattern per line, each token
JSON-quoted, ``*`` for any token, the activating token in brackets, and a comment with its training counts::

    N2G patterns: the latent fires on the [bracketed] token when the tokens before it match (* = any token)
    " New" [" York"]  # train: fires at 12 of 12 matches
    "(" * [")"]  # train: fires at 3 of 4 matches

Only the header and the patterns are read back (``parse_patterns``); a ``#`` outside a quoted token starts a
comment. An explanation with no pattern line is valid and predicts that the latent never fires, so a latent
whose pivots all fail step 3 is still scored (recall 0) rather than dropped from the means; only a record with no
activating token gets ``text=None``.
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from typing import Literal

from pydantic import Field

import saebench
from saebench.interfaces import Explainer
from saebench.interp.types import Example, Explanation, LatentRecord

HEADER = "N2G patterns: the latent fires on the [bracketed] token when the tokens before it match (* = any token)"
#: a pattern: token strings, None for the wildcard ``*``; the last element is the activating token
Pattern = tuple[str | None, ...]
_DECODER = json.JSONDecoder()


class N2GParseError(ValueError):
    """An explanation that is not in the N2G text format (the message says where)."""


# -- the text format ----------------------------------------------------------------------------------------------


def _element(e: str | None) -> str:
    return "*" if e is None else json.dumps(e, ensure_ascii=False)


def pattern_text(p: Pattern) -> str:
    """One pattern as a line of the explanation, without its comment: ``"a" * ["b"]``."""
    return " ".join([*(_element(e) for e in p[:-1]), f"[{_element(p[-1])}]"])


def format_patterns(patterns: Sequence[Pattern], comments: Sequence[str] | None = None) -> str:
    """The explanation text: the header, then one line per pattern (with ``# comment`` when given)."""
    lines = [HEADER]
    for i, p in enumerate(patterns):
        note = comments[i] if comments else ""
        lines.append(pattern_text(p) + (f"  # {note}" if note else ""))
    return "\n".join(lines)


def parse_patterns(text: str) -> list[Pattern]:
    """The patterns of an N2G explanation text, in order; N2GParseError when it is not one.

    Lines are split on "\\n" only (JSON escapes every newline inside a token, and a token may hold other line
    separators such as U+2028); blank and comment lines are skipped.
    """
    lines = [(n, line) for n, line in enumerate(text.split("\n"), 1) if line.strip()]
    if not lines or not lines[0][1].strip().startswith(HEADER.split(":")[0] + ":"):
        raise N2GParseError("not an N2G explanation: the first line must start with 'N2G patterns:'")
    out = []
    for n, line in lines[1:]:
        if line.lstrip().startswith("#"):
            continue
        out.append(_parse_line(line, n))
    return out


def _parse_line(line: str, n: int) -> Pattern:
    elements: list[str | None] = []
    activating: str | None = None
    bracketed = False
    i = 0
    while i < len(line):
        c = line[i]
        if c.isspace():
            i += 1
        elif c == "#":
            break
        elif bracketed:
            raise N2GParseError(f"line {n}: nothing may follow the [bracketed] activating token")
        elif c == "[":
            activating, i = _read_element(line, _skip_spaces(line, i + 1), n)
            i = _skip_spaces(line, i)
            if i >= len(line) or line[i] != "]":
                raise N2GParseError(f"line {n}: '[' without its ']'")
            bracketed, i = True, i + 1
        else:
            e, i = _read_element(line, i, n)
            elements.append(e)
    if not bracketed:
        raise N2GParseError(f"line {n}: no [bracketed] activating token")
    return normalise((*elements, activating))


def _skip_spaces(line: str, i: int) -> int:
    while i < len(line) and line[i].isspace():
        i += 1
    return i


def _read_element(line: str, i: int, n: int) -> tuple[str | None, int]:
    if line.startswith("*", i):
        return None, i + 1
    if line.startswith('"', i):
        try:
            value, end = _DECODER.raw_decode(line, i)
        except json.JSONDecodeError as exc:
            raise N2GParseError(f"line {n}: bad quoted token ({exc.msg})") from None
        return value, end
    raise N2GParseError(f"line {n}: expected a JSON-quoted token, * or [, got {line[i : i + 12]!r}")


def normalise(p: Sequence[str | None]) -> Pattern:
    """Leading wildcards dropped (they constrain nothing but the window's length); ``(*,)`` stays."""
    p = tuple(p)
    start = 0
    while start < len(p) - 1 and p[start] is None:
        start += 1
    return p[start:]


def generalises(q: Pattern, p: Pattern) -> bool:
    """Whether q matches wherever p does: no longer, and each element ``*`` or equal, aligned at the end."""
    return len(q) <= len(p) and all(a is None or a == b for a, b in zip(reversed(q), reversed(p)))


# -- matching ---------------------------------------------------------------------------------------------------


class Matcher:
    """Which patterns match at each token of a window; patterns are looked up by their activating token."""

    def __init__(self, patterns: Sequence[Pattern]):
        self.patterns = [normalise(p) for p in patterns]
        # per pattern: (index, tokens it needs before the activating one, [(offset from it, token)] to check)
        self.by_last: dict[str, list[tuple[int, int, list[tuple[int, str]]]]] = defaultdict(list)
        self.any_last: list[tuple[int, int, list[tuple[int, str]]]] = []
        for k, p in enumerate(self.patterns):
            back = len(p) - 1
            entry = (k, back, [(j - back, e) for j, e in enumerate(p[:-1]) if e is not None])
            (self.any_last if p[-1] is None else self.by_last[p[-1]]).append(entry)

    def where(self, tokens: Sequence[str]) -> dict[int, list[int]]:
        """{position: indices of the patterns matching ending there, in order} for the positions some pattern
        matches at (every other position is predicted not to fire)."""
        get, any_last = self.by_last.get, self.any_last
        if any_last:
            candidates: Iterable[int] = range(len(tokens))
        else:
            candidates = [i for i, t in enumerate(tokens) if t in self.by_last]
        out: dict[int, list[int]] = {}
        for i in candidates:
            here = [
                k
                for k, back, checks in (*get(tokens[i], ()), *any_last)
                if back <= i and all(tokens[i + d] == e for d, e in checks)
            ]
            if here:
                out[i] = sorted(here) if any_last else here
        return out


class Evidence:
    """Counts of patterns on some examples: (hits, matches), cached; what the explainer decides with."""

    def __init__(self, examples: Iterable[Example]):
        self.seqs: list[list[str]] = []
        self.fires: list[list[bool]] = []
        self.where: dict[str, list[tuple[int, int]]] = defaultdict(list)
        for s, e in enumerate(examples):
            self.seqs.append(e.tokens)
            self.fires.append([a > 0 for a in e.activations])
            for i, t in enumerate(e.tokens):
                self.where[t].append((s, i))
        self.total = sum(len(f) for f in self.fires)
        self.total_hits = sum(sum(f) for f in self.fires)
        self._cache: dict[Pattern, tuple[int, int]] = {}

    def counts(self, p: Pattern) -> tuple[int, int]:
        """(hits, matches) of a normalised pattern: where it matches, and where the latent fires there too."""
        got = self._cache.get(p)
        if got is not None:
            return got
        fixed = [(j, e) for j, e in enumerate(p) if e is not None]
        if not fixed:  # (*,): every token
            got = (self.total_hits, self.total)
        else:
            # candidates come from the rarest token of the pattern; the others are checked at their offsets
            anchor, token = min(fixed, key=lambda je: len(self.where.get(je[1], ())))
            rest = [(j - anchor, e) for j, e in fixed if j != anchor]
            last = len(p) - 1 - anchor
            hits = matches = 0
            for s, i in self.where.get(token, ()):
                seq = self.seqs[s]
                if i < anchor or i + last >= len(seq):
                    continue
                for d, e in rest:
                    if seq[i + d] != e:
                        break
                else:
                    matches += 1
                    hits += self.fires[s][i + last]
            got = (hits, matches)
        self._cache[p] = got
        return got

    def score(self, p: Pattern) -> float:
        hits, matches = self.counts(normalise(p))
        return hits / (matches + 1)


def pivot_pattern(ev: Evidence, tokens: Sequence[str], pos: int, max_context: int) -> Pattern:
    """Steps 1 and 2 of the module docstring for the pivot at ``tokens[pos]``."""
    best: Pattern = ()
    best_s = -1.0
    for length in range(min(max_context, pos) + 1):
        p, s = wildcarded(ev, tokens[pos - length : pos + 1])
        if s > best_s:
            best, best_s = p, s
    return best


def wildcarded(ev: Evidence, tokens: Sequence[str]) -> tuple[Pattern, float]:
    """Step 2 on the pattern ``tokens``: context tokens nearest first, then the activating one; with its s."""
    work: list[str | None] = list(tokens)
    best_s = ev.score(tuple(work))
    last = len(work) - 1
    for j in [*range(last - 1, -1, -1), last]:
        trial = work[:j] + [None] + work[j + 1 :]
        s = ev.score(tuple(trial))
        if s > best_s or (s == best_s and j < last):
            work, best_s = trial, s
    return normalise(work), best_s


def pivots(example: Example, which: str) -> list[int]:
    """The positions explained in one training example: its first max-activating token, or every firing one."""
    acts = example.activations
    if which == "all":
        return [i for i, a in enumerate(acts) if a > 0]
    top = max(acts, default=0.0)
    return [acts.index(top)] if top > 0 else []


def n2g_patterns(
    record: LatentRecord, max_context: int = 4, min_precision: float = 0.5, which: str = "max"
) -> list[tuple[Pattern, int, int]]:
    """The explanation's patterns with their training (hits, matches), most hits first."""
    ev = Evidence([*record.train, *record.train_negatives])
    kept: dict[Pattern, tuple[int, int]] = {}
    for e in record.train:
        for pos in pivots(e, which):
            p = pivot_pattern(ev, e.tokens, pos, max_context)
            hits, matches = ev.counts(p)
            if matches and hits / matches >= min_precision:
                kept[p] = (hits, matches)
    trie = [p for p in kept if not any(q != p and generalises(q, p) for q in kept)]
    trie.sort(key=lambda p: (-kept[p][0], kept[p][1], pattern_text(p)))
    return [(p, *kept[p]) for p in trie]


class N2GExplainer(Explainer):
    """No LLM: N2G n-gram patterns (Foote et al.; Gao et al. 2024) pruned on the training examples."""

    name = "n2g"
    needs_llm = False

    class Options(saebench.Options):
        max_context: int = Field(4, ge=0, description="most tokens of context a pattern keeps before its token")
        min_precision: float = Field(
            0.5, ge=0, le=1, description="a pattern is kept when it fires at this share of its training matches"
        )
        pivots: Literal["max", "all"] = Field(
            "max", description="tokens explained: each training example's max (N2G) or all its firing tokens"
        )

    async def explain(self, record: LatentRecord) -> Explanation:
        if not any(a > 0 for e in record.train for a in e.activations):
            return Explanation(
                latent=record.latent,
                explainer=self.name,
                text=None,
                failure="no activating tokens in the training examples",
                cost_usd=0.0,
            )
        o = self.options
        found = n2g_patterns(record, o.max_context, o.min_precision, o.pivots)
        text = format_patterns([p for p, _, _ in found], [f"train: fires at {h} of {m} matches" for _, h, m in found])
        return Explanation(latent=record.latent, explainer=self.name, text=text, cost_usd=0.0)


@saebench.hookimpl
def register_explainers(register):
    register(N2GExplainer)
