"""The built-in Gated SAE (Rajamanoharan et al. 2024) against the float64 definitions in tests/reference.py.

f = 1[π_gate > 0]·ReLU(π_mag), π_gate = x'·W_enc + b_gate, π_mag = x'·(exp(r_mag) ⊙ W_enc) + b_mag.
Where π_gate is within rounding of 0, float32 and float64 may disagree about the gate: those entries
are left out of comparisons (and must be few), the tolerance is not loosened.
"""

from __future__ import annotations

import csv
import io
import json
import math
import sqlite3

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

import saebench
import saebench.kernel
from reference import decode as ref_decode
from reference import gated as ref_gated
from reference import gated_losses as ref_losses
from reference import random_weights
from saebench.training import TrainConfig, TrainState, train_sae

D_IN, D_SAE = 48, 320
MARGIN = 1e-4  # |π_gate| below this: the gate may flip between float32 and float64
NAMES = {"W_enc", "W_dec", "b_dec", "b_gate", "r_mag", "b_mag"}

pytestmark = pytest.mark.usefixtures("one_thread")


def _f64(t) -> np.ndarray:
    return torch.as_tensor(t).detach().double().numpy()


def _x(n=77, seed=1, lead=(3,)):
    return torch.randn(*lead, n, D_IN, generator=torch.Generator().manual_seed(seed)) * 2


def densify(values, indices, d_sae=D_SAE) -> np.ndarray:
    v, i = values.reshape(-1, values.shape[-1]), indices.reshape(-1, indices.shape[-1])
    return torch.zeros(v.shape[0], d_sae, dtype=torch.float64).scatter_add_(1, i, v.detach().double()).numpy()


def assert_matches(f, ref: np.ndarray, pi_gate: np.ndarray, atol=2e-5) -> None:
    f = _f64(f).reshape(ref.shape)
    safe = np.abs(pi_gate) > MARGIN
    assert safe.mean() > 0.99, "test data too close to the gate"
    np.testing.assert_allclose(f[safe], ref[safe], rtol=1e-5, atol=atol)


# -- the definition, through every path -------------------------------------------------------------
@pytest.mark.parametrize("apply_b_dec", [False, True])
@pytest.mark.parametrize("act_scale", [1.0, 0.25])
def test_encode_and_decode_match_the_float64_definition(apply_b_dec, act_scale):
    w = random_weights(D_IN, D_SAE, arch="gated")
    sae = saebench.build_sae("gated", w, apply_b_dec_to_input=apply_b_dec, act_scale=act_scale)
    assert set(sae.weights()) == NAMES and "b_enc" not in dict(sae.named_parameters())
    x = _x()
    ref, pi_gate = ref_gated(x.numpy(), w, apply_b_dec_to_input=apply_b_dec, act_scale=act_scale)
    assert 0.02 < (ref != 0).mean() < 0.6
    assert ((pi_gate > 0) & (ref == 0)).mean() > 0.005  # open gates whose magnitude is ≤ 0: f is 0 there too

    dense = sae.encode(x)  # the kernel: fused GEMM + ReLU, finish_dense
    assert dense.shape == (3, 77, D_SAE)
    assert_matches(dense, ref, pi_gate)
    values, indices = sae.encode_sparse(x)  # the kernel's sparse path
    assert values.shape == indices.shape and values.shape[:-1] == (3, 77)
    assert values.shape[-1] == int((dense != 0).sum(-1).max()) and int((values != 0).sum()) == int((dense != 0).sum())
    assert_matches(densify(values, indices), ref.reshape(-1, D_SAE), pi_gate.reshape(-1, D_SAE))

    x_hat = ref_decode(ref, w, act_scale)
    np.testing.assert_allclose(_f64(sae(x)), x_hat, atol=5e-5)
    np.testing.assert_allclose(_f64(sae.decode(dense)), x_hat, atol=5e-5)
    np.testing.assert_allclose(_f64(sae.decode_sparse(values, indices)), x_hat, atol=5e-5)

    xg = x.clone().requires_grad_()  # autograd: the reference path, activation(pre_acts(x))
    fg = sae.encode(xg)
    assert_matches(fg, ref, pi_gate)
    vg, ig = sae.encode_sparse(xg)
    assert_matches(densify(vg, ig), ref.reshape(-1, D_SAE), pi_gate.reshape(-1, D_SAE))
    fg.sum().backward()
    assert torch.isfinite(xg.grad).all() and xg.grad.abs().sum() > 0


