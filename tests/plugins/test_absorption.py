"""The first-letter absorption scorer: the per-word rule by hand, the probe against scikit-learn, a planted
model and SAE where absorption is known, and the tiny Llama end to end."""

from __future__ import annotations

import json
import math
import re
import time
import zlib
from pathlib import Path

import pytest
import torch
import yaml

import saebench
from reference import random_weights
from saebench import plugin_manager
from saebench.errors import ConfigError
from saebench.plugins.scorers.absorption import (
    LETTERS,
    AbsorptionScorer,
    Thresholds,
    select_words,
    split_words,
    vocabulary_words,
    word_absorption,
)

ROOT = Path(__file__).resolve().parents[2]


def test_registered_with_the_catalogue_description():
    catalogue = yaml.safe_load((ROOT / "registry.yaml").read_text())["plugins"]
    entry = next(p for p in catalogue if p["kind"] == "scorer" and p["name"] == "absorption")
    assert entry["module"] == "saebench.plugins.scorers.absorption"
    assert plugin_manager.describe(AbsorptionScorer) == entry["description"]
    assert plugin_manager.get("scorer", "absorption") is AbsorptionScorer
    assert AbsorptionScorer.needs_model and AbsorptionScorer.family == "probe"


# -- the per-word rule ---------------------------------------------------------------------------------

def t(*values):
    return torch.tensor(values, dtype=torch.float64)


@pytest.mark.parametrize(
    "f, cos, act, kw, fraction, full, absorber",
    [
        # main silent, latent 1 carries s = 2·0.5 = 1.0 ≥ 0.4·1.5: fraction 1 (main_proj ≤ 0) and full absorption
        (t(0, 2, 0), t(0.9, 0.5, 0), 1.5, {}, 1.0, True, 1),
        # main_proj = 1.8 ≥ act_proj 1.5: 0, and main active: not full
        (t(2, 1, 0), t(0.9, 0.5, 0), 1.5, {}, 0.0, False, 1),
        # top = 0.25 < 0.4·2: 0
        (t(1, 0.5, 0), t(0.9, 0.5, 0), 2.0, {}, 0.0, False, 1),
        # partial: s = (0.5, 1.0, 0.3), main 0.5, top 1.3, a = min(1.3, 1.5) = 1.3: 1.3 / 1.8
        (t(1, 2, 1), t(0.5, 0.5, 0.3), 2.0, {}, 1.3 / 1.8, False, 1),
        # a capped by act_proj − main_proj: s = (0.5, 2.0), a = min(2.0, 1.5) = 1.5: 1.5 / 2.0
        (t(1, 4, 0), t(0.5, 0.5, 0), 2.0, {}, 0.75, False, 1),
        # only the top 3 absorbers count (0.6 < 0.8), latent 5 has cos 0.05 < 0.1 and is no absorber
        (t(0.2, 1, 1, 1, 1, 5), t(1, 0.2, 0.2, 0.2, 0.2, 0.05), 2.0, {}, 0.0, False, 5),
        # ... with 4 absorbers: top 0.8 ≥ 0.8, a = min(0.8, 1.8): 0.8 / 1.0
        (t(0.2, 1, 1, 1, 1, 5), t(1, 0.2, 0.2, 0.2, 0.2, 0.05), 2.0, {"max_absorbing_latents": 4}, 0.8, False, 5),
        # absorber's cos 0.02 < 0.025: not full (and < 0.1: no partial absorber either)
        (t(0, 50), t(0.9, 0.02), 1.0, {}, 0.0, False, 1),
        # absorber's projection 0.3 < 0.4·act_proj: not full, and fraction 0
        (t(0, 1), t(0.9, 0.3), 1.0, {}, 0.0, False, 1),
        # the probe does not see the feature (act_proj ≤ 0): nothing is absorbed
        (t(0, 2), t(0.9, 0.5), -1.0, {}, 0.0, False, 1),
        # main_proj < 0 (main latent with negative cos): fraction 1, yet not full (the main latent is active)
        (t(1, 2), t(-0.2, 0.5), 1.5, {}, 1.0, False, 1),
        # a main latent barely above main_inactive_threshold blocks full absorption; raising the threshold allows
        # it (main_proj = 9e-7 > 0, so the fraction is a / (a + main_proj) with a = 1)
        (t(1e-6, 2), t(0.9, 0.5), 1.5, {}, 1 / (1 + 9e-7), False, 1),
        (t(1e-6, 2), t(0.9, 0.5), 1.5, {"main_inactive_threshold": 1e-5}, 1 / (1 + 9e-7), True, 1),
    ],
)
def test_word_absorption_by_hand(f, cos, act, kw, fraction, full, absorber):
    r = word_absorption(f, cos, [0], act, Thresholds(**kw))
    assert r.fraction == pytest.approx(fraction, abs=1e-12)
    assert r.full is full
    assert r.absorber == absorber
    assert r.probe_projection == act


