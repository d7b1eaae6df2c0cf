"""Feature absorption on the first-letter task (Chanin et al., "A is for Absorption"; SAEBench's
``absorption_first_letter``, with Demian Till's absorption fraction), reimplemented from its definition.

1. **Words.** Lowercase alphabetic words of length ≥ 3 from the interpreter's ``pydoc_data.topics``
   (the Python reference's prose; offline, deterministic), deduplicated and sorted, kept when the
   model tokenises ``" word"`` into at most ``max_word_tokens`` tokens (1, as SAEBench: single-token
   words; a byte-level model needs more). At most ``max_words`` of them (a seeded sample), split
   ``1 − test_fraction`` / ``test_fraction`` into train / test words (seeded). Letters with fewer than
   ``min_words_per_letter`` train words are dropped (their words are not used at all).
2. **Prompts.** SAEBench's in-context format with its verbose template ``"{word} has the first
   letter:"``, the word written with its leading space (the vocabulary token) and the answer
   " {LETTER}": ``icl_examples`` example lines ``" {ex} has the first letter: {EX[0]}"`` (train words
   other than the word, a seeded sample per prompt) joined by newlines, a newline, then the word.
   The activation at the hook point is read at the word's last token, as SAEBench's
   ``prompt_token_pos = -6`` does; the template's tail after the word (" has the first letter:")
   cannot change that activation in a causal model, so it is not run. The pieces (examples, word)
   are tokenised separately and concatenated after BOS (when the adapter has one), so the word is
   exactly its vocabulary tokens. One prompt per word serves both the probe and the absorption
   measurement (SAEBench trains its probe on ``"{word}:"`` prompts; one template halves the
   forward passes and measures the probe where it is used).
3. **Ground-truth probe.** A multinomial logistic regression over the kept letters on the train
   words' activations: features standardised (train mean and population std), full-batch L-BFGS on
   mean cross-entropy + ``probe_l2``/2·‖W‖² (bias not penalised; the same optimum as scikit-learn's
   ``LogisticRegression(C = 1 / (probe_l2 · n_train))`` on standardised features). Its weights are
   mapped back to the raw activation space (W / std); the letter's probe direction p is that row,
   normalised. ``probe_accuracy`` and ``probe_f1`` (macro over letters present in the test labels or
   predictions) are on the test words.
4. **Main latents** (k-sparse probing). Per kept letter, latents are ranked by mean activation on
   the letter's train words minus mean on the other kept letters' train words; for k = 1..``max_k``
   a one-vs-rest logistic probe (L-BFGS, standardised, ``sparse_probe_l2``) on the top-k latents is
   fitted on train words and its F1 measured on test words; k grows while the next k improves test
   F1 by more than ``f1_jump_threshold`` (SAEBench's τ = 0.03). The main latents are the top-k there.
5. **Absorption**, per test word of a kept letter L that the ground-truth probe classifies
   correctly, with x its activation, f = SAE latents of x, p the unit probe direction of L:
   cos_j = cos(W_dec[j], p), s_j = f_j · cos_j, act_proj = x · p, main_proj = Σ_{j ∈ main} s_j.

   - *absorption fraction*: potential absorbers are latents outside main with cos_j ≥
     ``absorber_cos_threshold`` (0.1) and s_j > 0; top = the sum of their ``max_absorbing_latents``
     (3) largest s_j. If act_proj ≤ 0, main_proj ≥ act_proj or top < ``absorption_fraction_threshold``
     (0.4) · act_proj: 0. Else if main_proj ≤ 0: 1. Else a = min(top, act_proj − main_proj) and the
     fraction is clip(a / (a + main_proj), 0, 1).
   - *full absorption*: every main latent's activation is < ``main_inactive_threshold`` (1e-8), and
     the non-main latent with the largest s_j (the absorber) has cos_j ≥
     ``full_absorber_cos_threshold`` (0.025), act_proj > 0 and s_j ≥ ``full_absorption_threshold``
     (0.4) · act_proj. (SAEBench's act_proj ≥ 0 with a ratio s_j / act_proj: at act_proj = 0 the
     ratio is undefined, so it is required positive here.)

Metrics:

- ``mean_absorption_fraction``: mean absorption fraction over the evaluated words (all letters
  pooled; SAEBench averages per letter first: the per-letter means are in details);
- ``full_absorption_rate``: fraction of the evaluated words with full absorption;
- ``probe_accuracy``, ``probe_f1``: the ground-truth probe's test accuracy and macro F1;
- ``probe_reliable``: 1.0 when ``probe_accuracy`` ≥ ``min_probe_accuracy`` (0.6), else 0.0;
- ``n_words``: evaluated words (correctly probed test words of kept letters);
- ``letters``: letters with at least one evaluated word;
- ``mean_main_latents``, ``mean_sparse_probe_f1``: over kept letters, the number of main latents and
  the test F1 of the chosen k-sparse probe (letters whose F1 is undefined, no test word and no
  positive prediction, are left out of the latter).

- ``latents_reliable``: 1.0 when ``mean_sparse_probe_f1`` ≥ ``min_sparse_probe_f1`` (0.3), else 0.0
  and ``details["latent_warning"]``: an SAE without first-letter latents (e.g. one trained on
  little or unrelated text) shows no absorption because there is nothing to absorb into.

A metric with nothing to average is None. **Weak subject models:** absorption is only meaningful
when the model linearly represents the first letter. When ``probe_accuracy`` is below
``min_probe_accuracy`` the metrics are still computed, but ``probe_reliable`` is 0.0 and
``details["warning"]`` says that the subject model's probe is too weak for the numbers to mean much
(tiny test models always land here). Details hold per letter: main latents, their sparse-probe F1
(and the F1 for each k), the letter's absorption fraction and full-absorption rate, and up to
``max_examples`` absorbed words with the absorbing latent. The scorer writes nothing.

Uncertainty: the units are the test words of the kept letters (unit ``word``, ids the words, the
same for every SAE of a model and seed: paired comparisons). ``mean_absorption_fraction`` and
``full_absorption_rate`` are means over the evaluated (correctly probed) words among them,
``probe_accuracy`` a mean over all of them; the interval covers the sampling of test words only,
with the probe and the main latents fixed (not refitting them: the ``seeds`` of a run cover the word
split). The F1s, counts and flags get none.

The package: ``words`` (step 1), ``prompts`` (2), ``probe`` (3 and 4), ``measure`` (5 and the
per-letter summary); this module holds the scorer.
"""

