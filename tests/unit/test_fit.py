"""Scaling-law fits (saebench fit): recovery of known laws, intervals, too few points, and the command."""

import json

import numpy as np
import pytest

from saebench.cli import main
from saebench.results.fit import JOINT, POWER, FitResult, Point, _bootstrap, _one, fit_curves
from saebench.run.store import CellKey, ResultsStore
from saebench.uncertainty import mean_units

C, B, A = 0.05, 2.0, -0.5
NS = 256 * 2.0 ** (np.arange(13) / 2)  # 256 .. 16384
JOINT_TRUTH = {"alpha": 1.0, "beta_k": -0.3, "beta_n": -0.4, "gamma": 0.02, "zeta": -3.0, "eta": -0.2}


def law(n):
    return C + B * n**A


def joint_law(n, k, t=JOINT_TRUTH):
    lk, ln = np.log(k), np.log(n)
    return np.exp(t["alpha"] + t["beta_k"] * lk + t["beta_n"] * ln + t["gamma"] * lk * ln) + np.exp(t["zeta"] + t["eta"] * lk)


def points(ys, ns=NS, k=None):
    return [Point(("m", "h", f"s{i}"), float(n), k, float(y)) for i, (n, y) in enumerate(zip(ns, ys))]


class NoUnits:
    def units(self):
        return {}


def fitted(law_name, pts, resamples=300, **kw):
    f = _one(law_name, "all", pts, **kw)
    _bootstrap(NoUnits(), "reconstruction.fvu", [f], resamples, 0, 0.95)
    return f


def test_noisy_power_law_recovers_the_exponent_within_its_interval():
    rng = np.random.default_rng(0)
    f = fitted(POWER, points(law(NS) * (1 + 0.01 * rng.standard_normal(NS.size))), resamples=500)
    lo, hi = f.ci["a"]
    assert lo < A < hi
    assert f.params["a"] == pytest.approx(A, abs=0.05)
    assert f.params["c"] == pytest.approx(C, rel=0.1)
    assert f.r2 > 0.99 and f.rmse_log < 0.02
    assert f.ci_method.startswith("residual bootstrap") and f.failed_resamples == 0


def test_noiseless_power_law_is_recovered_exactly():
    f = _one(POWER, "all", points(law(NS)))
    assert f.params == pytest.approx({"c": C, "b": B, "a": A}, rel=1e-6, abs=1e-6)
    assert f.rmse_log < 1e-6 and f.r2 == pytest.approx(1.0)
    assert np.allclose(f.predict(NS), law(NS), rtol=1e-6)


def test_joint_law_is_recovered_on_a_grid_of_n_and_k():
    ks, ns = [8, 16, 32, 64], NS[::2]
    pts = [Point(("m", "h", f"{k}-{n}"), float(n), k, float(joint_law(n, k))) for k in ks for n in ns]
    f = _one(JOINT, "all", pts, groups=len(ks))
    assert f.params == pytest.approx(JOINT_TRUTH, rel=1e-4, abs=1e-4)
    assert np.allclose(f.predict(ns, np.full(ns.size, 16.0)), joint_law(ns, 16), rtol=1e-6)


def test_too_few_points_are_not_fitted_with_the_reason():
    f = _one(POWER, "k=8", points(law(NS[:2])))
    assert f.params is None and "needs 3 points" in f.reason
    j = _one(JOINT, "all", points(law(NS[:5]), k=8), groups=1)
    assert j.params is None and "2 groups" in j.reason
    with pytest.raises(ValueError):
        FitResult("g", POWER, []).predict(NS)


def build_store(folder, *, units=True, missing_width=False):
    """SAEs of widths NS at k in (8, 32), reconstruction.fvu from the known law, per-context statistics
    with a shared context effect (so paired resampling moves every SAE together)."""
    rng = np.random.default_rng(1)
    contexts = 40
    shared = 1 + 0.05 * rng.standard_normal(contexts)
    store = ResultsStore(folder)
    run = store.start_run({"name": "fit"}, {"saebench": "0"}, seed=0)
    for k in (8, 32):
        for i, n in enumerate(NS):
            name = f"topk-{k}-{int(n)}"
            per_context = law(n) * (1 + 0.3 / k) * shared * (1 + 0.002 * rng.standard_normal(contexts))
            u = mean_units("context", list(range(contexts)), {"fvu": list(per_context)})
            config = {}
            if i % 2:  # a trained SAE: its width in the cell's train block
                config = {"sae": {"train": {"arch": "topk", "d_sae": int(n), "k": k}}}
            else:  # a loaded one: the resolved config's top level
                store.write_sae("m", "h", name, {"arch": "topk", "d_in": 16, "d_sae": int(n), "k": k})
            store.write_cell(CellKey("m", "h", name, "reconstruction"), config_hash="x", config=config, run_id=run,
                             seconds=0.1, metrics={"fvu": u.value("fvu")}, units=u if units else None)
    if missing_width:
        store.write_cell(CellKey("m", "h", "mystery", "reconstruction"), config_hash="x", config={}, run_id=run,
                         seconds=0.1, metrics={"fvu": 0.1})
    store.close()