def test_word_absorption_with_several_main_latents():
    # main = {0, 1}: main_proj = 0.5 + 0.25 = 0.75; latent 2: s = 1.0 ≥ 0.8; a = min(1.0, 1.25) = 1.0: 1 / 1.75
    r = word_absorption(t(1, 0.5, 2), t(0.5, 0.5, 0.5), [0, 1], 2.0)
    assert r.main_projection == pytest.approx(0.75)
    assert r.fraction == pytest.approx(1.0 / 1.75)
    assert r.absorber == 2 and not r.full


# -- words --------------------------------------------------------------------------------------------

def test_vocabulary_and_split():
    words = vocabulary_words()
    assert len(words) > 1000
    assert words == sorted(set(words))
    assert all(w.isascii() and w.isalpha() and w.islower() and len(w) >= 3 for w in words)
    train, test = split_words(words, 0.2, seed=5)
    assert not set(train) & set(test) and sorted(train + test) == words
    assert len(test) == round(0.2 * len(words))
    assert split_words(words, 0.2, seed=5) == (train, test) and split_words(words, 0.2, seed=6) != (train, test)


# -- planted absorption ------------------------------------------------------------------------------

D_MODEL = 64
SCALE = 3.0


class PlantedAdapter(saebench.ModelAdapter):
    """A word-level 'model': the activation at a lowercase word's token is SCALE · (its first letter's
    direction) + noise, plus 2 · (the word's own direction) for the absorbed words; 0 elsewhere."""

    name = "planted"

    def __init__(self, letter_dirs: torch.Tensor, seed: int = 0):
        self.model_id = "planted"
        self.bos_token_id, self.eos_token_id, self.pad_token_id = 1, None, 0
        self.letter_dirs = letter_dirs
        self.absorbed: dict[str, torch.Tensor] = {}
        self.ids: dict[str, int] = {"<pad>": 0, "<bos>": 1}
        self.strings = ["<pad>", "<bos>"]
        self.seed = seed
        self.calls = 0

    def hookpoints(self):
        return ["layers.0"]

    def d_model(self, hookpoint):
        return D_MODEL

    def tokenize(self, text):
        out = []
        for piece in re.findall(r" ?[A-Za-z]+|\n| ?[^A-Za-z\s]| +", text):
            if piece not in self.ids:
                self.ids[piece] = len(self.strings)
                self.strings.append(piece)
            out.append(self.ids[piece])
        assert "".join(self.strings[i] for i in out) == text
        return out

    def special_mask(self, tokens):
        return torch.isin(tokens, torch.tensor([0, 1]))

    def vector(self, word: str) -> torch.Tensor:
        g = torch.Generator().manual_seed(zlib.crc32(word.encode()) + self.seed)
        v = SCALE * self.letter_dirs[LETTERS.index(word[0])] + 0.05 * torch.randn(D_MODEL, generator=g)
        if word in self.absorbed:
            v = v + 2.0 * self.absorbed[word]
        return v

    def capture(self, tokens, hookpoints):
        self.calls += 1
        out = torch.zeros(*tokens.shape, D_MODEL)
        for b in range(tokens.shape[0]):
            for p in range(tokens.shape[1]):
                word = self.strings[int(tokens[b, p])].strip()
                if word.isalpha() and word.islower():
                    out[b, p] = self.vector(word)
        return {hp: out.clone() for hp in hookpoints}

    def logits(self, tokens, replace=None):  # pragma: no cover - the absorption scorer never asks
        raise AssertionError("absorption must not need logits")


