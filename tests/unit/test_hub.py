"""Published SAEs (saebench.models.hub, saebench.models.hooknames, saebench.run.sources): hf:// paths read
through huggingface_hub's own snapshot_download from a Hugging Face cache folder built here in the standard
layout, offline (HF_HUB_OFFLINE=1), SAELens's release directory read as data, hook points taken from
checkpoints, and a run of both on the tiny model. Nothing here touches the network."""

import csv
import io
import json
import sqlite3
import sys

import pytest
from safetensors.torch import save_file

import saebench
from reference import random_weights
from saebench import cli
from saebench.errors import CheckpointError, ConfigError
from saebench.models import hub
from saebench.models.hooknames import checkpoint_hook_name, to_hookpoint
from saebench.results.leaderboard import render
from saebench.run.components import build_components
from saebench.run.execute import execute
from saebench.run.matrix import parse_matrix
from saebench.run.plan import make_plan
from saebench.run.progress import Progress

REV = "0123456789abcdef0123456789abcdef01234567"
REV2 = "89abcdef0123456789abcdef0123456789abcdef"
SENTINEL = "hf_SENTINEL_never_written_anywhere_0xC0FFEE"
D_MODEL, D_SAE = 32, 64


def saelens_folder(folder, hook_name="blocks.1.hook_resid_post", seed=0):
    folder.mkdir(parents=True, exist_ok=True)
    save_file(random_weights(D_MODEL, D_SAE, arch="relu", seed=seed), str(folder / "sae_weights.safetensors"))
    cfg = {"architecture": "standard", "d_in": D_MODEL, "d_sae": D_SAE, "dtype": "float32",
           "metadata": {"model_name": "tiny", "hook_name": hook_name, "sae_lens_version": "6.5.0"}}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def snapshot(cache, repo="org/repo", rev=REV, refs=("main",)):
    """The snapshot folder of ``repo`` at commit ``rev`` in a Hugging Face cache, with ``refs`` pointing at it."""
    root = cache / f"models--{repo.replace('/', '--')}"
    for ref in refs:
        (root / "refs").mkdir(parents=True, exist_ok=True)
        (root / "refs" / ref).write_text(rev)
    (root / "snapshots" / rev).mkdir(parents=True, exist_ok=True)
    return root / "snapshots" / rev


@pytest.fixture
def cache(tmp_path, monkeypatch):
    """An offline Hugging Face cache holding org/repo at REV (main) with a SAELens SAE in sub/ and, at REV2
    (tag v2), another in sub/; HF_TOKEN is a sentinel that must never be written anywhere."""
    root = tmp_path / "hf-cache"
    saelens_folder(snapshot(root) / "sub")
    saelens_folder(snapshot(root, rev=REV2, refs=("v2",)) / "sub", seed=1)
    monkeypatch.setenv("HF_HUB_CACHE", str(root))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    monkeypatch.delenv("SAEBENCH_SAE_DIRECTORY", raising=False)
    return root


# -- hf:// paths --------------------------------------------------------------------------------------
def test_hf_paths_are_parsed_and_malformed_ones_named():
    assert hub.parse("hf://org/repo/a/b@v2") == hub.HubPath("org/repo", "a/b", "v2")
    assert hub.parse("hf://org/repo/sub/") == hub.HubPath("org/repo", "sub", None)
    assert hub.parse("hf://org/repo") == hub.HubPath("org/repo", "", None)
    assert hub.parse("hf://org/repo/sub@" + REV).text == "hf://org/repo/sub@" + REV
    for bad in ("hf://org", "hf://org//sub", "hf://org/repo/../x", "hf://org/repo/sub@", "hf:///repo"):
        with pytest.raises(ConfigError, match="hf://ORG/REPO/SUBFOLDER") as err:
            hub.parse(bad)
        assert err.value.where == bad


