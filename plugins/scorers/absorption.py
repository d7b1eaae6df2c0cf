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
"""

from __future__ import annotations

import math
import random
import re
import string
from dataclasses import dataclass
from typing import Sequence

import torch
from torch import Tensor

import saebench
from saebench.errors import ConfigError, ShapeError
from saebench.linear_probe import binary_f1, classification_metrics, fit_logistic
from saebench.metrics import Option

LETTERS = string.ascii_lowercase
_WORD = re.compile(r"(?<![A-Za-z0-9_])[a-z]+(?![A-Za-z0-9_])")


# -- words and prompts ------------------------------------------------------------------------------

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


def icl_line(word: str) -> str:
    return f" {word} has the first letter: {word[0].upper()}"


# -- absorption of one word -------------------------------------------------------------------------

@dataclass
class WordAbsorption:
    fraction: float
    full: bool
    absorber: int | None  # the non-main latent with the largest positive projection s_j
    absorber_projection: float
    main_projection: float
    probe_projection: float


def word_absorption(
    latents: Tensor,
    cos: Tensor,
    main: Sequence[int],
    probe_projection: float,
    *,
    absorber_cos_threshold: float = 0.1,
    max_absorbing_latents: int = 3,
    absorption_fraction_threshold: float = 0.4,
    full_absorber_cos_threshold: float = 0.025,
    full_absorption_threshold: float = 0.4,
    main_inactive_threshold: float = 1e-8,
) -> WordAbsorption:
    """Absorption fraction and full absorption of one word (see the module docstring).

    ``latents`` f [d_sae] and ``cos`` [d_sae] (cosine of each decoder row with the unit probe
    direction); ``main`` the letter's main latents; ``probe_projection`` x · p.
    """
    f = latents.to(torch.float64)
    cos = cos.to(torch.float64)
    s = f * cos
    act = float(probe_projection)
    main_idx = torch.as_tensor(list(main), dtype=torch.int64)
    is_main = torch.zeros(f.shape[0], dtype=torch.bool)
    is_main[main_idx] = True
    main_proj = float(s[main_idx].sum())

    candidates = (~is_main) & (cos >= absorber_cos_threshold) & (s > 0)
    cand_s = s[candidates]
    top = float(cand_s.topk(min(max_absorbing_latents, cand_s.numel())).values.sum()) if cand_s.numel() else 0.0
    if act <= 0 or main_proj >= act or top < absorption_fraction_threshold * act:
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
            bool((f[main_idx] < main_inactive_threshold).all())
            and float(cos[j]) >= full_absorber_cos_threshold
            and act > 0
            and absorber_s >= full_absorption_threshold * act
        )
    return WordAbsorption(fraction, full, absorber, absorber_s, main_proj, act)


# -- the scorer ---------------------------------------------------------------------------------------

class AbsorptionScorer(saebench.Scorer):
    """First-letter feature absorption: absorption fraction and full-absorption rate (SAEBench)."""

    name = "absorption"
    family = "probe"
    needs_model = True

    OPTIONS = (
        Option("max_word_tokens", int, 1, minimum=1, help="keep words whose ' word' is at most this many tokens"),
        Option("max_words", int, 2000, minimum=2, help="at most this many words (a seeded sample)"),
        Option("test_fraction", float, 0.2, minimum=0.0, help="fraction of the words held out (0 < f < 1)"),
        Option("icl_examples", int, 10, minimum=0, help="in-context example lines before the word"),
        Option("min_words_per_letter", int, 10, minimum=1, help="letters with fewer train words are skipped"),
        Option("probe_l2", float, 1e-2, minimum=0.0, help="L2 of the ground-truth probe (mean-CE objective, > 0)"),
        Option("sparse_probe_l2", float, 1e-2, minimum=0.0, help="L2 of the k-sparse probes (> 0)"),
        Option("max_k", int, 10, minimum=1, help="largest number of main latents per letter"),
        Option("f1_jump_threshold", float, 0.03, minimum=0.0, help="tau: grow k while test F1 improves by more"),
        Option("absorber_cos_threshold", float, 0.1, help="absorption fraction: min cos of an absorbing latent"),
        Option("max_absorbing_latents", int, 3, minimum=1, help="absorption fraction: absorbing latents summed"),
        Option("absorption_fraction_threshold", float, 0.4, minimum=0.0,
               help="absorption fraction: absorbers' projection / act_proj below this counts 0"),
        Option("full_absorber_cos_threshold", float, 0.025, help="full absorption: min cos of the absorber"),
        Option("full_absorption_threshold", float, 0.4, minimum=0.0,
               help="full absorption: min absorber projection / act_proj"),
        Option("main_inactive_threshold", float, 1e-8, minimum=0.0, help="full absorption: main latents below this"),
        Option("min_probe_accuracy", float, 0.6, minimum=0.0, help="probe accuracy below this: probe_reliable = 0"),
        Option("min_sparse_probe_f1", float, 0.3, minimum=0.0,
               help="main latents' mean k-sparse F1 below this: latents_reliable = 0"),
        Option("batch_prompts", int, 16, minimum=1, help="prompts per forward pass"),
        Option("encode_batch", int, 256, minimum=1, help="activations encoded by the SAE at once"),
        Option("max_examples", int, 10, minimum=0, help="absorbed words listed per letter in details"),
    )

    def __init__(self, **options):
        super().__init__(**options)
        self._memo: dict[tuple, Tensor] = {}
        where = f"scorer {self.name}"
        if not 0.0 < self.test_fraction < 1.0:
            raise ConfigError(f"option 'test_fraction' must be strictly between 0 and 1, got {self.test_fraction!r}", where)
        if self.min_probe_accuracy > 1.0:
            raise ConfigError(f"option 'min_probe_accuracy' must be <= 1, got {self.min_probe_accuracy!r}", where)
        for key in ("probe_l2", "sparse_probe_l2"):
            if not getattr(self, key) > 0:
                raise ConfigError(f"option {key!r} must be > 0 (the probes would not converge), got "
                                  f"{getattr(self, key)!r}", where)
        if not all(math.isfinite(v) for v in self.options.values() if isinstance(v, float)):
            raise ConfigError("options must be finite numbers", where)

    # -- activations ------------------------------------------------------------------------------
    def _activations(self, adapter: saebench.ModelAdapter, hookpoint: str, words: list[str],
                     train: list[str], seed: int) -> Tensor:
        """[len(words), d] float32: the hook point's activation at each word's last token in its prompt."""
        rng = random.Random(seed * 1_000_003 + 17)
        prompts: list[list[int]] = []
        bos = [adapter.bos_token_id] if adapter.bos_token_id is not None else []
        for word in words:
            ids = list(bos)
            if self.icl_examples:
                pool = [w for w in train if w != word]
                examples = rng.sample(pool, min(self.icl_examples, len(pool)))
                if examples:
                    ids += adapter.tokenize("\n".join(icl_line(e) for e in examples) + "\n")
            ids += adapter.tokenize(" " + word)
            prompts.append(ids)
        pad = next((i for i in (adapter.pad_token_id, adapter.eos_token_id) if i is not None), 0)
        order = sorted(range(len(prompts)), key=lambda i: len(prompts[i]))
        out: Tensor | None = None
        for start in range(0, len(order), self.batch_prompts):
            idx = order[start : start + self.batch_prompts]
            width = max(len(prompts[i]) for i in idx)
            tokens = torch.full((len(idx), width), pad, dtype=torch.int64)
            for r, i in enumerate(idx):
                tokens[r, : len(prompts[i])] = torch.tensor(prompts[i], dtype=torch.int64)
            acts = adapter.capture(tokens, [hookpoint])[hookpoint]
            if acts.ndim != 3 or tuple(acts.shape[:2]) != tuple(tokens.shape):
                raise ShapeError(f"capture gave {list(acts.shape)} for tokens {list(tokens.shape)}", hookpoint)
            last = torch.tensor([len(prompts[i]) - 1 for i in idx])
            rows = acts[torch.arange(len(idx)), last].to(torch.float32)
            if out is None:
                out = torch.empty(len(prompts), rows.shape[1], dtype=torch.float32)
            out[torch.tensor(idx)] = rows
        assert out is not None
        return out

    def _encoded(self, sae: saebench.SAE, x: Tensor):
        """(start, dense latents [≤ encode_batch, d_sae] float32 on the CPU) per batch of rows of ``x``."""
        for i in range(0, x.shape[0], self.encode_batch):
            yield i, sae.encode(x[i : i + self.encode_batch].to(sae.W_dec.dtype)).float().cpu()

    # -- scoring ----------------------------------------------------------------------------------
    @torch.no_grad()
    def score(self, sae: saebench.SAE, inputs: saebench.EvalInputs) -> saebench.ScoreResult:
        where = f"scorer {self.name}"
        adapter = inputs.adapter
        if adapter is None:
            raise ConfigError("absorption needs a model (inputs.adapter is None): list the model in the matrix", where)
        seed = int(inputs.seed)
        words = select_words(adapter, self.max_word_tokens, self.max_words, seed)
        train_all, test_all = split_words(words, self.test_fraction, seed)
        counts = {c: sum(1 for w in train_all if w[0] == c) for c in LETTERS}
        kept = [c for c in LETTERS if counts[c] >= self.min_words_per_letter]
        if len(kept) < 2:
            raise ConfigError(
                f"{len(words)} words ({len(train_all)} train) leave {len(kept)} letter(s) with at least "
                f"min_words_per_letter={self.min_words_per_letter} train words; at least 2 are needed (raise "
                f"max_word_tokens or max_words, or lower min_words_per_letter)", where)
        cls = {c: i for i, c in enumerate(kept)}
        train = [w for w in train_all if w[0] in cls]
        test = [w for w in test_all if w[0] in cls]
        if not test:
            raise ConfigError(f"no test word among {len(words)} words: raise max_words or test_fraction", where)
        if sae.cfg.d_in != adapter.d_model(inputs.hookpoint):
            raise ShapeError(f"the SAE expects d_in={sae.cfg.d_in} but {inputs.hookpoint} has width "
                             f"{adapter.d_model(inputs.hookpoint)}", inputs.hookpoint)

        # the prompts' activations depend on the model, not the SAE: one forward pass serves every SAE cell
        key = (getattr(adapter, "model_id", id(adapter)), inputs.hookpoint, tuple(train), tuple(test), seed)
        if key not in self._memo:
            self._memo.clear()
            self._memo[key] = self._activations(adapter, inputs.hookpoint, train + test, train, seed)
        acts = self._memo[key].to(torch.float64)
        x_train, x_test = acts[: len(train)], acts[len(train):]
        y_train = torch.tensor([cls[w[0]] for w in train])
        y_test = torch.tensor([cls[w[0]] for w in test])

        # ground-truth probe
        probe = fit_logistic(x_train, y_train, len(kept), l2=self.probe_l2, dtype=torch.float64, max_iter=1000)
        pred_test = probe.logits(x_test).argmax(1)
        probe_accuracy = float((pred_test == y_test).double().mean())
        probe_f1 = classification_metrics(pred_test, y_test, len(kept))["f1"]
        directions = probe.weight / probe.weight.norm(dim=1, keepdim=True).clamp_min(1e-300)  # [L, d]

        # decoder cosines with each letter's probe direction, and each test word's probe projection
        dec = sae.W_dec.detach().to(torch.float32)
        cos_all = ((dec @ directions.to(dec.device, torch.float32).T)
                   / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)).T.to("cpu", torch.float64)  # [L, d_sae]
        proj_test = (x_test * directions[y_test]).sum(1)

        # rank latents per letter by class-mean difference on the train words (streamed: the SAE may be wide)
        n_letters = len(kept)
        sums = torch.zeros(n_letters, sae.cfg.d_sae, dtype=torch.float64)
        for start, f in self._encoded(sae, x_train):
            sums.index_add_(0, y_train[start : start + f.shape[0]], f.to(torch.float64))
        n_in = torch.bincount(y_train, minlength=n_letters).to(torch.float64)[:, None]
        diff = sums / n_in - (sums.sum(0) - sums) / (len(train) - n_in)
        ranked = [torch.argsort(-diff[li], stable=True)[: self.max_k].tolist() for li in range(n_letters)]
        del sums, diff
        cand = sorted({j for r in ranked for j in r})
        col = {j: i for i, j in enumerate(cand)}
        cand_t = torch.tensor(cand, dtype=torch.int64)
        g_train = torch.cat([f[:, cand_t] for _, f in self._encoded(sae, x_train)])
        g_test = torch.cat([f[:, cand_t] for _, f in self._encoded(sae, x_test)])

        # main latents per letter: k-sparse probing
        mains: list[list[int]] = []
        f1s: list[list[float | None]] = []
        for li in range(n_letters):
            pos_train, pos_test = y_train == li, y_test == li
            f1_by_k: list[float | None] = []
            k = 1
            for kk in range(1, len(ranked[li]) + 1):
                cols = [col[j] for j in ranked[li][:kk]]
                # two softmax rows at 2·l2 are the binary probe at l2
                sp = fit_logistic(g_train[:, cols], pos_train.long(), 2, l2=2 * self.sparse_probe_l2,
                                  dtype=torch.float64, max_iter=1000)
                f1_by_k.append(binary_f1(sp.predict(g_test[:, cols]) == 1, pos_test))
                if kk == 1:
                    continue
                prev, cur = f1_by_k[-2], f1_by_k[-1]
                if prev is not None and cur is not None and cur - prev > self.f1_jump_threshold:
                    k = kk
                else:
                    break
            mains.append(ranked[li][:k])
            f1s.append(f1_by_k)

        # absorption per correctly probed test word
        thresholds = dict(
            absorber_cos_threshold=self.absorber_cos_threshold, max_absorbing_latents=self.max_absorbing_latents,
            absorption_fraction_threshold=self.absorption_fraction_threshold,
            full_absorber_cos_threshold=self.full_absorber_cos_threshold,
            full_absorption_threshold=self.full_absorption_threshold,
            main_inactive_threshold=self.main_inactive_threshold,
        )
        correct = (pred_test == y_test).tolist()
        results: dict[int, WordAbsorption] = {}
        for start, f in self._encoded(sae, x_test):
            for r in range(f.shape[0]):
                i = start + r
                if correct[i]:
                    li = int(y_test[i])
                    results[i] = word_absorption(f[r], cos_all[li], mains[li], float(proj_test[i]), **thresholds)

        per_letter: dict[str, dict] = {}
        fractions: list[float] = []
        fulls: list[float] = []
        sparse_f1s: list[float] = []
        for c, li in cls.items():
            k = len(mains[li])
            if f1s[li][k - 1] is not None:
                sparse_f1s.append(f1s[li][k - 1])
            words_here = [i for i in sorted(results) if int(y_test[i]) == li]
            letter_fracs = [results[i].fraction for i in words_here]
            letter_full = [float(results[i].full) for i in words_here]
            examples = [
                {"word": test[i], "absorbing_latent": r.absorber, "fraction": r.fraction, "full": r.full,
                 "absorber_projection": r.absorber_projection, "main_projection": r.main_projection,
                 "probe_projection": r.probe_projection}
                for i in words_here if (r := results[i]).full or r.fraction > 0
            ][: self.max_examples]
            fractions += letter_fracs
            fulls += letter_full
            per_letter[c] = {
                "main_latents": mains[li],
                "sparse_probe_f1": f1s[li][k - 1],
                "f1_by_k": f1s[li],
                "train_words": int((y_train == li).sum()),
                "test_words": int((y_test == li).sum()),
                "evaluated_words": len(words_here),
                "absorption_fraction": _mean(letter_fracs),
                "full_absorption_rate": _mean(letter_full),
                "absorbed_examples": examples,
            }
        main_counts = [float(len(m)) for m in mains]

        reliable = probe_accuracy >= self.min_probe_accuracy
        metrics: dict[str, float | None] = {
            "mean_absorption_fraction": _mean(fractions),
            "full_absorption_rate": _mean(fulls),
            "probe_accuracy": probe_accuracy,
            "probe_f1": probe_f1,
            "probe_reliable": 1.0 if reliable else 0.0,
            "n_words": float(len(fractions)),
            "letters": float(sum(1 for v in per_letter.values() if v["evaluated_words"])),
            "mean_main_latents": _mean(main_counts),
            "mean_sparse_probe_f1": _mean(sparse_f1s),
        }
        sparse_f1 = metrics["mean_sparse_probe_f1"]
        metrics["latents_reliable"] = 1.0 if sparse_f1 is not None and sparse_f1 >= self.min_sparse_probe_f1 else 0.0
        details: dict = {
            "words": {"vocabulary": len(words), "train": len(train), "test": len(test)},
            "letters_skipped": [c for c in LETTERS if c not in cls],
            "prompt_format": f"{self.icl_examples} example lines ' {{example}} has the first letter: {{E}}' "
                             "joined by newlines, a newline, then ' {word}'; read at the word's last token",
            "letters": per_letter,
        }
        if not reliable:
            details["warning"] = (
                f"the ground-truth probe's test accuracy {probe_accuracy:.3f} is below min_probe_accuracy="
                f"{self.min_probe_accuracy:g}: the subject model's first-letter probe is too weak for the absorption "
                f"numbers to mean much")
        if not metrics["latents_reliable"]:
            details["latent_warning"] = (
                f"the main latents detect their letters poorly (mean k-sparse probe F1 {sparse_f1 or 0:.3f} < "
                f"min_sparse_probe_f1={self.min_sparse_probe_f1:g}): this SAE has no first-letter latents for "
                f"absorption to be measured against, so an absorption of 0 says nothing")
        return saebench.ScoreResult(metrics=metrics, details=details)


def _mean(values: Sequence[float]) -> float | None:
    return sum(values) / len(values) if values else None


@saebench.hookimpl
def register_scorers(register):
    register(AbsorptionScorer)