def planted_sae(letter_dirs, absorbed_dirs: list[torch.Tensor], absorb: bool):
    """Latent i < 26: letter i's main latent (encoder = decoder = its direction, bias −1.5). Then one
    token-aligned absorbing latent per absorbed word (encoder 2·e_w, bias −1; decoder (d_s + e_w)/√2), the
    's' main latent suppressed on those words; then 4 dead latents. ``absorb=False``: the control, where
    the absorbing latents are dead and 's' is not suppressed."""
    n_abs = len(absorbed_dirs)
    d_sae = 26 + n_abs + 4
    g = torch.Generator().manual_seed(7)
    w_enc = torch.zeros(D_MODEL, d_sae)
    w_dec = torch.nn.functional.normalize(torch.randn(d_sae, D_MODEL, generator=g), dim=1)
    b_enc = torch.full((d_sae,), -100.0)
    s = LETTERS.index("s")
    for i in range(26):
        w_enc[:, i] = letter_dirs[i]
        w_dec[i] = letter_dirs[i]
        b_enc[i] = -1.5
    for j, e in enumerate(absorbed_dirs):
        w_dec[26 + j] = (letter_dirs[s] + e) / math.sqrt(2)
        if absorb:
            w_enc[:, 26 + j] = 2.0 * e
            b_enc[26 + j] = -1.0
            w_enc[:, s] -= 3.0 * e
    weights = {"W_enc": w_enc, "W_dec": w_dec, "b_enc": b_enc, "b_dec": torch.zeros(D_MODEL)}
    return saebench.build_sae("relu", weights)


@pytest.fixture(scope="module")
def planted():
    g = torch.Generator().manual_seed(11)
    n_abs = 6
    q, _ = torch.linalg.qr(torch.randn(D_MODEL, 26 + n_abs, generator=g))
    letter_dirs, extra = q.T[:26].contiguous(), q.T[26:].contiguous()
    adapter = PlantedAdapter(letter_dirs)
    opts = dict(max_words=800, icl_examples=3, batch_prompts=64)
    words = select_words(adapter, 1, opts["max_words"], seed=0)
    train, test = split_words(words, 0.2, seed=0)
    s_test = [w for w in test if w[0] == "s"]
    s_train = [w for w in train if w[0] == "s"]
    absorbed_test = s_test[1:8:2][:4]  # 4 test words and 2 train words
    absorbed = absorbed_test + s_train[3:5]
    assert len(absorbed_test) == 4 and len(absorbed) == 6
    adapter.absorbed = {w: extra[j] for j, w in enumerate(absorbed)}
    latent_of = {w: 26 + j for j, w in enumerate(absorbed)}
    inputs = saebench.EvalInputs(hookpoint="layers.0", activations=lambda n: iter(()),
                                 tokens=torch.zeros(0, 0, dtype=torch.int64), adapter=adapter, seed=0)
    scorer = AbsorptionScorer(**opts)
    results = {}
    for absorb in (True, False):
        sae = planted_sae(letter_dirs, [extra[j] for j in range(n_abs)], absorb)
        results[absorb] = scorer.score(sae, inputs)
    return results, absorbed_test, latent_of, words, adapter, inputs, opts