def test_latent_blocks_match_the_definition(monkeypatch):
    """Wide dictionaries run in latent blocks; each block's hooks see their slice of b_gate, r_mag, b_mag."""
    monkeypatch.setattr(saebench.kernel, "MAX_BLOCK_LATENTS", 64)
    w = random_weights(D_IN, D_SAE, arch="gated", seed=3)
    sae = saebench.build_sae("gated", w, apply_b_dec_to_input=True)
    assert len(saebench.kernel.plan_for(sae).blocks) == 5
    x = _x(130, lead=())
    ref, pi_gate = ref_gated(x.numpy(), w, apply_b_dec_to_input=True)
    assert_matches(sae.encode(x), ref, pi_gate)
    values, indices = sae.encode_sparse(x)
    assert_matches(densify(values, indices), ref, pi_gate)
    capped, _ = sae.encode_sparse(x, k_max=3)
    safe_rows = (np.abs(pi_gate) > MARGIN).all(-1)
    top3 = np.sort(np.sort(ref, axis=-1)[:, -3:], axis=-1)
    np.testing.assert_allclose(np.sort(_f64(capped), axis=-1)[safe_rows], top3[safe_rows], atol=2e-5)


def test_gate_and_magnitude_by_hand():
    """W_enc = I, so π_gate = x + b_gate and π_mag = x·e^r + b_mag; the gate is strict (π_gate = 0 is closed)."""
    w = {"W_enc": torch.eye(3), "W_dec": torch.eye(3), "b_dec": torch.zeros(3),
         "b_gate": torch.tensor([0.0, -0.5, 0.0]), "r_mag": torch.tensor([math.log(2.0), 0.0, 0.0]),
         "b_mag": torch.tensor([0.0, 0.25, -1.0])}
    sae = saebench.build_sae("gated", w)
    x = torch.tensor([[1.0, 1.0, 0.5], [0.0, 0.25, 2.0]])
    # row 0: gate open everywhere; 2·1 = 2; 1 + 0.25; 0.5 − 1 < 0 so 0 although the gate is open
    # row 1: π_gate = 0 (closed); 0.25 − 0.5 < 0 (closed, though π_mag = 0.5 > 0); 2 − 1 = 1
    want = [[2.0, 1.25, 0.0], [0.0, 0.0, 1.0]]
    np.testing.assert_allclose(_f64(sae.encode(x)), want, atol=1e-6)
    np.testing.assert_allclose(_f64(sae.encode(x.clone().requires_grad_())), want, atol=1e-6)
    values, indices = sae.encode_sparse(x)
    np.testing.assert_allclose(densify(values, indices, 3), want, atol=1e-6)
    assert values.shape == (2, 2)  # the open gate with magnitude 0 takes no slot


def test_bf16_compute_agrees_with_fp32():
    sae = saebench.build_sae("gated", random_weights(D_IN, D_SAE, arch="gated"))
    x = _x(256, lead=())
    exact, approx = sae.encode(x), sae.encode(x, compute_dtype=torch.bfloat16)
    both = (exact != 0) & (approx != 0)
    assert (approx - exact)[both].abs().max().item() < 0.03 * exact.abs().max().item()
    assert ((exact != 0) != (approx != 0)).sum().item() <= 0.03 * (exact != 0).sum().item()
    assert not torch.equal(approx, exact)


def test_config_and_weight_checks():
    w = random_weights(D_IN, D_SAE, arch="gated")
    with pytest.raises(saebench.CheckpointError, match="no k"):
        saebench.build_sae("gated", w, k=4)
    with pytest.raises(saebench.CheckpointError, match=r"missing tensor\(s\) b_gate"):
        saebench.build_sae("gated", {n: t for n, t in w.items() if n != "b_gate"})
    with pytest.raises(saebench.CheckpointError, match=r"r_mag has shape \[321\]"):
        saebench.build_sae("gated", {**w, "r_mag": torch.zeros(D_SAE + 1)})
    sae = saebench.build_sae("gated", w)
    assert sae.b_enc is sae.b_gate  # the base class's h = x'·W_enc + b_enc is π_gate
    with pytest.raises(saebench.ConfigError, match="no k"):
        TrainConfig.from_mapping({"arch": "gated", "d_sae": 64, "k": 4, "tokens": 10})