def test_load_sae_reads_the_cached_folder_offline(cache):
    sae = saebench.load_sae("hf://org/repo/sub")
    assert (sae.cfg.d_in, sae.cfg.d_sae, sae.cfg.hook_name) == (D_MODEL, D_SAE, "blocks.1.hook_resid_post")
    assert sae.cfg.metadata["format"] == "saelens" and sae.cfg.metadata["path"] == "hf://org/repo/sub"
    same = saebench.load_sae(str(cache / "models--org--repo" / "snapshots" / REV / "sub"))
    assert (sae.W_enc == same.W_enc).all()
    # a revision: a commit hash, a branch or tag the cache's refs know
    pinned = saebench.load_sae(f"hf://org/repo/sub@{REV}")
    assert (pinned.W_enc == sae.W_enc).all()
    tagged = saebench.load_sae("hf://org/repo/sub@v2")
    assert not (tagged.W_enc == sae.W_enc).all()
    assert (saebench.load_sae(f"hf://org/repo/sub@{REV2}").W_enc == tagged.W_enc).all()


@pytest.mark.parametrize("path,problem", [
    ("hf://org/repo/nope", "no file or folder 'nope' in org/repo at revision main"),
    ("hf://org/other/sub", "is not in the Hugging Face cache"),
    ("hf://org/repo/sub@v3", "revision 'v3' is not in the Hugging Face cache"),
    ("hf://org/repo/sub@" + "f" * 40, "is not in the Hugging Face cache"),
])
def test_what_cannot_be_found_is_one_line_naming_the_path(cache, path, problem):
    with pytest.raises(CheckpointError) as err:
        saebench.load_sae(path)
    assert err.value.where == path and problem in err.value.problem, str(err.value)
    assert "\n" not in str(err.value) and SENTINEL not in str(err.value)
    if "cache" in problem:
        assert "HF_HUB_OFFLINE is set" in err.value.problem and str(cache) in err.value.problem


def test_a_loader_error_names_the_published_file(cache):
    (cache / "models--org--repo" / "snapshots" / REV / "sub" / "cfg.json").write_text("{not json")
    with pytest.raises(CheckpointError) as err:
        saebench.load_sae("hf://org/repo/sub")
    assert err.value.where == "hf://org/repo/sub/cfg.json" and "invalid JSON" in err.value.problem