def test_planted_main_latents_and_full_absorption(planted):
    results, absorbed_test, latent_of, words, *_ = planted
    r = results[True]
    m, d = r.metrics, r.details
    json.dumps(r.model_dump())  # storable
    assert m["probe_accuracy"] >= 0.97 and m["probe_reliable"] == 1.0 and "warning" not in d
    assert d["words"]["vocabulary"] == len(words) == 800
    kept = [c for c in LETTERS if c not in d["letters_skipped"]]
    assert len(kept) >= 15 and "s" in kept
    for c in kept:  # the k-sparse probe finds each letter's own latent, and only it
        assert d["letters"][c]["main_latents"] == [LETTERS.index(c)], c
    assert m["mean_main_latents"] == 1.0
    s = d["letters"]["s"]
    flagged = {e["word"]: e for e in s["absorbed_examples"]}
    assert set(flagged) == set(absorbed_test)
    for w, e in flagged.items():
        assert e["full"] and e["fraction"] == 1.0 and e["absorbing_latent"] == latent_of[w]
    # nothing else is absorbed anywhere
    assert all(not d["letters"][c]["absorbed_examples"] for c in kept if c != "s")
    n = m["n_words"]
    assert n >= 100
    assert m["full_absorption_rate"] == pytest.approx(4 / n)
    assert m["mean_absorption_fraction"] == pytest.approx(4 / n)
    assert s["full_absorption_rate"] == pytest.approx(4 / s["evaluated_words"])
    assert m["letters"] == len(kept)


def test_planted_control_without_absorption(planted):
    results, *_ = planted
    m, d = results[False].metrics, results[False].details
    assert m["probe_reliable"] == 1.0 and m["latents_reliable"] == 1.0 and "latent_warning" not in d
    assert m["mean_absorption_fraction"] < 0.01 and m["full_absorption_rate"] == 0.0
    assert d["letters"]["s"]["main_latents"] == [LETTERS.index("s")]
    assert not d["letters"]["s"]["absorbed_examples"]
    # the absorbed words' activations were the same in both runs: only the SAE differs
    assert m["n_words"] == results[True].metrics["n_words"]


# -- the tiny Llama end to end -------------------------------------------------------------------------

def test_tiny_llama_end_to_end(tiny_llama):
    from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter

    adapter = HFCausalLMAdapter(str(tiny_llama))
    sae = saebench.build_sae("relu", random_weights(32, 64, arch="relu", seed=1))
    inputs = saebench.EvalInputs(hookpoint="layers.1", activations=lambda n: iter(()),
                                 tokens=torch.zeros(0, 0, dtype=torch.int64), adapter=adapter, seed=0)
    scorer = AbsorptionScorer(max_word_tokens=6, max_words=150, icl_examples=2, min_words_per_letter=3, max_k=3,
                              batch_prompts=32)
    start = time.perf_counter()
    result = scorer.score(sae, inputs)
    elapsed = time.perf_counter() - start
    m, d = result.metrics, result.details
    print(f"tiny-llama absorption: {elapsed:.1f}s, {m}")
    json.dumps(result.model_dump())
    assert d["words"]["vocabulary"] == 150  # byte-level: ' word' is len(word) + 1 tokens, words of 3..5 letters
    for key in ("mean_absorption_fraction", "full_absorption_rate", "probe_accuracy", "probe_f1",
                "mean_sparse_probe_f1"):
        assert m[key] is not None and 0.0 <= m[key] <= 1.0, key
    assert 1.0 <= m["mean_main_latents"] <= 3.0
    assert 0 < m["letters"] <= 26 and m["n_words"] >= m["letters"]
    assert m["n_words"] == sum(v["evaluated_words"] for v in d["letters"].values())
    # a random 2-layer model does not know first letters: the probe is weak and the result says so
    assert m["probe_accuracy"] < 0.6
    assert m["probe_reliable"] == 0.0 and "too weak" in d["warning"]
    if m["latents_reliable"] == 0.0:  # a random SAE has no first-letter latents
        assert "no first-letter latents" in d["latent_warning"]
    assert scorer.score(sae, inputs).metrics == m  # deterministic


def test_needs_an_adapter():
    sae = saebench.build_sae("relu", random_weights(8, 4, arch="relu"))
    inputs = saebench.EvalInputs(hookpoint="layers.0", activations=lambda n: iter(()),
                                 tokens=torch.zeros(0, 0, dtype=torch.int64))
    with pytest.raises(ConfigError, match="needs a model"):
        AbsorptionScorer().score(sae, inputs)


@pytest.mark.parametrize(
    "options",
    [
        {"nope": 1},
        {"max_k": 0},
        {"max_k": 2.5},
        {"max_word_tokens": True},
        {"test_fraction": 0.0},
        {"test_fraction": 1.0},
        {"probe_l2": 0.0},
        {"sparse_probe_l2": -1.0},
        {"min_probe_accuracy": 1.5},
        {"tau": 0.03},
        {"f1_jump_threshold": float("nan")},
        {"max_words": None},
    ],
)
def test_bad_options_raise_config_error(options):
    with pytest.raises(ConfigError):
        AbsorptionScorer(**options)