def test_a_gated_transcoder_decodes_to_its_own_width():
    g = torch.Generator().manual_seed(4)
    w = {**random_weights(D_IN, D_SAE, arch="gated"), "W_dec": torch.randn(D_SAE, 24, generator=g) * 0.1,
         "b_dec": torch.randn(24, generator=g)}
    sae = saebench.build_sae("gated", w, d_out=24)
    x = _x(40, lead=())
    ref, pi_gate = ref_gated(x.numpy(), w)
    assert_matches(sae.encode(x), ref, pi_gate)
    safe_rows = (np.abs(pi_gate) > MARGIN).all(-1)
    np.testing.assert_allclose(_f64(sae(x))[safe_rows], ref_decode(ref, w)[safe_rows], atol=5e-5)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_cuda_matches_the_definition():
    w = random_weights(D_IN, D_SAE, arch="gated")
    sae = saebench.build_sae("gated", w, apply_b_dec_to_input=True).to("cuda")
    x = _x(300, lead=())
    ref, pi_gate = ref_gated(x.numpy(), w, apply_b_dec_to_input=True)
    dense = sae.encode(x)
    assert dense.device.type == "cuda"
    assert_matches(dense.cpu(), ref, pi_gate, atol=1e-4)
    values, indices = sae.encode_sparse(x.cuda())
    assert_matches(densify(values.cpu(), indices.cpu()), ref, pi_gate, atol=1e-4)


# -- training -----------------------------------------------------------------------------------------
def _state(l1=2.0):
    return TrainState(cfg=TrainConfig(arch="gated", d_sae=D_SAE, tokens=100, l1=l1), dead=torch.zeros(D_SAE, dtype=torch.bool))


def test_training_loss_terms_match_the_paper():
    w = random_weights(D_IN, D_SAE, arch="gated")
    w["W_dec"] = w["W_dec"] * torch.linspace(0.5, 2.0, D_SAE)[:, None]  # unequal row norms: the weighting shows
    sae = saebench.build_sae("gated", w, apply_b_dec_to_input=True)
    x = _x(64, lead=())
    out = sae.training_forward(x, _state(l1=2.0))
    want = ref_losses(x.numpy(), w, l1=2.0)
    assert set(out.losses) == {"mse", "l1", "aux"}
    for name, value in want.items():
        assert float(out.losses[name]) == pytest.approx(value, rel=1e-5), name
    f, pi_gate = ref_gated(x.numpy(), w, apply_b_dec_to_input=True)
    np.testing.assert_allclose(_f64(out.x_hat), ref_decode(f, w), atol=5e-5)
    assert float(out.l0) == pytest.approx((f > 0).sum(-1).mean(), abs=0.05)
    safe = (np.abs(pi_gate) > MARGIN).all(0)  # latents no token has at the gate's edge
    assert safe.mean() > 0.95
    assert np.array_equal(out.fired.numpy()[safe], (f > 0).any(0)[safe])


def test_gradients_flow_where_the_paper_says():
    """The gate passes no gradient; the auxiliary reconstruction does not train the decoder."""
    w = random_weights(D_IN, D_SAE, arch="gated")
    x = _x(64, lead=())

    def grads(term):
        sae = saebench.build_sae("gated", w, apply_b_dec_to_input=True)
        sae.requires_grad_(True)
        sae.training_forward(x, _state()).losses[term].backward()
        return {n: (p.grad.abs().sum().item() if p.grad is not None else 0.0) for n, p in sae.named_parameters()}

    mse, aux, l1 = grads("mse"), grads("aux"), grads("l1")
    assert mse["b_gate"] < 1e-6 * mse["b_mag"] and mse["r_mag"] > 0 and mse["b_mag"] > 0 and mse["W_enc"] > 0 and mse["W_dec"] > 0
    assert aux["W_dec"] == 0 and aux["b_mag"] == 0 and aux["r_mag"] == 0 and aux["b_gate"] > 0 and aux["W_enc"] > 0
    assert aux["b_dec"] > 0  # through x' = x − b_dec, not through the frozen decoder's b_dec
    assert l1["b_gate"] > 0 and l1["r_mag"] == 0 and l1["b_mag"] == 0


