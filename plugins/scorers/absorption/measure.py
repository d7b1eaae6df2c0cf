"""Absorption of one word (step 5 of the scorer's docstring) and its summary per letter."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from saebench.plugins.scorers.absorption.probe import LetterData, MainLatents
from saebench.plugins.scorers.absorption.words import LetterWords


@dataclass(frozen=True)
class Thresholds:
    """The thresholds of the absorption fraction and of full absorption (the scorer's options of the
    same names; the defaults are SAEBench's)."""

    absorber_cos_threshold: float = 0.1
    max_absorbing_latents: int = 3
    absorption_fraction_threshold: float = 0.4
    full_absorber_cos_threshold: float = 0.025
    full_absorption_threshold: float = 0.4
    main_inactive_threshold: float = 1e-8


@dataclass
class WordAbsorption:
    fraction: float
    full: bool
    absorber: int | None  # the non-main latent with the largest positive projection s_j
    absorber_projection: float
    main_projection: float
    probe_projection: float

    def example(self, word: str) -> dict[str, Any]:
        """The word as an absorbed example in the details."""
        return {
            "word": word,
            "absorbing_latent": self.absorber,
            "fraction": self.fraction,
            "full": self.full,
            "absorber_projection": self.absorber_projection,
            "main_projection": self.main_projection,
            "probe_projection": self.probe_projection,
        }


def word_absorption(
    latents: Tensor, cos: Tensor, main: Sequence[int], probe_projection: float, thresholds: Thresholds = Thresholds()
) -> WordAbsorption:
    """Absorption fraction and full absorption of one word (see the scorer's docstring).

    ``latents`` f [d_sae] and ``cos`` [d_sae] (cosine of each decoder row with the unit probe
    direction); ``main`` the letter's main latents; ``probe_projection`` x · p.
    """
    t = thresholds
    f = latents.to(torch.float64)
    cos = cos.to(torch.float64)
    s = f * cos
    act = float(probe_projection)
    main_idx = torch.as_tensor(list(main), dtype=torch.int64)
    is_main = torch.zeros(f.shape[0], dtype=torch.bool)
    is_main[main_idx] = True
    main_proj = float(s[main_idx].sum())

    candidates = (~is_main) & (cos >= t.absorber_cos_threshold) & (s > 0)
    cand_s = s[candidates]
    top = float(cand_s.topk(min(t.max_absorbing_latents, cand_s.numel())).values.sum()) if cand_s.numel() else 0.0
    if act <= 0 or main_proj >= act or top < t.absorption_fraction_threshold * act:
        fraction = 0.0
    elif main_proj <= 0:
        fraction = 1.0
    else:
        a = min(top, act - main_proj)
        fraction = min(max(a / (a + main_proj), 0.0), 1.0)

    others = torch.where(is_main, torch.tensor(-math.inf, dtype=torch.float64), s)
    absorber: int | None = None
    absorber_s = 0.0
    full = False
    if int((~is_main).sum()):
        j = int(others.argmax())
        absorber_s = float(s[j])
        if absorber_s > 0:
            absorber = j
        full = (
            bool((f[main_idx] < t.main_inactive_threshold).all())
            and float(cos[j]) >= t.full_absorber_cos_threshold
            and act > 0
            and absorber_s >= t.full_absorption_threshold * act
        )
    return WordAbsorption(fraction, full, absorber, absorber_s, main_proj, act)


def evaluated_words(data: LetterData, results: dict[int, WordAbsorption], letter: int) -> list[int]:
    """The indices of the test words of ``letter`` that were evaluated (correctly probed), ascending."""
    return [i for i in sorted(results) if int(data.y_test[i]) == letter]


def letter_details(
    words: LetterWords, data: LetterData, mains: MainLatents, results: dict[int, WordAbsorption], max_examples: int
) -> dict[str, dict[str, Any]]:
    """Per kept letter: its main latents and their k-sparse F1, word counts, absorption fraction,
    full-absorption rate and up to ``max_examples`` absorbed words."""
    per_letter: dict[str, dict[str, Any]] = {}
    for c, li in words.letters.items():
        here = evaluated_words(data, results, li)
        examples = [results[i].example(words.test[i]) for i in here if results[i].full or results[i].fraction > 0]
        per_letter[c] = {
            "main_latents": mains.latents[li],
            "sparse_probe_f1": mains.f1(li),
            "f1_by_k": mains.f1_by_k[li],
            "train_words": int((data.y_train == li).sum()),
            "test_words": int((data.y_test == li).sum()),
            "evaluated_words": len(here),
            "absorption_fraction": mean([results[i].fraction for i in here]),
            "full_absorption_rate": mean([float(results[i].full) for i in here]),
            "absorbed_examples": examples[:max_examples],
        }
    return per_letter


def mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None
