"""The sparsity, reconstruction and downstream scorers against independent float64 computations.

Every expected value is computed here with numpy (and tests/reference.py's float64 SAE
definitions), never with saebench code; small cases are worked out by hand.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

import saebench
from reference import decode as ref_decode
from reference import encode as ref_encode
from reference import random_weights
from saebench import plugin_manager
from saebench.plugins.scorers.downstream import DownstreamScorer
from saebench.plugins.scorers.reconstruction import ReconstructionScorer
from saebench.plugins.scorers.sparsity import SparsityScorer

ROOT = Path(__file__).resolve().parents[2]
SCORERS = {"sparsity": SparsityScorer, "reconstruction": ReconstructionScorer, "downstream": DownstreamScorer}
NO_TOKENS = torch.zeros(0, 0, dtype=torch.long)


def inputs_from(x, hookpoint="layers.0", tokens=NO_TOKENS, adapter=None):
    """EvalInputs whose activations() yields ``x`` in batches of the requested size."""
    x = torch.as_tensor(np.asarray(x), dtype=torch.float32)

    def activations(batch_tokens):
        return iter([x[i : i + batch_tokens] for i in range(0, x.shape[0], batch_tokens)])

    return saebench.EvalInputs(hookpoint=hookpoint, activations=activations, tokens=tokens, adapter=adapter)


def eye_sae(arch="relu", d=2, **cfg):
    """W_enc = W_dec = I, zero biases: latent i is ReLU(x_i)."""
    w = {"W_enc": torch.eye(d), "W_dec": torch.eye(d), "b_enc": torch.zeros(d), "b_dec": torch.zeros(d)}
    return saebench.build_sae(arch, w, **cfg)


# -- independent references ---------------------------------------------------------------------


def ref_sparsity(f):
    f = np.asarray(f, dtype=np.float64)
    n = f.shape[0]
    counts = (f != 0).sum(axis=0)
    return {
        "l0": float((f != 0).sum(axis=1).mean()),
        "dead_fraction": float(np.mean(counts == 0)),
        "dense_fraction": float(np.mean(counts / n > 0.1)),
        "dense_fraction_1pct": float(np.mean(counts / n > 0.01)),
        "tokens": n,
    }, counts


def ref_reconstruction(x, x_hat):
    x, x_hat = np.asarray(x, dtype=np.float64), np.asarray(x_hat, dtype=np.float64)
    n, d = x.shape
    sse = np.sum((x - x_hat) ** 2)
    tv = np.sum((x - x.mean(axis=0)) ** 2)
    nx, nh = np.linalg.norm(x, axis=1), np.linalg.norm(x_hat, axis=1)
    ok = (nx > 0) & (nh > 0)
    dot = np.sum(x * x_hat, axis=1)
    mean_sq = np.mean(nx**2)
    return {
        "explained_variance": 1 - sse / tv,
        "fvu": sse / tv,
        "mse": np.mean((x - x_hat) ** 2),
        "cosine": float(np.mean(dot[ok] / (nx[ok] * nh[ok]))),
        "l2_ratio": float(np.mean(nh[nx > 0] / nx[nx > 0])),
        "relative_reconstruction_bias": np.sum(nh**2) / np.sum(dot),
        "tokens": n,
    }, {
        "saebench_0_6_explained_variance": 1 - (sse / n) / (mean_sq - (mean_sq / d) ** 2),
        "sse_per_token": sse / n,
    }


def assert_metrics(got, want, rel=1e-6, abs=1e-9):
    for k, v in want.items():
        assert got[k] == pytest.approx(v, rel=rel, abs=abs), k


# -- sparsity ----------------------------------------------------------------------------------


def test_sparsity_by_hand_one_live_latent():
    # 20 tokens, latent 0 = ReLU(x0) fires on token 0 only (density 5%), latent 1 = ReLU(x1) never.
    x = np.array([[2.0, -1.0]] + [[0.0, -1.0]] * 19)
    res = SparsityScorer().score(eye_sae(), inputs_from(x))
    assert res.metrics == {
        "l0": 0.05,
        "dead_fraction": 0.5,
        "dense_fraction": 0.0,
        "dense_fraction_1pct": 0.5,
        "tokens": 20,
    }
    hist = res.details["frequency_histogram"]
    # log10(1/20) = -1.30 -> edges from -1.5 to 0 by 0.25; log10(0.05) lands in [-1.5, -1.25)
    assert hist["log10_density_edges"] == [-1.5, -1.25, -1.0, -0.75, -0.5, -0.25, 0.0]
    assert hist["counts"] == [1, 0, 0, 0, 0, 0] and hist["dead"] == 1 and hist["alive"] == 1
    assert res.details["firing_counts"] == [1, 0]
    assert res.details["top_latents"] == [[0, 1]]


def test_sparsity_dense_thresholds_are_strict():
    # 20 tokens: latent 0 fires on 2 (exactly 10%: not dense), latent 1 on 3 (15%: dense)
    x = np.array([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 3 + [[-1.0, -1.0]] * 15)
    res = SparsityScorer().score(eye_sae(), inputs_from(x))
    assert res.metrics == {
        "l0": 0.25,
        "dead_fraction": 0.0,
        "dense_fraction": 0.5,
        "dense_fraction_1pct": 1.0,
        "tokens": 20,
    }
    # 200 tokens: latent 0 fires on 2 (exactly 1%: not dense at 1%), latent 1 on 3 (1.5%)
    x = np.array([[1.0, 0.0]] * 2 + [[0.0, 1.0]] * 3 + [[-1.0, -1.0]] * 195)
    res = SparsityScorer().score(eye_sae(), inputs_from(x))
    assert res.metrics["dense_fraction_1pct"] == 0.5 and res.metrics["dense_fraction"] == 0.0
    assert res.metrics["l0"] == pytest.approx(5 / 200)


def test_sparsity_topk_zeroed_latents_are_not_active():
    # TopK with k = 2 of 2 latents keeps both, but the ReLU zeroes negative ones: they do not fire.
    x = np.array([[1.0, -1.0], [-1.0, -2.0], [3.0, 4.0]])
    res = SparsityScorer().score(eye_sae("topk", k=2), inputs_from(x))
    assert res.metrics["l0"] == pytest.approx(3 / 3)
    assert res.details["firing_counts"] == [2, 1]


ARCHS = [("relu", {}), ("topk", {"k": 6}), ("jumprelu", {"apply_b_dec_to_input": True})]


def random_case(arch, extra, n=203, d_in=16, d_sae=64, seed=1):
    w = random_weights(d_in, d_sae, arch=arch, seed=seed)
    sae = saebench.build_sae(arch, w, **extra)
    g = np.random.default_rng(seed)
    x = (g.standard_normal((n, d_in)) * 1.5 + g.standard_normal(d_in) * 3).astype(np.float32)
    f = ref_encode(arch, x, w, k=extra.get("k"), apply_b_dec_to_input=extra.get("apply_b_dec_to_input", False))
    return sae, x, f, ref_decode(f, w)


@pytest.mark.parametrize("arch,extra", ARCHS, ids=[a for a, _ in ARCHS])
def test_sparsity_matches_numpy(arch, extra):
    sae, x, f, _ = random_case(arch, extra)
    want, counts = ref_sparsity(f)
    res = SparsityScorer(batch_tokens=64).score(sae, inputs_from(x))
    assert_metrics(res.metrics, want)
    assert res.details["firing_counts"] == counts.tolist()
    assert 0 < want["dead_fraction"] < 1 or arch == "topk"

    hist = res.details["frequency_histogram"]
    edges = np.array(hist["log10_density_edges"])
    assert edges[0] <= math.log10(1 / 203) < edges[0] + 0.25 and edges[-1] == 0.0
    alive = counts[counts > 0]
    bins = np.minimum(np.floor((np.log10(alive / 203) - edges[0]) / 0.25).astype(int), len(edges) - 2)
    assert hist["counts"] == np.bincount(bins, minlength=len(edges) - 1).tolist()
    assert hist["dead"] == int(np.sum(counts == 0)) and hist["dead"] + hist["alive"] == 64
    q = res.details["firing_count_quantiles"]
    assert q["max"] == counts.max() and q["min"] == counts.min() and q["p50"] == np.median(counts)
    assert res.details["top_latents"][0] == [int(np.argmax(counts)), int(counts.max())]


# -- reconstruction ----------------------------------------------------------------------------


def test_reconstruction_by_hand():
    # x̂ = ReLU(x): token 0 [2,-1] -> [2,0]; tokens 1..19 [0,-1] -> [0,0]. Residual [0,-1] everywhere.
    x = np.array([[2.0, -1.0]] + [[0.0, -1.0]] * 19)
    res = ReconstructionScorer().score(eye_sae(), inputs_from(x))
    m = res.metrics
    # Σ‖x − x̂‖² = 20; x̄ = [0.1, -1], Σ‖x − x̄‖² = 1.9² + 19·0.1² = 3.8; EV = 1 − 20/3.8 = −81/19
    assert m["explained_variance"] == pytest.approx(-81 / 19, rel=1e-12)
    assert m["fvu"] == pytest.approx(100 / 19, rel=1e-12)
    assert m["mse"] == pytest.approx(0.5, rel=1e-12)  # 20 / (20 tokens · 2 dims)
    # cosine only where x̂ ≠ 0 (token 0): 4 / (√5 · 2); l2 ratio: (2/√5 + 19·0) / 20
    assert m["cosine"] == pytest.approx(2 / math.sqrt(5), rel=1e-12)
    assert res.details["cosine_undefined_tokens"] == 19
    assert m["l2_ratio"] == pytest.approx(2 / math.sqrt(5) / 20, rel=1e-12)
    assert m["relative_reconstruction_bias"] == pytest.approx(1.0, rel=1e-12)  # Σ‖x̂‖² = 4 = Σ x·x̂
    assert m["tokens"] == 20
    # sae-bench 0.6.0: E‖x‖² = 24/20 = 1.2, d = 2: 1 − 1 / (1.2 − 0.6²) = −4/21
    assert res.details["saebench_0_6_explained_variance"] == pytest.approx(-4 / 21, rel=1e-12)


def test_reconstruction_perfect_and_constant_inputs():
    # identity on positive inputs: EV 1, cosine 1, ratio 1, bias 1
    x = np.abs(np.random.default_rng(0).standard_normal((30, 2))) + 0.1
    m = ReconstructionScorer().score(eye_sae(), inputs_from(x)).metrics
    assert m["explained_variance"] == pytest.approx(1.0) and m["fvu"] == pytest.approx(0.0, abs=1e-12)
    assert m["cosine"] == pytest.approx(1.0) and m["l2_ratio"] == pytest.approx(1.0)
    assert m["relative_reconstruction_bias"] == pytest.approx(1.0)
    # all tokens equal: no variance, so EV and FVU cannot be computed (None, not a made-up number)
    m = ReconstructionScorer().score(eye_sae(), inputs_from(np.tile([[1.0, 2.0]], (9, 1)))).metrics
    assert m["explained_variance"] is None and m["fvu"] is None and m["mse"] == 0.0


@pytest.mark.parametrize("arch,extra", ARCHS, ids=[a for a, _ in ARCHS])
def test_reconstruction_matches_numpy(arch, extra):
    sae, x, _, x_hat = random_case(arch, extra)
    want, want_details = ref_reconstruction(x, x_hat)
    res = ReconstructionScorer(batch_tokens=50).score(sae, inputs_from(x))
    assert_metrics(res.metrics, want, rel=2e-5)
    assert_metrics(res.details, want_details, rel=2e-5)
    assert res.details["cosine_undefined_tokens"] == 0


def test_large_common_offset_does_not_cancel():
    # activations with a huge shared offset and unit spread: EV must not lose its digits
    g = np.random.default_rng(3)
    x = (g.standard_normal((64, 4)) + 1e4).astype(np.float32)
    x_hat = np.maximum(x, 0) - 0.5  # eye SAE with b_dec = -0.5
    w = {"W_enc": torch.eye(4), "W_dec": torch.eye(4), "b_enc": torch.zeros(4), "b_dec": torch.full((4,), -0.5)}
    sae = saebench.build_sae("relu", w)
    want, _ = ref_reconstruction(x, x_hat)
    got = ReconstructionScorer(batch_tokens=5).score(sae, inputs_from(x)).metrics
    assert got["explained_variance"] == pytest.approx(want["explained_variance"], rel=1e-6)


# -- streaming -------------------------------------------------------------------------------


@pytest.mark.parametrize("scorer", [SparsityScorer, ReconstructionScorer])
@pytest.mark.parametrize("arch,extra", ARCHS, ids=[a for a, _ in ARCHS])
def test_streaming_equals_one_shot(scorer, arch, extra):
    sae, x, _, _ = random_case(arch, extra)
    small = scorer(batch_tokens=7).score(sae, inputs_from(x))
    whole = scorer(batch_tokens=10_000).score(sae, inputs_from(x))
    assert_metrics(small.metrics, whole.metrics, rel=1e-9)
    if scorer is SparsityScorer:
        assert small.details["firing_counts"] == whole.details["firing_counts"]


@pytest.mark.parametrize("scorer", [SparsityScorer, ReconstructionScorer])
def test_max_tokens_caps_the_stream(scorer):
    sae, x, _, _ = random_case("relu", {})
    capped = scorer(batch_tokens=7, max_tokens=50).score(sae, inputs_from(x))
    first = scorer().score(sae, inputs_from(x[:50]))
    assert capped.metrics["tokens"] == 50
    assert_metrics(capped.metrics, first.metrics, rel=1e-9)


@pytest.mark.parametrize("scorer", [SparsityScorer, ReconstructionScorer])
def test_no_tokens_gives_none(scorer):
    res = scorer().score(eye_sae(), inputs_from(np.zeros((0, 2))))
    assert res.metrics["tokens"] == 0
    assert all(v is None for k, v in res.metrics.items() if k != "tokens")


def test_wrong_width_activations_name_the_hookpoint():
    with pytest.raises(saebench.ShapeError, match="layers.0"):
        SparsityScorer().score(eye_sae(), inputs_from(np.zeros((4, 3))))


# -- options and registration -------------------------------------------------------------------


@pytest.mark.parametrize("name", SCORERS)
def test_unknown_option_is_a_config_error_naming_the_valid_ones(name):
    cls = SCORERS[name]
    with pytest.raises(saebench.ConfigError) as err:
        cls(batch_tokenz=5)
    msg = str(err.value)
    assert "'batch_tokenz'" in msg and name in msg
    for opt in cls.Options.model_fields:
        assert opt in msg


@pytest.mark.parametrize(
    "cls,options",
    [
        (SparsityScorer, {"batch_tokens": "64"}),
        (SparsityScorer, {"batch_tokens": 0}),
        (SparsityScorer, {"batch_tokens": True}),
        (SparsityScorer, {"max_tokens": 2.5}),
        (ReconstructionScorer, {"batch_tokens": None}),
        (ReconstructionScorer, {"max_tokens": -1}),
        (DownstreamScorer, {"tokens": 0}),
        (DownstreamScorer, {"batch_contexts": "8"}),
    ],
)
def test_bad_option_values_are_config_errors(cls, options):
    with pytest.raises(saebench.ConfigError, match=next(iter(options))):
        cls(**options)


def test_defaults_and_good_options():
    s = SparsityScorer(max_tokens=None)
    assert (s.options.batch_tokens, s.options.max_tokens) == (4096, None)
    d = DownstreamScorer(tokens=100, batch_contexts=2)
    assert (d.options.tokens, d.options.batch_contexts) == (100, 2)
    assert DownstreamScorer.needs_model and not SparsityScorer.needs_model and not ReconstructionScorer.needs_model


def test_docstrings_are_the_registry_descriptions():
    catalogue = yaml.safe_load((ROOT / "registry.yaml").read_text())["plugins"]
    want = {p["name"]: p["description"] for p in catalogue if p["kind"] == "scorer" and p["name"] in SCORERS}
    assert set(want) == set(SCORERS)  # the interpretability scorers are checked in their own tests
    for name, cls in SCORERS.items():
        assert cls.name == name
        assert plugin_manager.describe(cls) == want[name]


# -- downstream: a tiny deterministic model -----------------------------------------------------

V, D, H = 12, 6, 10
PAD, BOS, EOS = 0, 1, 2


def tiny_weights(seed=0):
    g = np.random.default_rng(seed)
    w = {"E": g.standard_normal((V, D)), "U": g.standard_normal((D, V)) * 0.8}
    for i in range(2):
        w[f"W1.{i}"] = g.standard_normal((D, H)) / math.sqrt(D)
        w[f"b1.{i}"] = g.standard_normal(H) * 0.1
        w[f"W2.{i}"] = g.standard_normal((H, D)) / math.sqrt(H)
        w[f"M.{i}"] = g.standard_normal((D, D)) / math.sqrt(D)
    w["E"][BOS] *= 8  # an outlier BOS, like Gemma's
    return {k: v.astype(np.float32) for k, v in w.items()}


def numpy_logits(w, tokens, replace=None):
    """The tiny model in float64: embedding, two residual blocks (MLP + causal prefix mean), unembedding.

    ``replace[name](h, tokens)`` returns the new residual stream after block ``name``.
    """
    w = {k: v.astype(np.float64) for k, v in w.items()}
    h = w["E"][tokens]
    t = np.arange(1, tokens.shape[1] + 1)[None, :, None]
    for i in range(2):
        prefix_mean = np.cumsum(h, axis=1) / t
        h = h + np.maximum(h @ w[f"W1.{i}"] + w[f"b1.{i}"], 0) @ w[f"W2.{i}"] + prefix_mean @ w[f"M.{i}"]
        if replace and f"layers.{i}" in replace:
            h = replace[f"layers.{i}"](h, tokens)
    return h @ w["U"]


class TinyAdapter(saebench.ModelAdapter):
    """The same model in torch float32, behind the ModelAdapter interface; records each replacement."""

    name = "tiny-test"

    def __init__(self, seed=0):
        self.model_id = f"tiny-{seed}"
        self.bos_token_id, self.eos_token_id, self.pad_token_id = BOS, EOS, PAD
        self.w = tiny_weights(seed)
        self.t = {k: torch.from_numpy(v) for k, v in self.w.items()}
        self.calls = []  # (hookpoint, input, output) of every replacement applied

    def hookpoints(self):
        return ["layers.0", "layers.1"]

    def d_model(self, hookpoint):
        return D

    def tokenize(self, text):
        return [3 + ord(c) % (V - 3) for c in text]

    def special_mask(self, tokens):
        return (tokens == BOS) | (tokens == EOS) | (tokens == PAD)

    def _run(self, tokens, replace=None, capture=()):
        h = self.t["E"][tokens]
        t = torch.arange(1, tokens.shape[1] + 1, dtype=torch.float32)[None, :, None]
        out = {}
        for i in range(2):
            prefix_mean = torch.cumsum(h, dim=1) / t
            h = (
                h
                + torch.relu(h @ self.t[f"W1.{i}"] + self.t[f"b1.{i}"]) @ self.t[f"W2.{i}"]
                + prefix_mean @ self.t[f"M.{i}"]
            )
            name = f"layers.{i}"
            if replace and name in replace:
                new = replace[name](h)
                self.calls.append((name, h.clone(), new.clone()))
                h = new
            if name in capture:
                out[name] = h.clone()
                if set(out) == set(capture):
                    return out
        return h @ self.t["U"]

    def capture(self, tokens, hookpoints):
        return self._run(tokens, capture=tuple(hookpoints))

    def logits(self, tokens, replace=None):
        return self._run(tokens, replace=replace)


# contexts [5, 9]: BOS first; a document boundary (EOS, BOS) inside one; PAD at the end of another.
# The free positions (_) are filled by greedy decoding from the tiny model, so that the clean model
# predicts its data better than the zero-ablated one and the scores are well conditioned.
_ = -1
TEMPLATE = np.array(
    [
        [BOS, 3, _, _, _, _, _, _, _],
        [BOS, 11, _, _, EOS, BOS, _, _, _],
        [BOS, 6, _, _, _, _, PAD, PAD, PAD],
        [BOS, 10, _, _, _, _, _, _, _],
        [BOS, 4, 11, _, _, _, _, _, _],
    ]
)


def greedy_tokens(w):
    tokens = np.where(_ == TEMPLATE, 3, TEMPLATE)
    for t in range(1, tokens.shape[1]):  # causal: later placeholders do not change position t - 1
        free = TEMPLATE[:, t] == _
        nxt = 3 + numpy_logits(w, tokens)[:, t - 1, 3:].argmax(axis=-1)
        tokens[free, t] = nxt[free]
    return torch.from_numpy(tokens)


TOKENS = greedy_tokens(tiny_weights())


def sae_for_model(kind, seed=2):
    if kind == "relu":  # an imperfect SAE: ±x latents with noise and shrinkage, plus random ones
        g = torch.Generator().manual_seed(seed)
        eye = torch.eye(D)
        w = {
            "W_enc": torch.cat([eye, -eye, torch.randn(D, 12, generator=g) * 0.3], 1)
            + torch.randn(D, 24, generator=g) * 0.1,
            "W_dec": torch.cat([eye * 0.9, -eye * 0.9, torch.randn(12, D, generator=g) * 0.1], 0),
            "b_enc": torch.full((24,), -0.05),
            "b_dec": torch.randn(D, generator=g) * 0.05,
        }
        return saebench.build_sae("relu", w), w
    if kind == "identity":  # TopK with k = d_in over [x, −x]: keeps |x_i| once, decodes back to x exactly
        eye = torch.eye(D)
        w = {
            "W_enc": torch.cat([eye, -eye], 1),
            "W_dec": torch.cat([eye, -eye], 0),
            "b_enc": torch.zeros(2 * D),
            "b_dec": torch.zeros(D),
        }
        return saebench.build_sae("topk", w, k=D), w
    if kind == "garbage":  # reconstructs everything as ~1000
        w = random_weights(D, 24, arch="relu", seed=seed)
        w["b_dec"] = torch.full((D,), 1000.0)
        return saebench.build_sae("relu", w), w
    raise ValueError(kind)


def reference_downstream(w_model, tokens, sae_arch, w_sae, k=None):
    """Expected metrics in float64: SAE on non-special positions at layers.0; zero ablation everywhere."""
    tokens = tokens.numpy()
    special = np.isin(tokens, [PAD, BOS, EOS])

    def splice(h, toks):
        keep = ~special
        out = h.copy()
        out[keep] = ref_decode(ref_encode(sae_arch, h[keep], w_sae, k=k), w_sae)
        return out

    def zero(h, toks):
        return np.zeros_like(h)

    def logp(logits):
        z = logits - logits.max(axis=-1, keepdims=True)
        return z - np.log(np.exp(z).sum(axis=-1, keepdims=True))

    counted = ~special[:, :-1] & ~special[:, 1:]
    targets = tokens[:, 1:][counted]
    lp = {
        "clean": logp(numpy_logits(w_model, tokens))[:, :-1][counted],
        "sae": logp(numpy_logits(w_model, tokens, {"layers.0": splice}))[:, :-1][counted],
        "zero": logp(numpy_logits(w_model, tokens, {"layers.0": zero}))[:, :-1][counted],
    }
    ce = {k: float(-np.mean(v[np.arange(len(targets)), targets])) for k, v in lp.items()}
    p = np.exp(lp["clean"])
    kl = {k: float(np.mean(np.sum(p * (lp["clean"] - lp[k]), axis=1))) for k in ("sae", "zero")}
    return {
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero": ce["zero"],
        "kl_sae": kl["sae"],
        "kl_zero": kl["zero"],
        "ce_loss_score": (ce["zero"] - ce["sae"]) / (ce["zero"] - ce["clean"]),
        "delta_lm_loss": ce["sae"] - ce["clean"],
        "kl_score": (kl["zero"] - kl["sae"]) / kl["zero"],
        "tokens": int(counted.sum()),
    }


def downstream_inputs(adapter, tokens=TOKENS):
    return saebench.EvalInputs(hookpoint="layers.0", activations=lambda bt: iter([]), tokens=tokens, adapter=adapter)


def test_tiny_adapter_matches_its_numpy_twin():
    adapter = TinyAdapter()
    np.testing.assert_allclose(
        adapter.logits(TOKENS).numpy(), numpy_logits(adapter.w, TOKENS.numpy()), rtol=1e-4, atol=1e-4
    )
    assert adapter.capture(TOKENS, ["layers.0"])["layers.0"].shape == (5, 9, D)


@pytest.mark.parametrize("batch_contexts", [8, 2])
def test_downstream_matches_numpy(batch_contexts):
    adapter = TinyAdapter()
    sae, w = sae_for_model("relu")
    res = DownstreamScorer(tokens=10_000, batch_contexts=batch_contexts).score(sae, downstream_inputs(adapter))
    want = reference_downstream(adapter.w, TOKENS, "relu", w)
    # counted pairs (t, t+1) with neither special: 7 per full context (not from the BOS at 0);
    # context 1: t = 1, 2, 6, 7 (none touching EOS/BOS at 4, 5); context 2: t = 1..4 (PAD from 6)
    assert want["tokens"] == 7 + 4 + 4 + 7 + 7 == res.metrics["tokens"]
    assert abs(want["ce_zero"] - want["ce_clean"]) > 0.1 and want["kl_zero"] > 0.1  # scores well conditioned
    assert 0 < want["kl_sae"] < want["kl_zero"]
    assert_metrics(res.metrics, want, rel=1e-4, abs=1e-5)
    assert res.details["contexts"] == 5 and res.details["replaced_positions"] == int(
        (~adapter.special_mask(TOKENS)).sum()
    )


def test_downstream_tokens_option_takes_the_first_contexts():
    adapter = TinyAdapter()
    sae, w = sae_for_model("relu")
    res = DownstreamScorer(tokens=10).score(sae, downstream_inputs(adapter))  # ceil(10 / 9) = 2 contexts
    assert res.details["contexts"] == 2
    assert_metrics(res.metrics, reference_downstream(adapter.w, TOKENS[:2], "relu", w), rel=1e-4, abs=1e-5)


def test_downstream_identity_sae_recovers_everything():
    adapter = TinyAdapter()
    sae, _ = sae_for_model("identity")
    m = DownstreamScorer().score(sae, downstream_inputs(adapter)).metrics
    assert m["ce_loss_score"] == pytest.approx(1.0, abs=1e-12)
    assert m["kl_sae"] == pytest.approx(0.0, abs=1e-12) and m["kl_score"] == pytest.approx(1.0, abs=1e-12)
    assert m["delta_lm_loss"] == pytest.approx(0.0, abs=1e-12)
    assert m["ce_sae"] == m["ce_clean"]


def test_downstream_keeps_special_positions():
    adapter = TinyAdapter()
    sae, w = sae_for_model("garbage")
    res = DownstreamScorer().score(sae, downstream_inputs(adapter))
    special = adapter.special_mask(TOKENS)
    sae_calls = [c for c in adapter.calls if not torch.all(c[2] == 0)]
    zero_calls = [c for c in adapter.calls if torch.all(c[2] == 0)]
    assert len(sae_calls) == 1 and len(zero_calls) == 1 and sae_calls[0][0] == "layers.0"
    _, h_in, h_out = sae_calls[0]
    # BOS/EOS/PAD keep their activation bit for bit; every other position got the SAE's output
    assert torch.equal(h_out[special], h_in[special])
    assert torch.all(h_out[~special] > 500)
    x = h_in[~special].double().numpy()
    np.testing.assert_allclose(h_out[~special].double().numpy(), ref_decode(ref_encode("relu", x, w), w), rtol=1e-5)
    assert res.metrics["delta_lm_loss"] > 0
    assert_metrics(res.metrics, reference_downstream(adapter.w, TOKENS, "relu", w), rel=1e-4, abs=1e-4)


def test_downstream_score_many_equals_each_alone_with_one_clean_and_one_zero_pass_per_hook_point():
    saes = [sae_for_model(kind)[0] for kind in ("relu", "identity", "garbage")]
    hookpoints = ["layers.0", "layers.1", "layers.0"]
    scorer = DownstreamScorer(batch_contexts=2)
    alone = []
    for sae, hp in zip(saes, hookpoints):
        adapter = TinyAdapter()
        inputs = downstream_inputs(adapter)
        inputs.hookpoint = hp
        alone.append(scorer.score(sae, inputs))
    adapter = TinyAdapter()
    together_inputs = [downstream_inputs(adapter) for _ in saes]
    for inputs, hp in zip(together_inputs, hookpoints):
        inputs.hookpoint = hp
    calls = []
    logits = adapter.logits
    adapter.logits = lambda tokens, replace=None: calls.append(sorted(replace or {})) or logits(tokens, replace)
    together = scorer.score_many(saes, together_inputs)
    for a, b in zip(alone, together):
        assert a.metrics == b.metrics and a.details == b.details
        assert a.units.columns == b.units.columns
    batches = math.ceil(TOKENS.shape[0] / 2)
    # per batch: clean, zero at each of the two hook points, one spliced pass per SAE (not 3 passes per SAE)
    assert len(calls) == batches * (1 + 2 + 3)
    assert calls[:6] == [[], ["layers.0"], ["layers.0"], ["layers.0"], ["layers.1"], ["layers.1"]]
    assert together[0].metrics["ce_clean"] == together[1].metrics["ce_clean"]
    assert together[0].metrics["kl_zero"] == together[2].metrics["kl_zero"] != together[1].metrics["kl_zero"]
    with pytest.raises(saebench.ShapeError, match="same evaluation tokens"):
        scorer.score_many(saes[:2], [downstream_inputs(adapter), downstream_inputs(adapter, TOKENS[:2])])


def test_downstream_needs_an_adapter():
    sae, _ = sae_for_model("relu")
    with pytest.raises(saebench.ConfigError, match="downstream needs a model"):
        DownstreamScorer().score(sae, downstream_inputs(None))


def test_downstream_with_nothing_to_count_gives_none():
    adapter = TinyAdapter()
    sae, _ = sae_for_model("relu")
    m = DownstreamScorer().score(sae, downstream_inputs(adapter, torch.tensor([[BOS, 5, EOS, PAD]]))).metrics
    assert m["tokens"] == 0
    assert all(v is None for k, v in m.items() if k != "tokens")


# -- per-unit statistics (the bootstrap's input) -------------------------------------------------


def with_contexts(x, n_contexts=20, seed=0):
    """inputs_from(x) whose rows belong to contexts in order (some contexts empty), and those context ids."""
    g = np.random.default_rng(seed)
    ctx = np.sort(g.integers(0, n_contexts, size=len(x)))
    inputs = inputs_from(x, tokens=torch.zeros(n_contexts, 4, dtype=torch.long))
    inputs.token_contexts = torch.from_numpy(ctx)
    return inputs, ctx


@pytest.mark.parametrize("arch,extra", ARCHS, ids=[a for a, _ in ARCHS])
def test_sparsity_units_recompute_l0_and_leave_dead_fraction_without_an_interval(arch, extra):
    from saebench.uncertainty import draws

    sae, x, f, _ = random_case(arch, extra)
    inputs, ctx = with_contexts(x)
    res = SparsityScorer(batch_tokens=37).score(sae, inputs)
    u = res.units
    assert u.unit == "context" and u.ids == sorted(set(ctx.tolist()))
    assert u.value("l0") == pytest.approx(res.metrics["l0"], abs=1e-12)
    active = (f != 0).sum(1)
    assert u.columns["active"] == [float(active[ctx == c].sum()) for c in u.ids]
    # on a resample, L0 is the drawn contexts' active latents over their tokens
    w = draws(u.n, None, 30, np.random.default_rng(1))
    per = np.array([[active[ctx == c].sum(), (ctx == c).sum()] for c in u.ids], dtype=float)
    assert u.values("l0", w).tolist() == pytest.approx((w @ per[:, 0] / (w @ per[:, 1])).tolist(), rel=1e-12)
    # dead_fraction's resampled value is biased upward: no interval, and the metric says why
    assert "dead_fraction" not in u.metrics
    declared = {m.name: m for m in SparsityScorer.headline}
    assert "biased" in declared["dead_fraction"].no_interval


@pytest.mark.parametrize("arch,extra", ARCHS, ids=[a for a, _ in ARCHS])
def test_reconstruction_units_are_per_context_float64_sums(arch, extra):
    sae, x, _, x_hat = random_case(arch, extra)
    inputs, ctx = with_contexts(x, seed=2)
    res = ReconstructionScorer(batch_tokens=50).score(sae, inputs)
    u = res.units
    for m in ("explained_variance", "fvu", "mse", "cosine", "l2_ratio", "relative_reconstruction_bias"):
        assert u.value(m) == pytest.approx(res.metrics[m], rel=1e-9), m
    x64, xh = x.astype(np.float64), np.asarray(x_hat, dtype=np.float64)
    sse = ((x64 - xh) ** 2).sum(1)
    tss = ((x64 - x64.mean(0)) ** 2).sum(1)
    assert u.columns["sse"] == pytest.approx([sse[ctx == c].sum() for c in u.ids], rel=1e-5)
    assert u.columns["tss"] == pytest.approx([tss[ctx == c].sum() for c in u.ids], rel=1e-9)
    # the metric on a subset of contexts is the metric of those tokens (with x̄ of all tokens held fixed)
    w = np.zeros((1, u.n))
    w[0, : u.n // 2] = 1
    rows = np.isin(ctx, u.ids[: u.n // 2])
    assert u.values("fvu", w)[0] == pytest.approx(sse[rows].sum() / tss[rows].sum(), rel=1e-5)


def test_scores_without_token_contexts_have_no_units():
    sae, x, _, _ = random_case("relu", {})
    assert SparsityScorer().score(sae, inputs_from(x)).units is None
    assert ReconstructionScorer().score(sae, inputs_from(x)).units is None


def test_downstream_units_on_a_subset_of_contexts_equal_the_reference_on_those_contexts():
    adapter = TinyAdapter()
    sae, w = sae_for_model("relu")
    res = DownstreamScorer(tokens=10_000).score(sae, downstream_inputs(adapter))
    u = res.units
    assert u.unit == "context" and u.ids == [0, 1, 2, 3, 4]
    for m in ("ce_loss_score", "kl_score", "delta_lm_loss", "ce_clean", "ce_sae", "kl_sae"):
        assert u.value(m) == pytest.approx(res.metrics[m], rel=1e-9), m
    first_two = np.array([[1.0, 1.0, 0.0, 0.0, 0.0]])
    want = reference_downstream(adapter.w, TOKENS[:2], "relu", w)
    for m in ("ce_loss_score", "kl_score", "delta_lm_loss"):  # ratios of totals, not ratios of means
        assert u.values(m, first_two)[0] == pytest.approx(want[m], rel=1e-4, abs=1e-5), m