def test_inspect_reads_an_hf_path_and_fails_in_one_line(cache, capsys):
    assert cli.main(["inspect", "hf://org/repo/sub", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["metadata"]["path"] == "hf://org/repo/sub"
    assert cli.main(["inspect", "hf://org/repo/missing"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 1 and err[0].startswith("saebench: error: hf://org/repo/missing: no file or folder")


def test_only_the_saes_files_are_asked_for_with_the_environments_cache_and_token(tmp_path, monkeypatch):
    calls = []

    def fake_snapshot_download(repo_id, **kw):
        calls.append((repo_id, kw))
        folder = snapshot(tmp_path / "c", repo_id)
        (folder / "a" / "b").mkdir(parents=True, exist_ok=True)
        return str(folder)

    monkeypatch.setattr("huggingface_hub.snapshot_download", fake_snapshot_download)
    monkeypatch.delenv("HF_HUB_CACHE", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("HF_TOKEN", SENTINEL)
    assert hub.resolve("hf://o/r/a/b@v1").parts[-2:] == ("a", "b")
    hub.resolve("hf://o/r/a/b", configs_only=True)
    (repo, kw), (_, configs) = calls
    assert repo == "o/r" and kw["revision"] == "v1" and kw["allow_patterns"] == ["a/b", "a/b/*"]
    assert kw["cache_dir"] == str(tmp_path / "home" / "hub") and kw["token"] == SENTINEL
    assert kw["local_files_only"] is False and configs["revision"] is None
    assert configs["allow_patterns"] == ["a/b/*.json", "a/b/*.yaml", "a/b/*.yml"]
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN")
    hub.resolve("hf://o/r/a/b")
    assert calls[-1][1]["local_files_only"] is True and calls[-1][1]["token"] is None


def test_the_fingerprint_covers_the_revision_and_the_commit_the_cache_resolves(cache):
    assert hub.fingerprint("hf://org/repo/sub") == f"org/repo@{REV}/sub"
    assert hub.fingerprint("hf://org/repo/sub@v2") == f"org/repo@{REV2}/sub"
    assert hub.fingerprint("hf://org/repo/sub@" + REV2) == f"org/repo@{REV2}/sub"
    assert hub.fingerprint("hf://org/never-fetched/sub") == "org/never-fetched@main/sub"
    (cache / "models--org--repo" / "refs" / "main").write_text(REV2)  # main moved on: a new commit, a new hash
    assert hub.fingerprint("hf://org/repo/sub") == f"org/repo@{REV2}/sub"


# -- SAELens's directory --------------------------------------------------------------------------------
DIRECTORY = """\
gemma-scope-2-270m-pt-res:
  conversion_func: gemma_3
  model: google/gemma-3-270m-pt
  repo_id: org/repo
  saes:
  - id: layer_1_width_64_l0_small
    path: sub
    l0: 10
    neuronpedia: tiny/1-gemmascope-2-res-64
  - id: layer_1_width_64_l0_big
    path: sub/
    l0: 60
tiny-res-jb:
  repo_id: org/repo
  model: tiny
  conversion_func:
  saes:
  - id: blocks.1.hook_resid_post
    path: sub
"""


@pytest.fixture
def directory(tmp_path, monkeypatch):
    file = tmp_path / "pretrained_saes.yaml"
    file.write_text(DIRECTORY)
    monkeypatch.setenv("SAEBENCH_SAE_DIRECTORY", str(file))
    return file


def test_a_release_resolves_to_its_hf_path(directory):
    assert hub.release_path("gemma-scope-2-270m-pt-res", "layer_1_width_64_l0_small", "m.yaml: saes[0]") == "hf://org/repo/sub"
    assert hub.release_path("tiny-res-jb", "blocks.1.hook_resid_post", "w") == "hf://org/repo/sub"


def test_an_older_directory_nests_releases_under_sae_lookup(tmp_path, monkeypatch):
    file = tmp_path / "old.yaml"
    file.write_text("SAE_LOOKUP:\n" + "".join(f"  {line}\n" for line in DIRECTORY.splitlines()))
    monkeypatch.setenv("SAEBENCH_SAE_DIRECTORY", str(file))
    assert hub.release_path("tiny-res-jb", "blocks.1.hook_resid_post", "w") == "hf://org/repo/sub"


@pytest.mark.parametrize("release,sae_id,key,problem", [
    ("gemma-scope-2-270m-pt-rse", "x", "release", "did you mean 'gemma-scope-2-270m-pt-res'"),
    ("gemma-scope-2-270m-pt-res", "layer_1_width_64_l0_smal", "sae_id", "did you mean 'layer_1_width_64_l0_small'"),
])
def test_unknown_releases_and_ids_suggest_close_matches(directory, release, sae_id, key, problem):
    with pytest.raises(ConfigError) as err:
        hub.release_path(release, sae_id, "m.yaml: saes[2]")
    assert err.value.where == f"m.yaml: saes[2].{key}" and problem in err.value.problem
    assert "\n" not in str(err.value)


def test_without_sae_lens_or_a_directory_the_error_says_what_to_do(monkeypatch):
    monkeypatch.delenv("SAEBENCH_SAE_DIRECTORY", raising=False)
    real = hub.importlib.util.find_spec
    monkeypatch.setattr(hub.importlib.util, "find_spec", lambda name, *a: None if name == "sae_lens" else real(name, *a))
    with pytest.raises(ConfigError) as err:
        hub.release_path("r", "i", "m.yaml: saes[0]")
    assert err.value.where == "m.yaml: saes[0].release"
    for hint in ("pip install sae-lens", "SAEBENCH_SAE_DIRECTORY=", "path: hf://"):
        assert hint in err.value.problem
    monkeypatch.setenv("SAEBENCH_SAE_DIRECTORY", "/no/such/pretrained_saes.yaml")
    with pytest.raises(ConfigError, match="no such file"):
        hub.release_path("r", "i", "m.yaml: saes[0]")


def test_the_installed_packages_directory_is_read_without_importing_it(tmp_path, monkeypatch):
    package = tmp_path / "site" / "sae_lens"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('importing sae_lens pulls in model code')\n")
    (package / "pretrained_saes.yaml").write_text(DIRECTORY)
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    monkeypatch.delenv("SAEBENCH_SAE_DIRECTORY", raising=False)
    monkeypatch.delitem(sys.modules, "sae_lens", raising=False)
    assert hub.release_path("tiny-res-jb", "blocks.1.hook_resid_post", "w") == "hf://org/repo/sub"
    assert "sae_lens" not in sys.modules


# -- hook points named by checkpoints ---------------------------------------------------------------
@pytest.mark.parametrize("name,hookpoint", [
    ("blocks.12.hook_resid_post", "layers.12"), ("blocks.3.hook_resid_pre", "layers.2"),
    ("blocks.4.hook_mlp_out", "layers.4.mlp_out"), ("blocks.4.hook_attn_out", "layers.4.attn_out"),
    ("blocks.4.attn.hook_z", "layers.4.attn.z"), ("blocks.4.ln2.hook_normalized", "layers.4.mlp_in"),
    ("blocks.4.mlp.hook_post", "layers.4.mlp.hidden"), ("model.layers.12", "layers.12"),
    ("model.layers.12.output", "layers.12"), ("model.language_model.layers.5.mlp", "layers.5.mlp"),
    ("model.layers.5.post_feedforward_layernorm.output", "layers.5.mlp_out"),
    ("model.layers.5.self_attn.o_proj.input", "layers.5.attn.z"),
    ("model.layers.5.pre_feedforward_layernorm.output", "layers.5.mlp_in"),
    ("transformer.h.3", "layers.3"), ("layers.6", "layers.6"), ("layers.6.mlp.hidden", "layers.6.mlp.hidden"),
])
def test_hook_names_map_to_hook_points(name, hookpoint):
    assert to_hookpoint(name) == hookpoint


@pytest.mark.parametrize("name,why", [
    ("blocks.0.hook_resid_pre", "embeddings"), ("blocks.3.hook_mlp_in", "before the MLP's norm"),
    ("blocks.3.hook_resid_mid", "before the MLP's norm"), ("hook_embed", "not a TransformerLens hook name"),
])
def test_hook_names_without_a_hook_point_say_why(name, why):
    with pytest.raises(ValueError, match=why):
        to_hookpoint(name)


def test_checkpoints_name_their_hook_in_their_config_or_their_path(tmp_path):
    folder = saelens_folder(tmp_path / "sl")
    assert checkpoint_hook_name(folder, "sl") == "blocks.1.hook_resid_post"
    assert checkpoint_hook_name(folder / "sae_weights.safetensors", "sl/sae_weights.safetensors") == "blocks.1.hook_resid_post"
    (folder / "cfg.json").write_text(json.dumps({"hook_point": "blocks.2.hook_resid_pre", "d_in": 32}))  # SAELens 3
    assert checkpoint_hook_name(folder, "sl") == "blocks.2.hook_resid_pre"
    gs2 = tmp_path / "resid_post" / "layer_12_width_16k_l0_medium"
    gs2.mkdir(parents=True)
    assert checkpoint_hook_name(gs2, "hf://google/gemma-scope-2-270m-pt/mlp_out_all/layer_7_width_16k_l0_big") == "blocks.7.hook_mlp_out"
    assert checkpoint_hook_name(gs2, str(gs2)) == "blocks.12.hook_resid_post"
    (gs2 / "config.json").write_text(json.dumps({"hf_hook_point_in": "model.layers.12.self_attn.o_proj.input"}))
    assert checkpoint_hook_name(gs2, str(gs2)) == "model.layers.12.self_attn.o_proj.input"  # the config wins
    gs1 = tmp_path / "models--google--gemma-scope-2b-pt-att" / "snapshots" / REV / "layer_3" / "width_16k" / "average_l0_9"
    gs1.mkdir(parents=True)
    assert checkpoint_hook_name(gs1, "x") == "blocks.3.attn.hook_z"
    sparsify = tmp_path / "run" / "layers.5"
    sparsify.mkdir(parents=True)
    assert checkpoint_hook_name(sparsify, str(sparsify)) == "layers.5"
    assert checkpoint_hook_name(tmp_path / "run", str(tmp_path / "run")) is None


# -- matrices ---------------------------------------------------------------------------------------------
def _matrix(tiny_llama, corpus, saes, hookpoints=("layers.0",)):
    return {
        "name": "published",
        "output": "runs/published",
        "data": {"source": "text-files", "paths": [f"{corpus}/*.txt"], "tokens": 1024, "context_length": 32},
        "models": [{"name": "tiny", "path": str(tiny_llama), "hookpoints": list(hookpoints)}],
        "saes": saes,
        "scorers": ["sparsity", "reconstruction"],
    }


def test_a_published_sae_without_hookpoint_runs_end_to_end(cache, directory, tiny_llama, tiny_corpus, tmp_path,
                                                            monkeypatch, capfd):
    monkeypatch.chdir(tmp_path)
    saes = [{"name": "hub", "model": "tiny", "path": "hf://org/repo/sub"},
            {"name": "release", "model": "tiny", "release": "gemma-scope-2-270m-pt-res",
             "sae_id": "layer_1_width_64_l0_small"},
            {"name": "tagged", "model": "tiny", "hookpoint": "layers.1", "path": "hf://org/repo/sub@v2"}]
    raw = _matrix(tiny_llama, tiny_corpus, saes)
    matrix = parse_matrix(raw, "m.yaml")
    assert [s.hookpoint for s in matrix.saes] == ["layers.1"] * 3
    assert matrix.saes[1].path == "hf://org/repo/sub" and matrix.models[0].hookpoints == ["layers.0", "layers.1"]
    plan = make_plan(matrix, "m.yaml", build_components(matrix, "m.yaml"))
    assert plan.saes["hub"].identity["fingerprint"] == f"org/repo@{REV}/sub"
    assert plan.saes["tagged"].identity["fingerprint"] == f"org/repo@{REV2}/sub"
    execute(matrix, source="m.yaml", progress=Progress(False))
    rows = {r["sae"]: r for r in csv.DictReader(io.StringIO(render(tmp_path / "runs" / "published", "csv")))}
    assert set(rows) == {"hub", "release", "tagged"} and {r["hookpoint"] for r in rows.values()} == {"layers.1"}
    assert rows["hub"]["sparsity.l0"] == rows["release"]["sparsity.l0"] != rows["tagged"]["sparsity.l0"]
    assert float(rows["hub"]["reconstruction.explained_variance"]) == float(rows["release"]["reconstruction.explained_variance"])
    again = execute(parse_matrix(_matrix(tiny_llama, tiny_corpus, saes), "m.yaml"), source="m.yaml", progress=Progress(False))
    assert again.skipped == 6 and again.pending == 0  # the same hashes: nothing recomputed
    # the token is in no result, cache key, file name or output
    out = tmp_path / "runs" / "published"
    for f in out.rglob("*"):
        assert SENTINEL not in str(f)
        if f.is_file():
            assert SENTINEL.encode() not in f.read_bytes(), f
    captured = capfd.readouterr()
    assert SENTINEL not in captured.out + captured.err
    db = sqlite3.connect(out / "results.sqlite")
    configs = [json.loads(c) for (c,) in db.execute("SELECT config FROM cells")]
    db.close()
    assert {c["sae"]["path"] for c in configs} == {"hf://org/repo/sub", "hf://org/repo/sub@v2"}


def test_a_new_commit_of_main_recomputes_the_cells(cache, tiny_llama, tiny_corpus, tmp_path):
    def hashes():
        m = parse_matrix(_matrix(tiny_llama, tiny_corpus, [{"name": "hub", "model": "tiny", "path": "hf://org/repo/sub"}]), "m.yaml")
        return {c.config_hash for c in make_plan(m, "m.yaml", build_components(m, "m.yaml")).cells}

    before = hashes()
    (cache / "models--org--repo" / "refs" / "main").write_text(REV2)
    assert hashes().isdisjoint(before)


@pytest.mark.parametrize("sae,key,problem", [
    ({"path": "hf://org"}, "saes[0].path: hf://org", "hf://ORG/REPO/SUBFOLDER"),
    ({"path": "hf://org/missing/sub"}, "saes[0].path: hf://org/missing/sub", "not in the Hugging Face cache"),
    ({"release": "tiny-res-jb"}, "saes[0].sae_id", "go together"),
    ({"sae_id": "x", "path": "hf://org/repo/sub"}, "saes[0].release", "go together"),
    ({"release": "tiny-res-jb", "sae_id": "blocks.1.hook_resid_post", "path": "hf://org/repo/other"}, "saes[0]",
     "not both"),
    ({"train": {"arch": "relu", "d_sae": 64, "tokens": 1024}}, "saes[0].hookpoint", "needs 'hookpoint'"),
])
def test_bad_published_entries_name_their_key(cache, directory, tiny_llama, tiny_corpus, sae, key, problem):
    with pytest.raises(ConfigError) as err:
        parse_matrix(_matrix(tiny_llama, tiny_corpus, [{"name": "s", "model": "tiny", **sae}]), "m.yaml")
    assert err.value.where == f"m.yaml: {key}" and problem in err.value.problem, str(err.value)


def test_a_hook_name_without_a_hook_point_stops_the_check(cache, tiny_llama, tiny_corpus):
    cfg = cache / "models--org--repo" / "snapshots" / REV / "sub" / "cfg.json"
    cfg.write_text(cfg.read_text().replace("blocks.1.hook_resid_post", "blocks.0.hook_resid_pre"))
    with pytest.raises(ConfigError) as err:
        parse_matrix(_matrix(tiny_llama, tiny_corpus, [{"name": "s", "model": "tiny", "path": "hf://org/repo/sub"}]), "m.yaml")
    assert err.value.where == "m.yaml: saes[0].hookpoint"
    assert "'blocks.0.hook_resid_pre'" in err.value.problem and "embeddings" in err.value.problem


def test_a_mapped_hook_point_the_model_lacks_names_the_sae_and_both_names(cache, tiny_llama, tiny_corpus, tmp_path,
                                                                         monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = cache / "models--org--repo" / "snapshots" / REV / "sub" / "cfg.json"
    cfg.write_text(cfg.read_text().replace("blocks.1.hook_resid_post", "blocks.7.hook_resid_post"))
    matrix = parse_matrix(_matrix(tiny_llama, tiny_corpus, [{"name": "s", "model": "tiny", "path": "hf://org/repo/sub"}]), "m.yaml")
    assert matrix.saes[0].hookpoint == "layers.7"  # added to the model's hook points; the model has 2 layers
    with pytest.raises(ConfigError) as err:
        execute(matrix, source="m.yaml", progress=Progress(False))
    assert err.value.where == "m.yaml: saes[0].hookpoint"
    for part in ("'s'", "'blocks.7.hook_resid_post'", "'layers.7'", "model 'tiny'"):
        assert part in err.value.problem


# -- a Gemma Scope 2 release, end to end -----------------------------------------------------------
GS2 = "resid_post/layer_1_width_64_l0_medium"


def gemma_scope_2_folder(folder, seed=0):
    """A Gemma Scope 2 SAE in the release's layout and names: params.safetensors with lower-case w_enc
    [d_in, d_sae], w_dec, b_enc, b_dec and threshold (some below 0), and a config.json."""
    import torch

    gen = torch.Generator().manual_seed(seed)
    w_enc = torch.randn(D_MODEL, D_SAE, generator=gen) * 0.3
    params = {"w_enc": w_enc, "w_dec": torch.randn(D_SAE, D_MODEL, generator=gen) * 0.3,
              "b_enc": torch.randn(D_SAE, generator=gen) * 0.1, "b_dec": torch.randn(D_MODEL, generator=gen) * 0.1,
              "threshold": torch.rand(D_SAE, generator=gen) * 0.4 - 0.1}  # fmt: skip
    folder.mkdir(parents=True, exist_ok=True)
    save_file(params, str(folder / "params.safetensors"))
    (folder / "config.json").write_text(json.dumps({"architecture": "jump_relu", "width": D_SAE, "l0": 20}))
    return params


def test_a_gemma_scope_2_release_and_its_hf_path_load_exactly_and_get_a_full_row(cache, tmp_path, monkeypatch,
                                                                                  tiny_llama, tiny_corpus):
    import numpy as np
    import torch

    params = gemma_scope_2_folder(snapshot(cache, repo="google/gemma-scope-2-tiny-pt") / GS2)
    directory = tmp_path / "pretrained_saes.yaml"
    directory.write_text("gemma-scope-2-tiny-pt-res:\n  conversion_func: gemma_3\n  model: tiny\n"
                         "  repo_id: google/gemma-scope-2-tiny-pt\n  saes:\n"
                         f"  - id: layer_1_width_64_l0_medium\n    path: {GS2}\n    l0: 20\n")
    monkeypatch.setenv("SAEBENCH_SAE_DIRECTORY", str(directory))
    # the tool's formula in float64: f = ReLU(h)·1[h > θ], h = x·w_enc + b_enc (no pre-encoder bias)
    sae = saebench.load_sae(f"hf://google/gemma-scope-2-tiny-pt/{GS2}")
    x = torch.randn(50, D_MODEL, generator=torch.Generator().manual_seed(3)).double()
    p = {k: v.double() for k, v in params.items()}
    h = x @ p["w_enc"] + p["b_enc"]
    f = h.clamp_min(0) * (h > p["threshold"])
    np.testing.assert_allclose(sae.encode(x.float()).double().numpy(), f.numpy(), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(sae.decode(f.float()).double().numpy(), (f @ p["w_dec"] + p["b_dec"]).numpy(),
                               rtol=1e-5, atol=1e-5)
    assert sae.cfg.metadata["gemmascope"]["site"] == "resid_post" and sae.cfg.metadata["gemmascope"]["layer"] == 1
    # a matrix names it by release and by path, neither with a hook point: both resolve to layers.1
    monkeypatch.chdir(tmp_path)
    saes = [{"name": "gs2-release", "model": "tiny", "release": "gemma-scope-2-tiny-pt-res",
             "sae_id": "layer_1_width_64_l0_medium"},
            {"name": "gs2-path", "model": "tiny", "path": f"hf://google/gemma-scope-2-tiny-pt/{GS2}"}]  # fmt: skip
    raw = {**_matrix(tiny_llama, tiny_corpus, saes), "scorers": ["sparsity", "reconstruction",
           {"name": "downstream", "options": {"tokens": 256}}]}  # fmt: skip
    execute(parse_matrix(raw, "m.yaml"), source="m.yaml", progress=Progress(False))
    rows = {r["sae"]: r for r in csv.DictReader(io.StringIO(render(tmp_path / "runs" / "published", "csv")))}
    assert set(rows) == {"gs2-release", "gs2-path"}
    for row in rows.values():
        assert row["hookpoint"] == "layers.1"
        for column in ("sparsity.l0", "reconstruction.explained_variance", "downstream.ce_loss_score", "downstream.kl_score"):
            assert row[column] not in ("", None), column
    assert rows["gs2-release"]["reconstruction.fvu"] == rows["gs2-path"]["reconstruction.fvu"]
