"""The ablation_sparsity scorer against hand-computed cases and an independent float64 loop over latents and positions.

Expected values are worked out by hand or computed here with numpy (and tests/reference.py's float64
SAE definitions), never with saebench code.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

import saebench
from reference import decode as ref_decode
from reference import encode as ref_encode
from saebench.plugins.scorers.ablation_sparsity import AblationSparsityScorer, effect_sparsity
from saebench.uncertainty import interval
from tiny import firing_sae

PAD, EOS, BOS = 0, 1, 2


# -- the measure on known vectors ------------------------------------------------------------------


def test_one_hot_effect_is_the_sparsest_value():
    d = np.zeros((2, 12))
    d[1, 7] = -3.0  # one logit at one of the two positions moves
    assert effect_sparsity(d) == pytest.approx(1 / 24, rel=1e-12)  # (3/3)² / (2·12)


def test_equal_magnitudes_everywhere_is_the_densest_value():
    d = np.tile([0.5, -0.5], (3, 6))  # every logit moves by ±0.5; the median of each row is 0
    assert effect_sparsity(d) == pytest.approx(1.0, rel=1e-12)


def test_the_median_of_each_position_is_subtracted():
    # the same shift of every logit changes no probability: a one-hot on top of it is still one-hot
    d = np.full((2, 12), 4.0)
    d[0, 3] = 10.0
    assert effect_sparsity(d) == pytest.approx(1 / 24, rel=1e-12)
    # a shift alone leaves nothing
    assert effect_sparsity(np.full((3, 5), -2.0)) is None
    assert effect_sparsity(np.zeros((1, 4))) is None


def test_median_of_an_even_vocabulary_is_the_mean_of_the_two_middle_values():
    # [0, 0, 1, 3]: median 0.5 -> [-.5, -.5, .5, 2.5]; L1 = 4, L2² = 7; (16 / 7) / 4 = 4/7
    assert effect_sparsity(torch.tensor([[0.0, 0.0, 1.0, 3.0]])) == pytest.approx(4 / 7, rel=1e-12)


# -- a tiny model behind the adapter interface ------------------------------------------------------


class ToyAdapter(saebench.ModelAdapter):
    """h = E[token] at ``layers.0``; then h + ReLU(h·W1)·W2 + (causal prefix mean of h)·M; logits = h·U.

    With W1, W2, M zero the logits at t depend only on the hook point at t (the hand-computed case).
    """

    name = "toy-test"

    def __init__(self, w):
        self.model_id = "toy"
        self.bos_token_id, self.eos_token_id, self.pad_token_id = BOS, EOS, PAD
        self.w = {k: np.asarray(v, dtype=np.float32) for k, v in w.items()}
        self.t = {k: torch.from_numpy(v) for k, v in self.w.items()}
        self.calls = 0

    def hookpoints(self):
        return ["layers.0"]

    def d_model(self, hookpoint):
        return self.w["E"].shape[1]

    def tokenize(self, text):
        return [3 + ord(c) % (self.w["E"].shape[0] - 3) for c in text]

    def special_mask(self, tokens):
        return (tokens == BOS) | (tokens == EOS) | (tokens == PAD)

    def capture(self, tokens, hookpoints):
        return {"layers.0": self.t["E"][tokens].clone()}

    def logits(self, tokens, replace=None):
        self.calls += 1
        h = self.t["E"][tokens]
        if replace and "layers.0" in replace:
            h = replace["layers.0"](h.clone())
        n = torch.arange(1, tokens.shape[1] + 1, dtype=torch.float32)[None, :, None]
        h = h + torch.relu(h @ self.t["W1"]) @ self.t["W2"] + (torch.cumsum(h, dim=1) / n) @ self.t["M"]
        return h @ self.t["U"]


def numpy_logits(w, tokens, h=None):
    w = {k: np.asarray(v, dtype=np.float64) for k, v in w.items()}
    h = w["E"][tokens] if h is None else h
    n = np.arange(1, tokens.shape[1] + 1)[None, :, None]
    h = h + np.maximum(h @ w["W1"], 0) @ w["W2"] + (np.cumsum(h, axis=1) / n) @ w["M"]
    return h @ w["U"]


def inputs_for(adapter, tokens, seed=0, token_contexts=True):
    """EvalInputs as the runner builds them: the cached activations of the non-special positions, in order."""
    keep = ~adapter.special_mask(tokens)
    x = adapter.capture(tokens, ["layers.0"])["layers.0"][keep]
    ctx = torch.nonzero(keep)[:, 0] if token_contexts else None
    return saebench.EvalInputs(
        hookpoint="layers.0",
        activations=lambda b: iter([x[i : i + b] for i in range(0, x.shape[0], b)]),
        tokens=tokens,
        adapter=adapter,
        seed=seed,
        token_contexts=ctx,
    )


def hand_model():
    """D = 3, V = 5, no mixing: logits at t = E[token_t]·U. Tokens 3..5 embed positively."""
    E = np.zeros((6, 3))
    E[3:] = [[1.0, 2.0, 0.5], [0.5, 1.0, 1.5], [2.0, 0.25, 1.0]]
    U = np.array([[2.0, 0, 0, 0, 0], [0, 0, 1.0, 0, 0], [0, 1.0, 0, 1.0, 0]])
    z = np.zeros
    w = {"E": E, "U": U, "W1": z((3, 4)), "W2": z((4, 3)), "M": z((3, 3))}
    # the vocabulary of the logits is 5 (ids 0..4); E's extra row only serves as an input token id
    return ToyAdapter(w)


def hand_sae():
    """Latent i = ReLU(x_i) for i < 3, decoded along e_i; latent 3 never fires (b_enc −1, no weights);
    b_dec is large, so splicing the reconstruction (instead of removing one latent's share) would move
    every logit everywhere."""
    W_enc = torch.zeros(3, 4)
    W_enc[:, :3] = torch.eye(3)
    W_dec = torch.zeros(4, 3)
    W_dec[:3] = torch.eye(3)
    w = {"W_enc": W_enc, "W_dec": W_dec, "b_enc": torch.tensor([0.0, 0.0, 0.0, -1.0]), "b_dec": torch.full((3,), 5.0)}
    return saebench.build_sae("relu", w, hook_name="layers.0")


HAND_TOKENS = torch.tensor([[BOS, 3, 4, 5, 3, 4, 5, 3], [BOS, 5, 4, 3, 5, 4, 3, 4]])


def test_hand_computed_case():
    # Ablating latent i at p (activation a = x_i > 0) changes only the logits at p, by −a·U[i]:
    #   latent 0: −a·[2, 0, 0, 0, 0]  median 0 -> (L1/L2)² = 1
    #   latent 1: −a·[0, 0, 1, 0, 0]  -> 1
    #   latent 2: −a·[0, 1, 0, 1, 0]  sorted (−a, −a, 0, 0, 0), median 0 -> (2a)² / (2a²) = 2
    # each over V·T' = 5·3 numbers (window 3, every window position a text token), whatever a is:
    # latents 0 and 1 give 1/15, latent 2 gives 2/15; latent 3 never fires.
    adapter = hand_model()
    scorer = AblationSparsityScorer(window=3, latent_ids=[0, 2, 3, 1], positions_per_latent=100)
    res = scorer.score(hand_sae(), inputs_for(adapter, HAND_TOKENS))
    per = {row[0]: row for row in res.details["per_latent"]}
    assert per[0][1] == pytest.approx(1 / 15, rel=1e-6)
    assert per[1][1] == pytest.approx(1 / 15, rel=1e-6)
    assert per[2][1] == pytest.approx(2 / 15, rel=1e-6)
    assert per[3][1:] == [None, 0, 0]  # no value, no ablation, no eligible firing position
    assert res.details["never_fired"] == [3]
    assert res.metrics["sparsity"] == pytest.approx((1 / 15 + 1 / 15 + 2 / 15) / 3, rel=1e-6)
    assert res.metrics["latents"] == 3
    # eligible positions: p + 3 <= 8 and not BOS, p = 1..5 in each context; latents 0..2 fire at all
    assert all(per[i][2] == per[i][3] == 10 for i in range(3))


def test_a_window_through_special_positions_measures_only_text_positions():
    adapter = hand_model()
    # eligible p + 4 <= 6: p = 1 (window 1, 2, EOS, BOS) and p = 2 (window 2, EOS, BOS, 5): T' = 2 both
    tokens = torch.tensor([[BOS, 3, 4, EOS, BOS, 5]])
    res = AblationSparsityScorer(window=4, latent_ids=[0]).score(hand_sae(), inputs_for(adapter, tokens))
    assert res.details["per_latent"] == [[0, pytest.approx(1 / 10, rel=1e-6), 2, 2]]  # 1 / (5·2), not 1 / (5·4)


def test_one_position_per_latent_gives_the_hand_values_whatever_the_draw():
    adapter = hand_model()
    tokens = torch.tensor([[BOS, 3, 3, 3, 3, 3, 3, 3]])
    sae = hand_sae()
    res = AblationSparsityScorer(window=3, latent_ids=[0, 2], positions_per_latent=1).score(
        sae, inputs_for(adapter, tokens)
    )
    assert res.metrics["ablations"] == 2 and res.metrics["sparsity"] == pytest.approx(0.1, rel=1e-6)
    res = AblationSparsityScorer(window=3, latent_ids=[0, 2], positions_per_latent=1, seed=5).score(
        sae, inputs_for(adapter, tokens)
    )
    assert res.metrics["sparsity"] == pytest.approx(0.1, rel=1e-6)


# -- an independent float64 loop over latents and positions ---------------------------------------

V, D, S, L = 12, 6, 16, 10


def mixing_model(seed=0):
    g = np.random.default_rng(seed)
    w = {
        "E": g.standard_normal((V, D)),
        "U": g.standard_normal((D, V)),
        "W1": g.standard_normal((D, 8)) / math.sqrt(D),
        "W2": g.standard_normal((8, D)) / math.sqrt(8),
        "M": g.standard_normal((D, D)) / math.sqrt(D),
    }
    return ToyAdapter(w)


def mixing_sae(seed=1):
    g = torch.Generator().manual_seed(seed)
    w = {
        "W_enc": torch.randn(D, S, generator=g),
        "W_dec": torch.randn(S, D, generator=g) * 0.5,
        "b_enc": torch.randn(S, generator=g) * 0.5 - 0.5,
        "b_dec": torch.randn(D, generator=g) * 0.1,
    }
    return saebench.build_sae("relu", w, hook_name="layers.0"), {k: v.numpy() for k, v in w.items()}


MIX_TOKENS = torch.tensor(
    [
        [BOS, 3, 7, 11, 4, 9, 5, 8, 6, 10],
        [BOS, 9, 4, EOS, BOS, 6, 3, 11, 7, 5],
        [BOS, 5, 8, 10, 3, 6, PAD, PAD, PAD, PAD],
        [BOS, 11, 10, 9, 8, 7, 6, 5, 4, 3],
    ]
)


def reference(w_model, w_sae, tokens, window):
    """{latent: [s of each ablation]} by a direct loop: every latent, every eligible firing position."""
    tokens = tokens.numpy()
    special = np.isin(tokens, [PAD, EOS, BOS])
    h = np.asarray(w_model["E"], dtype=np.float64)[tokens]
    clean = numpy_logits(w_model, tokens)
    out = {}
    for i in range(S):
        for c in range(tokens.shape[0]):
            for p in range(tokens.shape[1]):
                if special[c, p] or p + window > tokens.shape[1]:
                    continue
                f = ref_encode("relu", h[c, p][None], w_sae)[0]
                if f[i] <= 0:
                    continue
                g = f.copy()
                g[i] = 0.0
                hh = h.copy()
                hh[c, p] -= ref_decode(f[None], w_sae)[0] - ref_decode(g[None], w_sae)[0]
                new = numpy_logits(w_model, tokens, hh)
                ts = [t for t in range(p, p + window) if not special[c, t]]
                d = new[c, ts] - clean[c, ts]
                d = d - np.median(d, axis=1, keepdims=True)
                out.setdefault(i, []).append(np.abs(d).sum() ** 2 / (d**2).sum() / d.size)
    return out


@pytest.mark.parametrize("batch_rows", [4, 1])
def test_matches_a_float64_loop_over_latents_and_positions(batch_rows):
    adapter = mixing_model()
    sae, w = mixing_sae()
    window = 4
    want = reference(adapter.w, w, MIX_TOKENS, window)
    assert len(want) >= 8 and len({len(v) for v in want.values()}) > 1  # latents ablated unequally often
    res = AblationSparsityScorer(
        window=window, latent_ids=list(range(S)), positions_per_latent=1000, batch_rows=batch_rows
    ).score(sae, inputs_for(adapter, MIX_TOKENS))
    per = {row[0]: row for row in res.details["per_latent"]}
    for i in range(S):
        if i in want:
            assert per[i][1] == pytest.approx(np.mean(want[i]), rel=1e-4), i
            assert per[i][2] == per[i][3] == len(want[i])
        else:
            assert per[i][1:] == [None, 0, 0]
    means = [np.mean(v) for v in want.values()]
    pooled = [s for v in want.values() for s in v]
    assert res.metrics["sparsity"] == pytest.approx(np.mean(means), rel=1e-4)
    assert res.details["ablation_mean"] == pytest.approx(np.mean(pooled), rel=1e-4)
    assert res.metrics["latents"] == len(want) and res.metrics["ablations"] == len(pooled)
    assert res.details["std"] == pytest.approx(np.std(means, ddof=1), rel=1e-3)
    assert res.details["quantiles"]["p50"] == pytest.approx(np.median(means), rel=1e-4)
    assert res.details["vocab"] == V and res.details["no_effect"] == 0
    assert 0 < res.metrics["sparsity"] <= 1


def test_random_draws_sample_among_firing_latents_and_positions():
    adapter = mixing_model()
    sae, w = mixing_sae()
    want = reference(adapter.w, w, MIX_TOKENS, 4)
    res = AblationSparsityScorer(window=4, latents=3, positions_per_latent=2).score(sae, inputs_for(adapter, MIX_TOKENS))
    rows = res.details["per_latent"]
    assert len(rows) == 3 and all(r[0] in want for r in rows)
    assert res.details["latents_firing"] == len(want) and res.details["latents_drawn"] == 3
    for latent, value, n, eligible in rows:
        assert n == min(2, len(want[latent])) and eligible == len(want[latent])
        # each drawn ablation is one of the latent's: the mean lies within their range
        assert min(want[latent]) - 1e-6 <= value <= max(want[latent]) + 1e-6


def test_deterministic_under_the_seed():
    adapter = mixing_model()
    sae, _ = mixing_sae()
    inputs = inputs_for(adapter, MIX_TOKENS)

    def run(**opts):
        return AblationSparsityScorer(window=3, latents=4, positions_per_latent=2, **opts).score(sae, inputs)

    a, b = run(seed=1), run(seed=1)
    assert a.metrics == b.metrics and a.details == b.details
    others = [run(seed=s).details["per_latent"] for s in range(2, 8)]
    assert any(o != a.details["per_latent"] for o in others)
    # no seed option: the run's seed (inputs.seed)
    from_run = AblationSparsityScorer(window=3, latents=4, positions_per_latent=2).score(
        sae, inputs_for(adapter, MIX_TOKENS, seed=1)
    )
    assert from_run.details == a.details


def test_units_are_latents_and_give_the_metric_and_an_interval():
    adapter = mixing_model()
    sae, _ = mixing_sae()
    res = AblationSparsityScorer(window=3, latents=6).score(sae, inputs_for(adapter, MIX_TOKENS))
    units = res.units
    assert units is not None and units.unit == "latent"
    scored = [r[0] for r in res.details["per_latent"] if r[1] is not None]
    assert units.ids == scored and units.n == res.metrics["latents"] == 6
    assert units.value("sparsity") == pytest.approx(res.metrics["sparsity"], rel=1e-12)
    iv = interval(units, "sparsity", resamples=200)
    assert iv.low is not None and iv.low <= res.metrics["sparsity"] <= iv.high


def test_nothing_fires_gives_none_and_no_units():
    adapter = mixing_model()
    sae, w = mixing_sae()
    dead = saebench.build_sae("relu", {**{k: torch.from_numpy(v) for k, v in w.items()}, "b_enc": torch.full((S,), -1e3)})
    res = AblationSparsityScorer(window=3).score(dead, inputs_for(adapter, MIX_TOKENS))
    assert res.metrics == {"sparsity": None, "latents": 0, "ablations": 0}
    assert res.units is None and res.details["latents_firing"] == 0 and res.details["per_latent"] == []
    assert adapter.calls == 0  # no forward pass when there is nothing to ablate


def test_a_window_longer_than_the_contexts_leaves_nothing_eligible():
    adapter = mixing_model()
    sae, _ = mixing_sae()
    res = AblationSparsityScorer(window=L).score(sae, inputs_for(adapter, MIX_TOKENS))  # p >= 1 (BOS at 0)
    assert res.metrics["sparsity"] is None and res.details["latents_firing"] == 0


def test_contexts_option_searches_only_the_first_contexts():
    adapter = mixing_model()
    sae, w = mixing_sae()
    want = reference(adapter.w, w, MIX_TOKENS[:1], 4)
    res = AblationSparsityScorer(window=4, contexts=1, latent_ids=list(range(S)), positions_per_latent=100).score(
        sae, inputs_for(adapter, MIX_TOKENS)
    )
    assert res.details["contexts"] == 1
    assert {r[0]: r[2] for r in res.details["per_latent"] if r[2]} == {i: len(v) for i, v in want.items()}


def test_bad_inputs():
    sae, _ = mixing_sae()
    adapter = mixing_model()
    with pytest.raises(saebench.ConfigError, match="ablation_sparsity needs a model"):
        AblationSparsityScorer().score(
            sae, saebench.EvalInputs(hookpoint="layers.0", activations=lambda b: iter([]), tokens=MIX_TOKENS)
        )
    with pytest.raises(saebench.ConfigError, match="latent_ids"):
        AblationSparsityScorer(latent_ids=[S]).score(sae, inputs_for(adapter, MIX_TOKENS))
    for bad in ({"latents": 0}, {"window": "16"}, {"positions": 3}):
        with pytest.raises(saebench.ConfigError):
            AblationSparsityScorer(**bad)
    short = inputs_for(adapter, MIX_TOKENS)
    x = torch.zeros(5, D)
    short.activations = lambda b: iter([x])
    short.token_contexts = None
    with pytest.raises(saebench.ShapeError, match="cached activation rows"):
        AblationSparsityScorer(window=3).score(sae, short)


def test_declares_its_metric_and_needs_the_model():
    assert AblationSparsityScorer.needs_model and AblationSparsityScorer.family == "intrinsic"
    (metric,) = AblationSparsityScorer.headline
    assert metric.name == "sparsity" and metric.higher_is_better is False


def test_runs_on_the_tiny_hugging_face_model(tiny_llama):
    from saebench import plugin_manager

    adapter = plugin_manager.get_registry().get("model_adapter", "hf-causal-lm")(str(tiny_llama))
    g = torch.Generator().manual_seed(0)
    tokens = torch.randint(3, 259, (3, 24), generator=g)
    tokens[:, 0] = BOS
    keep = ~adapter.special_mask(tokens)
    x = adapter.capture(tokens, ["layers.1"])["layers.1"][keep]
    inputs = saebench.EvalInputs(
        hookpoint="layers.1",
        activations=lambda b: iter([x[i : i + b] for i in range(0, x.shape[0], b)]),
        tokens=tokens,
        adapter=adapter,
        token_contexts=torch.nonzero(keep)[:, 0],
    )
    res = AblationSparsityScorer(window=4, latents=5, positions_per_latent=2).score(firing_sae(), inputs)
    assert res.metrics["latents"] == 5 and res.metrics["ablations"] <= 10
    assert 1 / (4 * res.details["vocab"]) <= res.metrics["sparsity"] <= 1
    assert res.details["no_effect"] == 0 and res.details["zero_live_activation"] == 0
