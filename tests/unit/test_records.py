"""Latent records against values planted by hand and computed here with numpy.

The planted case: latent i of an identity-like ReLU SAE is ReLU(x_i), so activations are the
inputs we write, and every expected window, max, bin and negative is worked out below from the
dense [contexts, length, d] array, never from saebench code.
"""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

import saebench
from reference import encode as ref_encode
from reference import random_weights
from saebench.errors import ConfigError, SaebenchError, ShapeError
from saebench.interp import scan
from saebench.interp.records import Corpus, RecordConfig, RecordSet, build_records, planned_passes, select_latents

N_CTX, T, W = 4, 16, 4  # 4 windows per context, 16 in all


def strings(ids):
    return [f"<{i}>" for i in ids]


def stream(x):
    x = torch.as_tensor(x, dtype=torch.float32)
    return lambda n: iter([x[i : i + n] for i in range(0, x.shape[0], n)])


def planted():
    """ReLU SAE, 6 latents on d_in 8: latent i = ReLU(x_i); latent 1 decodes along latent 0's direction."""
    w_enc = torch.zeros(8, 6)
    w_enc[torch.arange(6), torch.arange(6)] = 1.0
    w_dec = torch.zeros(6, 8)
    w_dec[torch.arange(6), torch.arange(6)] = 1.0
    w_dec[1] = torch.tensor([3.0, 0.3, 0, 0, 0, 0, 0, 0])  # cosine 0.995 with latent 0 (the others: 0; itself: 1)
    sae = saebench.build_sae("relu", {"W_enc": w_enc, "W_dec": w_dec, "b_enc": torch.zeros(6), "b_dec": torch.zeros(8)})

    tokens = torch.arange(N_CTX * T).reshape(N_CTX, T) + 100
    special = torch.zeros(N_CTX, T, dtype=torch.bool)
    special[:, 0] = True  # BOS
    special[3, 12:] = True  # PAD: window 15 has no evaluation token
    dense = np.zeros((N_CTX, T, 8))
    # latent 0: six windows with distinct strengths, some with two firing tokens
    for (c, t), v in {
        (0, 1): 1.0,
        (0, 2): 0.5,
        (0, 6): 2.0,
        (1, 3): 3.0,
        (1, 9): 4.0,
        (1, 10): 6.0,
        (2, 5): 5.0,
        (3, 1): 0.25,
    }.items():
        dense[c, t, 0] = v
    # latent 1 (the neighbour): strongest where latent 0 also fires (window 6), then windows 11, 3, 13
    for (c, t), v in {(1, 9): 9.0, (2, 12): 8.0, (0, 12): 7.0, (3, 5): 1.5}.items():
        dense[c, t, 1] = v
    dense[0, 13, 2] = dense[2, 1, 2] = 1.0  # latent 2: two windows only
    dense[:, :, 3] = 0.1  # latent 3: every token (no non-activating window at all)
    dense[special.numpy()] = 0
    return sae, tokens, special, dense


