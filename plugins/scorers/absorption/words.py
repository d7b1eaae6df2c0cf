"""The words of the first-letter task: the vocabulary, the words the model tokenises short enough,
their seeded train/test split, and the letters with enough train words (steps 1 of the scorer's docstring)."""

from __future__ import annotations

import random
import re
import string
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

import saebench

LETTERS = string.ascii_lowercase
_WORD = re.compile(r"(?<![A-Za-z0-9_])[a-z]+(?![A-Za-z0-9_])")


def vocabulary_words() -> list[str]:
    """Every lowercase alphabetic word of length ≥ 3 in ``pydoc_data.topics``, deduplicated and sorted."""
    from pydoc_data.topics import topics

    text = "\n".join(topics[k] for k in sorted(topics))
    return sorted({w for w in _WORD.findall(text) if len(w) >= 3})


def select_words(adapter: saebench.ModelAdapter, max_word_tokens: int, max_words: int, seed: int) -> list[str]:
    """The vocabulary words whose ``" word"`` the model tokenises into 1..max_word_tokens tokens, at most
    ``max_words`` of them (a seeded sample), sorted."""
    words = [w for w in vocabulary_words() if 1 <= len(adapter.tokenize(" " + w)) <= max_word_tokens]
    if len(words) > max_words:
        words = sorted(random.Random(seed).sample(words, max_words))
    return words


def split_words(words: Sequence[str], test_fraction: float, seed: int) -> tuple[list[str], list[str]]:
    """(train, test), each sorted: a seeded shuffle, the first round(n · test_fraction) words are test."""
    shuffled = list(words)
    random.Random(seed + 1).shuffle(shuffled)
    n_test = round(len(shuffled) * test_fraction)
    return sorted(shuffled[n_test:]), sorted(shuffled[:n_test])


def kept_letters(train: Sequence[str], min_words_per_letter: int) -> list[str]:
    """The letters, alphabetically, that begin at least ``min_words_per_letter`` of the train words."""
    counts = {c: sum(1 for w in train if w[0] == c) for c in LETTERS}
    return [c for c in LETTERS if counts[c] >= min_words_per_letter]


@dataclass(frozen=True)
class LetterWords:
    """The words one cell uses: how many words were selected (``vocabulary``), the train and test words
    of the kept letters, and each kept letter's class index (alphabetical order)."""

    vocabulary: int
    train: list[str]
    test: list[str]
    letters: dict[str, int]

    @classmethod
    def keep(cls, words: Sequence[str], train: Sequence[str], test: Sequence[str], kept: Sequence[str]) -> LetterWords:
        letters = {c: i for i, c in enumerate(kept)}
        return cls(len(words), [w for w in train if w[0] in letters], [w for w in test if w[0] in letters], letters)

    def labels(self, words: Sequence[str]) -> Tensor:
        """The class index of each word's first letter."""
        return torch.tensor([self.letters[w[0]] for w in words])

    def skipped(self) -> list[str]:
        """The letters that were not kept."""
        return [c for c in LETTERS if c not in self.letters]