def test_fit_curves_reads_widths_and_pairs_contexts(tmp_path):
    build_store(tmp_path)
    with ResultsStore.existing(tmp_path) as store:
        fits = fit_curves(store, "reconstruction.fvu", "d_sae", "k", resamples=200)
    assert [(f.group, f.law) for f in fits] == [("k=8", POWER), ("k=32", POWER), ("all", JOINT)]
    for f in fits[:2]:
        assert len(f.points) == NS.size and f.params["a"] == pytest.approx(A, abs=0.03)
        assert f.ci["a"][0] < f.params["a"] < f.ci["a"][1]
        assert f.ci_method == "paired bootstrap over 40 contexts"
    assert fits[2].params is not None and len(fits[2].points) == 2 * NS.size


def test_cli_fit_prints_the_exponent(tmp_path, capsys):
    build_store(tmp_path, missing_width=True)
    code = main(["fit", str(tmp_path), "--metric", "reconstruction.fvu", "--x", "d_sae", "--format", "json",
                 "--resamples", "100"])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = json.loads(out.out)
    assert [r["law"] for r in rows] == [POWER]
    assert rows[0]["n_points"] == 2 * NS.size and rows[0]["a"] == pytest.approx(A, abs=0.05)
    assert rows[0]["a.ci_low"] < rows[0]["a"] < rows[0]["a.ci_high"]
    assert "skipped m/h/mystery: no d_sae" in out.err
    assert main(["fit", str(tmp_path), "--metric", "reconstruction.fvu", "--by", "k", "--resamples", "50"]) == 0
    text = capsys.readouterr().out
    assert "| k=8 | c + b*n^a |" in text and "| all | joint |" in text


def test_cli_fit_without_units_bootstraps_residuals(tmp_path, capsys):
    build_store(tmp_path, units=False)
    assert main(["fit", str(tmp_path), "--metric", "reconstruction.fvu", "--by", "k", "--format", "csv",
                 "--resamples", "50"]) == 0
    assert "residual bootstrap" in capsys.readouterr().out


@pytest.mark.parametrize("args", [["--metric", "reconstruction.nope"], ["--metric", "nope"]])
def test_cli_fit_unknown_metric_is_one_line_exit_2(tmp_path, capsys, args):
    build_store(tmp_path)
    assert main(["fit", str(tmp_path), *args]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "reconstruction.fvu" in err


def test_cli_fit_missing_store_is_exit_2(tmp_path, capsys):
    assert main(["fit", str(tmp_path / "none"), "--metric", "reconstruction.fvu"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


def test_the_report_draws_the_fitted_curves_over_the_points(tmp_path):
    import base64
    import re

    from saebench.results.report import write_report
    from saebench.results.scaling import scaling_section

    build_store(tmp_path)
    html = write_report(tmp_path, resamples=50).read_text(encoding="utf-8")
    assert 'id="scaling"' in html or ">Scaling<" in html
    with ResultsStore.existing(tmp_path) as store:
        section = scaling_section(store, resamples=50)
    svg = base64.b64decode(re.search(r"base64,([A-Za-z0-9+/=]+)", section).group(1)).decode()
    assert svg.count("<path") > 2 * NS.size  # markers and the curves
    assert "k=8" in section and "k=32" in section and "joint" in section
    # the exponent shown is the one fit_curves gives
    with ResultsStore.existing(tmp_path) as store:
        a = fit_curves(store, "reconstruction.fvu", "d_sae", "k", resamples=50)[0].params["a"]
    assert f"{a:.4g}" in section


def test_no_scaling_section_without_widths_to_fit(tmp_path):
    from saebench.results.scaling import scaling_section

    store = ResultsStore(tmp_path)
    run = store.start_run({"name": "x"}, {"saebench": "0"}, seed=0)
    store.write_cell(CellKey("m", "h", "one", "reconstruction"), config_hash="x", config={}, run_id=run,
                     seconds=0.1, metrics={"fvu": 0.1})
    assert scaling_section(store, resamples=10) is None
    store.close()