def test_good_options_are_accepted():
    s = AbsorptionScorer(max_word_tokens=3, test_fraction=0.3, f1_jump_threshold=0, min_probe_accuracy=1)
    assert s.options.max_word_tokens == 3 and s.options.f1_jump_threshold == 0.0 and s.options.min_probe_accuracy == 1.0


def test_an_sae_without_letter_latents_is_flagged(planted):
    """Main latents that do not detect their letters make absorption meaningless: say so."""
    *_, adapter, inputs, opts = planted
    g = torch.Generator().manual_seed(5)
    d_in = adapter.d_model(inputs.hookpoint)
    weights = {"W_enc": torch.randn(d_in, 64, generator=g), "W_dec": torch.randn(64, d_in, generator=g),
               "b_enc": torch.full((64,), -50.0), "b_dec": torch.zeros(d_in)}  # nothing ever fires
    sae = saebench.build_sae("relu", weights, hook_name=inputs.hookpoint)
    result = AbsorptionScorer(**opts).score(sae, inputs)
    assert result.metrics["latents_reliable"] == 0.0 and "no first-letter latents" in result.details["latent_warning"]


# -- per-unit statistics (intervals) -------------------------------------------------------------------

def test_units_are_the_test_words_and_recompute_the_metrics(planted):
    import numpy as np

    results, absorbed_test, _, words, *_ = planted
    r = results[True]
    u, m, d = r.units, r.metrics, r.details
    assert u.unit == "word" and set(u.metrics) == {"mean_absorption_fraction", "full_absorption_rate", "probe_accuracy"}
    for name in u.metrics:
        assert u.value(name) == pytest.approx(m[name], abs=1e-9), name
    kept = [c for c in LETTERS if c not in d["letters_skipped"]]
    assert u.ids == [w for w in split_words(words, 0.2, seed=0)[1] if w[0] in kept]  # every test word, by name
    # by hand: the evaluated words are the units with a denominator; the absorbed ones carry 1, the rest 0
    n = np.array(u.columns["mean_absorption_fraction:n"])
    frac = np.array(u.columns["mean_absorption_fraction:sum"])
    full = np.array(u.columns["full_absorption_rate:sum"])
    assert n.sum() == m["n_words"] == sum(v["evaluated_words"] for v in d["letters"].values())
    assert {w for w, f in zip(u.ids, full) if f} == {w for w, f in zip(u.ids, frac) if f} == set(absorbed_test)
    per_letter = [(v["absorption_fraction"], v["evaluated_words"]) for v in d["letters"].values() if v["evaluated_words"]]
    pooled = sum(f * k for f, k in per_letter) / sum(k for _, k in per_letter)
    assert frac.sum() / n.sum() == pytest.approx(pooled, abs=1e-12) == pytest.approx(m["mean_absorption_fraction"])
    correct = np.array(u.columns["probe_accuracy:sum"])
    assert set(correct) <= {0.0, 1.0} and (n <= correct).all()  # only correctly probed words are evaluated


def test_word_ids_pair_across_saes_and_intervals_bracket_the_point(planted):
    from saebench.uncertainty import compare, interval

    results, *_ = planted
    a, b = results[True], results[False]
    assert a.units.ids == b.units.ids
    for name in ("mean_absorption_fraction", "full_absorption_rate"):
        ci = interval(a.units, name, resamples=300)
        assert ci.low <= a.metrics[name] <= ci.high and ci.low < ci.high and ci.low >= 0, name
    c = compare(a.units, b.units, "mean_absorption_fraction", resamples=300)
    assert c.paired and c.diff == pytest.approx(
        a.metrics["mean_absorption_fraction"] - b.metrics["mean_absorption_fraction"], abs=1e-9)
    assert c.diff > 0 and c.low >= 0 and c.high > c.low  # four fully absorbed words against none