def _planted(n, seed, dirs, active=4):
    g = torch.Generator().manual_seed(seed)
    idx = torch.rand(n, len(dirs), generator=g).topk(active, dim=1).indices
    coef = torch.zeros(n, len(dirs)).scatter_(1, idx, torch.rand(n, active, generator=g) + 0.5)
    return (coef @ dirs + 0.01 * torch.randn(n, dirs.shape[1], generator=g)) * 10


@pytest.fixture(scope="module")
def planted():
    g = torch.Generator().manual_seed(0)
    dirs = torch.randn(128, 32, generator=g)
    dirs /= dirs.norm(dim=1, keepdim=True)
    return dirs, _planted(30_000, 1, dirs), _planted(4096, 2, dirs)


def _fvu_l0(sae, test):
    with torch.no_grad():
        fvu = float((test - sae(test)).pow(2).sum() / (test - test.mean(0)).pow(2).sum())
        l0 = float((sae.encode(test) != 0).sum(-1).float().mean())
    return fvu, l0


def test_a_short_run_lowers_the_loss_and_reconstructs(planted, tmp_path):
    dirs, train, test = planted
    cfg = TrainConfig(arch="gated", d_sae=256, l1=3.0, batch_size=256, lr=1e-2, tokens=256 * 600)
    sae, stats = train_sae(cfg, lambda: iter(train.split(5000)), 32)
    assert stats.history[-1].loss < 0.1 * stats.history[0].loss
    assert set(stats.losses) == {"mse", "l1", "aux", "loss"}
    fvu, l0 = _fvu_l0(sae, test)
    assert fvu < 0.25 and 2 < l0 < 40, (fvu, l0)  # an untrained SAE: FVU ~1
    assert abs(stats.explained_variance - (1 - fvu)) < 0.1
    assert sae.arch == "gated" and not any(p.requires_grad for p in sae.parameters())
    assert float(sae.r_mag.abs().max()) > 0 and float(sae.b_mag.abs().max()) > 0  # the magnitude path trained
    back = saebench.load_sae(saebench.save_sae(sae, tmp_path / "gated"))
    assert json.loads((tmp_path / "gated" / "cfg.json").read_text())["arch"] == "gated"
    assert type(back) is type(sae) and back.cfg.act_scale == sae.cfg.act_scale
    for name, value in sae.weights().items():
        assert torch.equal(back.weights()[name], value), name
    assert torch.equal(back.encode(test), sae.encode(test))


@pytest.mark.slow
def test_a_longer_run_recovers_the_planted_dictionary_at_low_l0(planted):
    """The paper's point: the gate sets sparsity without shrinking the magnitudes."""
    dirs, train, test = planted
    cfg = TrainConfig(arch="gated", d_sae=256, l1=4.0, batch_size=256, lr=1e-2, tokens=256 * 2000)
    sae, _ = train_sae(cfg, lambda: iter(train.split(5000)), 32)
    fvu, l0 = _fvu_l0(sae, test)
    rows = sae.W_dec / sae.W_dec.norm(dim=1, keepdim=True)
    recovered = float(((dirs @ rows.T).max(1).values > 0.9).float().mean())
    assert recovered > 0.8 and l0 < 8 and fvu < 0.25, (recovered, l0, fvu)