from __future__ import annotations

from dataclasses import fields
from functools import partial
from typing import Any

import torch
from pydantic import ConfigDict, Field
from torch import Tensor

import saebench
from saebench.errors import ConfigError, ShapeError
from saebench.plugins.scorers.absorption.measure import (
    Thresholds,
    WordAbsorption,
    evaluated_words,
    letter_details,
    mean,
    word_absorption,
)
from saebench.plugins.scorers.absorption.probe import (
    Candidates,
    GroundTruthProbe,
    LetterData,
    MainLatents,
    encoded,
    main_latents,
    ranked_latents,
)
from saebench.plugins.scorers.absorption.prompts import build_prompts, icl_line, last_token_activations
from saebench.plugins.scorers.absorption.words import (
    LETTERS,
    LetterWords,
    kept_letters,
    select_words,
    split_words,
    vocabulary_words,
)
from saebench.uncertainty import Units, mean_units

__all__ = [
    "AbsorptionScorer",
    "LETTERS",
    "Thresholds",
    "WordAbsorption",
    "icl_line",
    "select_words",
    "split_words",
    "vocabulary_words",
    "word_absorption",
]


class AbsorptionScorer(saebench.Scorer):
    """First-letter feature absorption: absorption fraction and full-absorption rate (SAEBench)."""

    name = "absorption"
    family = "probe"
    needs_model = True
    headline = (saebench.Metric("mean_absorption_fraction", higher_is_better=False),)

    class Options(saebench.Options):
        # every option must be a finite number (NaN and infinities are refused)
        model_config = ConfigDict(allow_inf_nan=False)

        max_word_tokens: int = Field(1, ge=1, description="keep words whose ' word' is at most this many tokens")
        max_words: int = Field(2000, ge=2, description="at most this many words (a seeded sample)")
        test_fraction: float = Field(0.2, gt=0.0, lt=1.0, description="fraction of the words held out (0 < f < 1)")
        icl_examples: int = Field(10, ge=0, description="in-context example lines before the word")
        min_words_per_letter: int = Field(10, ge=1, description="letters with fewer train words are skipped")
        probe_l2: float = Field(
            1e-2,
            gt=0.0,
            description="L2 of the ground-truth probe (mean-CE objective; > 0, else the probe would not converge)",
        )
        sparse_probe_l2: float = Field(
            1e-2, gt=0.0, description="L2 of the k-sparse probes (> 0, else the probes would not converge)"
        )
        max_k: int = Field(10, ge=1, description="largest number of main latents per letter")
        f1_jump_threshold: float = Field(0.03, ge=0.0, description="tau: grow k while test F1 improves by more")
        absorber_cos_threshold: float = Field(0.1, description="absorption fraction: min cos of an absorbing latent")
        max_absorbing_latents: int = Field(3, ge=1, description="absorption fraction: absorbing latents summed")
        absorption_fraction_threshold: float = Field(
            0.4, ge=0.0, description="absorption fraction: absorbers' projection / act_proj below this counts 0"
        )
        full_absorber_cos_threshold: float = Field(0.025, description="full absorption: min cos of the absorber")
        full_absorption_threshold: float = Field(
            0.4, ge=0.0, description="full absorption: min absorber projection / act_proj"
        )
        main_inactive_threshold: float = Field(1e-8, ge=0.0, description="full absorption: main latents below this")
        min_probe_accuracy: float = Field(
            0.6, ge=0.0, le=1.0, description="probe accuracy below this: probe_reliable = 0"
        )
        min_sparse_probe_f1: float = Field(
            0.3, ge=0.0, description="main latents' mean k-sparse F1 below this: latents_reliable = 0"
        )
        batch_prompts: int = Field(16, ge=1, description="prompts per forward pass")
        encode_batch: int = Field(256, ge=1, description="activations encoded by the SAE at once")
        max_examples: int = Field(10, ge=0, description="absorbed words listed per letter in details")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._memo: dict[tuple, Tensor] = {}

    @torch.no_grad()
    def score(self, sae: saebench.SAE, inputs: saebench.EvalInputs) -> saebench.ScoreResult:
        if sae.is_transcoder or inputs.hookpoint_out is not None:  # its decoder rows live where it writes, not reads
            raise ConfigError("absorption does not evaluate transcoders", f"scorer {self.name}")
        adapter = inputs.model(self.name)
        seed = int(inputs.seed)
        words = self.letter_words(adapter, seed)
        if sae.cfg.d_in != adapter.d_model(inputs.hookpoint):
            raise ShapeError(
                f"the SAE expects d_in={sae.cfg.d_in} but {inputs.hookpoint} has width "
                f"{adapter.d_model(inputs.hookpoint)}",
                inputs.hookpoint,
            )
        data = self.letter_data(adapter, inputs.hookpoint, words, seed)
        probe = GroundTruthProbe.fit(data, self.options.probe_l2)
        mains = self.main_latents(sae, data)
        results = self.absorption(sae, data, probe, mains)
        per_letter = letter_details(words, data, mains, results, self.options.max_examples)
        metrics = self.metrics(data, probe, mains, results, per_letter)
        details: dict = {
            "words": {"vocabulary": words.vocabulary, "train": len(words.train), "test": len(words.test)},
            "letters_skipped": words.skipped(),
            "prompt_format": f"{self.options.icl_examples} example lines ' {{example}} has the first letter: {{E}}' "
            "joined by newlines, a newline, then ' {word}'; read at the word's last token",
            "letters": per_letter,
        }
        details.update(self.warnings(metrics))
        units = word_units(words, data, probe, results, metrics)
        return saebench.ScoreResult(metrics=metrics, details=details, units=units)

    def letter_words(self, adapter: saebench.ModelAdapter, seed: int) -> LetterWords:
        """The selected words, split, restricted to the letters with ``min_words_per_letter`` train words."""
        where = f"scorer {self.name}"
        o = self.options
        words = select_words(adapter, o.max_word_tokens, o.max_words, seed)
        train_all, test_all = split_words(words, o.test_fraction, seed)
        kept = kept_letters(train_all, o.min_words_per_letter)
        if len(kept) < 2:
            raise ConfigError(
                f"{len(words)} words ({len(train_all)} train) leave {len(kept)} letter(s) with at least "
                f"min_words_per_letter={o.min_words_per_letter} train words; at least 2 are needed (raise "
                f"max_word_tokens or max_words, or lower min_words_per_letter)",
                where,
            )
        chosen = LetterWords.keep(words, train_all, test_all, kept)
        if not chosen.test:
            raise ConfigError(f"no test word among {len(words)} words: raise max_words or test_fraction", where)
        return chosen

    def letter_data(self, adapter: saebench.ModelAdapter, hookpoint: str, words: LetterWords, seed: int) -> LetterData:
        """The train and test words' activations in their prompts, with their letters."""
        train, test = words.train, words.test
        # the prompts' activations depend on the model, not the SAE: one forward pass serves every SAE cell
        key = (getattr(adapter, "model_id", id(adapter)), hookpoint, tuple(train), tuple(test), seed)
        if key not in self._memo:
            self._memo.clear()
            prompts = build_prompts(adapter, train + test, train, self.options.icl_examples, seed)
            self._memo[key] = last_token_activations(adapter, hookpoint, prompts, self.options.batch_prompts)
        acts = self._memo[key].to(torch.float64)
        return LetterData(
            acts[: len(train)], words.labels(train), acts[len(train) :], words.labels(test), len(words.letters)
        )

    def main_latents(self, sae: saebench.SAE, data: LetterData) -> MainLatents:
        """Each letter's main latents by k-sparse probing over its ``max_k`` best-ranked latents."""
        batch = self.options.encode_batch
        ranked = ranked_latents(sae, data, self.options.max_k, batch)
        cands = Candidates.encode(sae, data, ranked, batch)
        mains = MainLatents([], [])
        for li in range(data.n_letters):
            f1_of = partial(
                cands.sparse_probe_f1,
                pos_train=data.y_train == li,
                pos_test=data.y_test == li,
                l2=self.options.sparse_probe_l2,
            )
            main, f1_by_k = main_latents(ranked[li], f1_of, self.options.f1_jump_threshold)
            mains.latents.append(main)
            mains.f1_by_k.append(f1_by_k)
        return mains

    def absorption(
        self, sae: saebench.SAE, data: LetterData, probe: GroundTruthProbe, mains: MainLatents
    ) -> dict[int, WordAbsorption]:
        """The absorption of each test word the ground-truth probe classifies correctly, by test index."""
        thresholds = Thresholds(**{f.name: getattr(self.options, f.name) for f in fields(Thresholds)})
        cos_all = probe.decoder_cosines(sae)  # [L, d_sae]
        proj_test = (data.x_test * probe.directions[data.y_test]).sum(1)
        correct = (probe.predictions == data.y_test).tolist()
        results: dict[int, WordAbsorption] = {}
        for start, f in encoded(sae, data.x_test, self.options.encode_batch):
            for r in range(f.shape[0]):
                i = start + r
                if correct[i]:
                    li = int(data.y_test[i])
                    results[i] = word_absorption(f[r], cos_all[li], mains.latents[li], float(proj_test[i]), thresholds)
        return results

    def metrics(
        self,
        data: LetterData,
        probe: GroundTruthProbe,
        mains: MainLatents,
        results: dict[int, WordAbsorption],
        per_letter: dict[str, dict],
    ) -> dict[str, float | None]:
        """The leaderboard metrics (see the module docstring)."""
        # pooled over the letters in order (each letter's words ascending), as the per-letter details
        pooled = [results[i] for li in range(data.n_letters) for i in evaluated_words(data, results, li)]
        sparse_f1s = [f1 for li in range(data.n_letters) if (f1 := mains.f1(li)) is not None]
        metrics: dict[str, float | None] = {
            "mean_absorption_fraction": mean([r.fraction for r in pooled]),
            "full_absorption_rate": mean([float(r.full) for r in pooled]),
            "probe_accuracy": probe.accuracy,
            "probe_f1": probe.f1,
            "probe_reliable": 1.0 if probe.accuracy >= self.options.min_probe_accuracy else 0.0,
            "n_words": float(len(pooled)),
            "letters": float(sum(1 for v in per_letter.values() if v["evaluated_words"])),
            "mean_main_latents": mean([float(len(m)) for m in mains.latents]),
            "mean_sparse_probe_f1": mean(sparse_f1s),
        }
        sparse_f1 = metrics["mean_sparse_probe_f1"]
        reliable = sparse_f1 is not None and sparse_f1 >= self.options.min_sparse_probe_f1
        metrics["latents_reliable"] = 1.0 if reliable else 0.0
        return metrics

    def warnings(self, metrics: dict[str, float | None]) -> dict[str, str]:
        """``warning`` when the subject model's probe is too weak, ``latent_warning`` when the SAE's main
        latents do not detect their letters."""
        out = {}
        if not metrics["probe_reliable"]:
            out["warning"] = (
                f"the ground-truth probe's test accuracy {metrics['probe_accuracy']:.3f} is below min_probe_accuracy="
                f"{self.options.min_probe_accuracy:g}: the subject model's first-letter probe is too weak for the "
                f"absorption numbers to mean much"
            )
        if not metrics["latents_reliable"]:
            sparse_f1 = metrics["mean_sparse_probe_f1"] or 0
            out["latent_warning"] = (
                f"the main latents detect their letters poorly (mean k-sparse probe F1 {sparse_f1:.3f} < "
                f"min_sparse_probe_f1={self.options.min_sparse_probe_f1:g}): this SAE has no first-letter latents for "
                f"absorption to be measured against, so an absorption of 0 says nothing"
            )
        return out


def word_units(
    words: LetterWords,
    data: LetterData,
    probe: GroundTruthProbe,
    results: dict[int, WordAbsorption],
    metrics: dict[str, float | None],
) -> Units:
    """Units = the test words: per word its absorption fraction and full absorption (None where it
    was not evaluated, which the means leave out) and whether the probe classifies it correctly."""
    n = len(words.test)
    values: dict[str, list[float | None]] = {
        "mean_absorption_fraction": [results[i].fraction if i in results else None for i in range(n)],
        "full_absorption_rate": [float(results[i].full) if i in results else None for i in range(n)],
        "probe_accuracy": (probe.predictions == data.y_test).double().tolist(),
    }
    return mean_units("word", list(words.test), {k: v for k, v in values.items() if metrics[k] is not None})


@saebench.hookimpl
def register_scorers(register):
    register(AbsorptionScorer)