def window_max(dense, latent):
    return dense[:, :, latent].reshape(N_CTX, T // W, W).max(axis=2).reshape(-1)


def cfg(**kw):
    base = dict(
        latents=[0],
        window=W,
        n_train=2,
        n_test=2,
        n_negatives=2,
        n_train_negatives=0,
        quantiles=2,
        min_activating=3,
        n_neighbours=1,
        hard_negative_fraction=1.0,
    )
    return RecordConfig(**{**base, **kw})


def run(sae, tokens, special, dense, c, latents=None, **kw):
    x = dense[~special.numpy()]
    return build_records(
        sae, stream(x), Corpus(tokens, special, strings), c.latents if latents is None else latents, c, **kw
    )


def windows_of(examples):
    return [e.window for e in examples]


def test_planted_latent_ranking_bins_tokens_and_hard_negatives():
    sae, tokens, special, dense = planted()
    rs = run(sae, tokens, special, dense, cfg())
    (rec,) = rs.records
    wmax = window_max(dense, 0)
    active = np.flatnonzero(wmax > 0)
    assert list(active) == [0, 1, 4, 6, 9, 12]
    assert rec.n_activating == 6 and rec.max_activation == 6.0
    assert rec.density == pytest.approx(8 / (N_CTX * T - N_CTX - 4))
    # bins: the three weakest windows (0.25, 1, 2 -> windows 12, 0, 1) are bin 0
    weakest = set(active[np.argsort(wmax[active])][:3])
    assert weakest == {12, 0, 1}
    for e in rec.train + rec.test:
        assert e.quantile == (0 if e.window in weakest else 1)
        assert e.max_activation == wmax[e.window]
        c, start = divmod(e.window, T // W)
        assert e.activations == list(dense[c, start * W : start * W + W, 0])
        window_special = special[c, start * W : start * W + W].tolist()
        assert (
            e.tokens
            == [
                "" if sp else f"<{i}>"  # special positions are not shown as text
                for i, sp in zip(tokens[c, start * W : start * W + W].tolist(), window_special)
            ]
        )
        assert e.kind == "activating"
    # one example of each bin in each set, strongest first, disjoint
    assert sorted(e.quantile for e in rec.train) == [0, 1] and sorted(e.quantile for e in rec.test) == [0, 1]
    assert [e.max_activation for e in rec.test] == sorted((e.max_activation for e in rec.test), reverse=True)
    assert not set(windows_of(rec.train)) & set(windows_of(rec.test))
    # hard negatives: latent 1's strongest windows where latent 0 is 0 everywhere (window 6 is excluded)
    assert sorted(windows_of(rec.test_negatives)) == [3, 11]
    assert all(e.kind == "hard" and e.activations == [0.0] * W and e.quantile is None for e in rec.test_negatives)
    assert rec.train_negatives == []


def test_hard_negatives_fall_back_to_random_ones():
    sae, tokens, special, dense = planted()
    rs = run(sae, tokens, special, dense, cfg(n_negatives=3, n_train_negatives=4))
    (rec,) = rs.records
    hard = [e.window for e in rec.test_negatives + rec.train_negatives if e.kind == "hard"]
    rand = [e.window for e in rec.test_negatives + rec.train_negatives if e.kind == "random"]
    assert sorted(hard) == [3, 11, 13]  # every window where the neighbour fires and latent 0 does not
    assert len(rec.test_negatives) == 3 and all(e.kind == "hard" for e in rec.test_negatives)  # tests come first
    assert len(rand) == 4 and len(set(rand)) == 4
    # random ones: not activating, not hard, not the all-PAD window 15
    assert not set(rand) & ({0, 1, 4, 6, 9, 12, 15} | set(hard))


def test_negatives_run_short_fill_the_test_set_first():
    sae, tokens, special, dense = planted()
    # 15 eligible windows, 6 activating: 9 negatives exist for 20 wanted
    rs = run(sae, tokens, special, dense, cfg(n_negatives=8, n_train_negatives=12, hard_negative_fraction=0.5))
    (rec,) = rs.records
    assert len(rec.test_negatives) == 8 and len(rec.train_negatives) == 1
    assert sorted(windows_of(rec.test_negatives + rec.train_negatives)) == [2, 3, 5, 7, 8, 10, 11, 13, 14]


def test_skipped_latents_keep_their_counts_and_dead_ones_count_zero():
    sae, tokens, special, dense = planted()
    rs = run(sae, tokens, special, dense, cfg(latents=[2, 0, 5, 3]))
    assert rs.skipped == {2: 2, 5: 0}
    assert [r.latent for r in rs.records] == [0, 3]  # the order asked for
    rec3 = rs.records[1]
    assert rec3.n_activating == 15 and rec3.density == 1.0
    assert rec3.test_negatives == [] and rec3.train_negatives == []  # no window where it is 0
    assert rs.n_windows == 16 and rs.n_tokens == N_CTX * T - N_CTX - 4


def test_sampling_draws_from_explainable_latents_only():
    sae, tokens, special, dense = planted()
    windows = {i: int((dense[:, :, i] != 0).reshape(N_CTX, -1, W).any(-1).sum()) for i in range(6)}
    alive = {i for i, n in windows.items() if n > 0}
    assert alive == {0, 1, 2, 3}
    c = cfg(latents=10, n_neighbours=0)
    eligible = {i for i, n in windows.items() if n >= c.min_activating}
    assert eligible and eligible != alive  # the planted latent 2 has too few windows
    rs = run(sae, tokens, special, dense, c)
    assert {r.latent for r in rs.records} == eligible and rs.skipped == {}  # fewer qualify than asked: all of them
    assert (rs.n_alive, rs.n_eligible) == (len(alive), len(eligible))
    assert rs.passes == 2  # counting, scan
    counts = torch.tensor([windows[i] for i in range(6)])
    rs2 = run(sae, tokens, special, dense, cfg(latents=1, seed=3), window_counts=counts)
    picked = {r.latent for r in rs2.records}
    assert len(picked) == 1 and picked <= eligible and rs2.passes == 1
    assert sorted(picked) == select_latents(6, cfg(latents=1, seed=3), counts)


def test_fewer_windows_than_wanted_are_split_in_proportion():
    sae, tokens, special, dense = planted()
    rs = run(sae, tokens, special, dense, cfg(n_train=40, n_test=50, quantiles=10))
    (rec,) = rs.records
    # 6 windows at 40:50 -> round(6 * 40 / 90) = 3 train, 3 test, all used once
    assert len(rec.train) == 3 and len(rec.test) == 3
    assert sorted(windows_of(rec.train + rec.test)) == [0, 1, 4, 6, 9, 12]
    # 10 bins over 6 windows: bin i * 10 // 6 of the i-th weakest
    wmax = window_max(dense, 0)
    order = [w for w in sorted([0, 1, 4, 6, 9, 12], key=lambda w: wmax[w])]
    expected = {w: i * 10 // 6 for i, w in enumerate(order)}
    assert {e.window: e.quantile for e in rec.train + rec.test} == expected


def test_explicit_latents_are_validated():
    with pytest.raises(ConfigError, match="latent 6 does not exist") as exc:
        select_latents(6, cfg(latents=[0, 6]))
    assert exc.value.where == "interp.latents"
    with pytest.raises(ConfigError, match="latent -1 does not exist"):
        select_latents(6, cfg(latents=[-1]))
    with pytest.raises(ConfigError, match="latent 2 is listed twice"):
        select_latents(6, cfg(latents=[2, 1, 2]))
    with pytest.raises(ConfigError, match="empty"):
        select_latents(6, cfg(latents=[]))
    with pytest.raises(ConfigError, match="at least 1"):
        select_latents(6, cfg(latents=0))
    assert select_latents(6, cfg(latents="all")) == list(range(6))
    assert select_latents(6, cfg(latents=4)) == 4  # to be sampled by build_records
    sae, tokens, special, dense = planted()
    with pytest.raises(ConfigError, match="latent 9"):
        run(sae, tokens, special, dense, cfg(), latents=[9])
    with pytest.raises(ConfigError) as exc:
        RecordConfig.from_options({"window": 0}, "m.yaml: interp")
    assert exc.value.where == "m.yaml: interp.window"
    with pytest.raises(ConfigError, match="Extra inputs"):
        RecordConfig.from_options({"windw": 4})


def test_shapes_are_checked():
    sae, tokens, special, dense = planted()
    x = torch.as_tensor(dense[~special.numpy()], dtype=torch.float32)
    c = cfg()
    with pytest.raises(ShapeError, match="31 rows but the tokens have 56") as exc:
        build_records(sae, stream(x[:31]), Corpus(tokens, special, strings), [0], c)
    assert exc.value.where == "activations"
    with pytest.raises(ShapeError, match="more rows"):
        build_records(sae, stream(torch.cat([x, x[:1]])), Corpus(tokens, special, strings), [0], c)
    with pytest.raises(ShapeError, match="special_mask"):
        build_records(sae, stream(x), Corpus(tokens, special[:, 1:], strings), [0], c)
    with pytest.raises(ShapeError, match="3 strings for 4 tokens"):
        build_records(sae, stream(x), Corpus(tokens, special, lambda ids: strings(ids)[1:]), [0], c)


def random_case(seed, arch):
    g = torch.Generator().manual_seed(seed)
    n_ctx, length, d_in, d_sae = 12, 37, 6, 24  # 37 = 4 windows of 8 and one of 5
    tokens = torch.randint(3, 50, (n_ctx, length), generator=g)
    special = torch.rand(n_ctx, length, generator=g) < 0.1
    special[:, 0] = True
    special[n_ctx - 1, 20:] = True
    w = random_weights(d_in, d_sae, arch=arch, seed=seed)
    if arch == "relu":
        w["b_enc"] -= 0.6  # sparser, so that plenty of windows are negatives
    sae = saebench.build_sae(arch, w, **({"k": 3} if arch == "topk" else {}))
    x = torch.randn(int((~special).sum()), d_in, generator=g)
    dense = np.zeros((n_ctx, length, d_sae))
    dense[~special.numpy()] = ref_encode(arch, x.numpy(), {k: v.numpy() for k, v in w.items()}, k=3)
    return sae, tokens, special, x, dense, w


@pytest.mark.parametrize(
    "seed,arch,batch", [(0, "relu", 8192), (1, "topk", 7), (2, "jumprelu", 64), (3, "relu", 3), (4, "topk", 8192)]
)
def test_sets_are_disjoint_and_negatives_are_silent(seed, arch, batch, monkeypatch):
    # small cache batches split windows across batches: a window's max must still be one entry
    monkeypatch.setattr(scan, "BATCH_TOKENS", batch)
    if seed % 2:  # example tokens fetched by a second pass
        monkeypatch.setattr(scan, "TOKEN_BUDGET", 0)
    sae, tokens, special, x, dense, _ = random_case(seed, arch)
    c = cfg(latents="all", seed=seed, window=8, n_train=4, n_test=5, n_negatives=6, n_train_negatives=3, quantiles=3)
    c = c.model_copy(update={"min_activating": 2, "n_neighbours": 3, "hard_negative_fraction": 0.5})  # the defaults
    rs = build_records(sae, stream(x), Corpus(tokens, special, strings), c.latents, c)
    assert len(rs.records) + len(rs.skipped) == 24 and len(rs.records) > 5
    per_ctx = 5
    for rec in rs.records:
        ref = dense[:, :, rec.latent]
        sets = [windows_of(s) for s in (rec.train, rec.test, rec.train_negatives, rec.test_negatives)]
        flat = [w for s in sets for w in s]
        assert len(flat) == len(set(flat)), rec.latent
        assert len(rec.train) <= 4 and len(rec.test) <= 5 and len(rec.test_negatives) <= 6
        for e in rec.train + rec.test + rec.train_negatives + rec.test_negatives:
            ctx, j = divmod(e.window, per_ctx)
            want = ref[ctx, j * 8 : j * 8 + 8]
            assert len(e.tokens) == len(e.activations) == want.size
            if e.kind == "activating":
                np.testing.assert_allclose(e.activations, want, atol=1e-5)
                assert e.max_activation > 0
            else:
                assert np.abs(want).max() < 1e-6 and e.activations == [0.0] * want.size
        wmax = [ref[c_, j * 8 : j * 8 + 8].max() for c_ in range(12) for j in range(per_ctx)]
        assert rec.n_activating == sum(m > 0 for m in wmax)
        assert rec.max_activation == pytest.approx(max(wmax), abs=1e-5)


def test_latent_chunks_and_token_budget_do_not_change_records(monkeypatch):
    sae, tokens, special, x, _, _ = random_case(5, "topk")
    c = RecordConfig(
        latents="all", window=8, n_train=4, n_test=5, n_negatives=6, quantiles=3, min_activating=3, n_neighbours=4
    )
    seen = []
    one = build_records(sae, stream(x), Corpus(tokens, special, strings), c.latents, c, progress=seen.append)
    assert one.passes == 1  # every token activation fitted in memory: no second pass
    assert sum(seen) == x.shape[0] * planned_passes(24, c) == x.shape[0] * 2  # ... reported as done
    seen = []
    small = c.model_copy(update={"latent_chunk": 5})
    monkeypatch.setattr(scan, "TOKEN_BUDGET", 10)  # forces the second pass that fetches example tokens
    monkeypatch.setattr(scan, "NEIGHBOUR_BUFFER", 0)  # and cuts neighbours to their strongest windows each batch
    monkeypatch.setattr(scan, "BATCH_TOKENS", 50)
    many = build_records(sae, stream(x), Corpus(tokens, special, strings), small.latents, small, progress=seen.append)
    assert many.passes == planned_passes(24, small) == 10
    assert sum(seen) == x.shape[0] * many.passes
    assert one.records == many.records and one.skipped == many.skipped
    again = build_records(sae, stream(x), Corpus(tokens, special, strings), c.latents, c)
    assert again.records == one.records  # deterministic
    other = build_records(sae, stream(x), Corpus(tokens, special, strings), c.latents, c.model_copy(update={"seed": 1}))
    assert other.records != one.records


def test_save_and_load_round_trip(tmp_path):
    sae, tokens, special, dense = planted()
    rs = run(sae, tokens, special, dense, cfg(latents=[0, 2, 3]))
    for name in ("records.json.gz", "records.json"):
        path = tmp_path / name
        rs.save(path)
        back = RecordSet.load(path)
        assert back == rs and back.skipped == {2: 2}
        assert (path.read_bytes()[:2] == b"\x1f\x8b") == name.endswith(".gz")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["records.json", "records.json.gz"]  # no temporaries
    (tmp_path / "bad.json.gz").write_bytes(gzip.compress(b"{}"))
    with pytest.raises(SaebenchError, match="not a latent-records file"):
        RecordSet.load(tmp_path / "bad.json.gz")


def test_tiny_llama_end_to_end(tiny_llama):
    from saebench.plugins.adapters.hf_causal_lm import HFCausalLMAdapter

    adapter = HFCausalLMAdapter(str(tiny_llama))
    text = "the cat sat on the mat and then the dog ran under the big red rug quickly. " * 3
    ids = adapter.tokenize(text)
    length, n_ctx = 48, 4
    rows = [[adapter.bos_token_id] + ids[i * 40 : i * 40 + 47] for i in range(n_ctx)]
    tail = [adapter.eos_token_id] + [adapter.pad_token_id] * length
    rows[-1] = ([adapter.bos_token_id] + ids[120:150] + tail)[:length]
    tokens = torch.tensor(rows)
    special = adapter.special_mask(tokens)
    acts = adapter.capture(tokens, ["layers.0"])["layers.0"][~special]
    w = random_weights(32, 64, arch="relu", seed=0)
    w["b_enc"] -= 1.5  # sparse enough that most latents have windows where they are silent
    sae = saebench.build_sae("relu", w, act_scale=float(1 / acts.std()))  # the weights expect unit-scale inputs
    c = RecordConfig(
        latents=8, window=16, n_train=3, n_test=3, n_negatives=3, n_train_negatives=2, quantiles=2, min_activating=2
    )
    rs = build_records(sae, stream(acts), Corpus(tokens, special, adapter.token_strings), c.latents, c)
    assert rs.records and len(rs.records) + len(rs.skipped) == 8
    dense = sae.encode(acts).numpy()
    full = np.zeros((n_ctx, length, 64))
    full[~special.numpy()] = dense
    kinds = {e.kind for r in rs.records for e in r.test_negatives + r.train_negatives}
    assert kinds == {"hard", "random"}
    for rec in rs.records:
        for e in rec.train + rec.test + rec.test_negatives + rec.train_negatives:
            ctx, j = divmod(e.window, length // 16)
            window_ids = tokens[ctx, j * 16 : j * 16 + 16].tolist()
            assert e.text == adapter.tokenizer.decode(
                window_ids, skip_special_tokens=True, clean_up_tokenization_spaces=False
            )
            np.testing.assert_allclose(e.activations, full[ctx, j * 16 : j * 16 + 16, rec.latent], atol=1e-5)