def test_a_matrix_trains_and_scores_a_gated_sae(tiny_llama, tiny_corpus, tmp_path, monkeypatch):
    from saebench.results.leaderboard import render
    from saebench.run.execute import execute
    from saebench.run.matrix import parse_matrix
    from saebench.run.progress import Progress

    monkeypatch.chdir(tmp_path)
    matrix = parse_matrix({
        "name": "gated", "output": "runs/gated",
        "data": {"source": "text-files", "paths": [f"{tiny_corpus}/*.txt"], "tokens": 1024, "context_length": 32},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": ["layers.1"]}],
        "saes": [{"name": "g", "model": "tiny", "hookpoint": "layers.1",
                  "train": {"arch": "gated", "d_sae": 128, "l1": 2.0, "lr": 1e-2, "tokens": 256 * 40, "batch_size": 256}}],
        "scorers": ["sparsity", "reconstruction"],
    }, "m.yaml")
    execute(matrix, source="m.yaml", progress=Progress(False))
    rows = list(csv.DictReader(io.StringIO(render(tmp_path / "runs" / "gated", "csv"))))
    assert [r["sae"] for r in rows] == ["g"]
    l0, ev = float(rows[0]["sparsity.l0"]), float(rows[0]["reconstruction.explained_variance"])
    assert math.isfinite(l0) and 0 < l0 < 64 and ev > 0.5, (l0, ev)  # measured: L0 ~19, EV ~0.85 (untrained: ~65, < 0)
    trained = saebench.load_sae(tmp_path / "runs" / "gated" / "saes" / "g")
    assert trained.arch == "gated" and trained.cfg.metadata["training"]["config"]["l1"] == 2.0
    db = sqlite3.connect(tmp_path / "runs" / "gated" / "results.sqlite")
    scorers = {s for (s,) in db.execute("SELECT scorer FROM cells WHERE sae = 'g'")}
    db.close()
    assert scorers == {"sparsity", "reconstruction"}


# -- SAELens folders ----------------------------------------------------------------------------------
def _saelens_folder(folder, w, apply_b_dec=True):
    folder.mkdir(parents=True)
    cfg = {"architecture": "gated", "d_in": D_IN, "d_sae": D_SAE, "dtype": "float32", "device": "cpu",
           "apply_b_dec_to_input": apply_b_dec, "normalize_activations": "none", "reshape_activations": "none",
           "metadata": {"sae_lens_version": "6.5.0", "model_name": "gpt2", "hook_name": "blocks.3.hook_resid_post"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    save_file({n: w[n].contiguous() for n in NAMES}, str(folder / "sae_weights.safetensors"))
    return folder


@pytest.mark.parametrize("apply_b_dec", [True, False])
def test_a_saelens_gated_folder_loads_as_the_builtin(tmp_path, apply_b_dec):
    w = random_weights(D_IN, D_SAE, arch="gated", seed=5)
    sae = saebench.load_sae(_saelens_folder(tmp_path / "lens", w, apply_b_dec))
    assert sae.arch == "gated" and sae.cfg.apply_b_dec_to_input is apply_b_dec
    assert sae.cfg.model_name == "gpt2" and sae.cfg.hook_name == "blocks.3.hook_resid_post"
    x = _x(50, lead=())
    ref, pi_gate = ref_gated(x.numpy(), w, apply_b_dec_to_input=apply_b_dec)
    assert_matches(sae.encode(x), ref, pi_gate)


@pytest.mark.peers
def test_saelens_itself_agrees(tmp_path):
    try:
        from sae_lens.registry import get_sae_class
        from sae_lens.saes.sae import SAEMetadata
    except Exception as exc:  # not installed, or broken by its dependencies
        pytest.skip(f"sae_lens does not import: {exc}")
    cls, cfg_cls = get_sae_class("gated")
    lens = cls(cfg_cls(d_in=D_IN, d_sae=D_SAE, metadata=SAEMetadata(model_name="gpt2", hook_name="blocks.3.hook_resid_post")))
    w = random_weights(D_IN, D_SAE, arch="gated", seed=6)
    lens.load_state_dict({n: w[n] for n in NAMES})
    lens.save_model(tmp_path / "lens")
    ours = saebench.load_sae(tmp_path / "lens")
    assert ours.arch == "gated"
    x = _x(50, lead=())
    with torch.no_grad():
        f_lens = lens.encode(x)
        x_hat_lens = lens.decode(f_lens)
    assert (f_lens != 0).any()
    torch.testing.assert_close(ours.encode(x), f_lens, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(ours(x), x_hat_lens, atol=1e-5, rtol=1e-5)
