"""The console script as a user runs it: listings, one-line errors with exit code 2."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import saebench
from reference import random_weights

SAEBENCH = Path(sys.executable).parent / "saebench"


def openai_state_dict(d_in=4, d_sae=8):
    return {"pre_bias": torch.zeros(d_in), "latent_bias": torch.zeros(d_sae),
            "encoder.weight": torch.randn(d_sae, d_in), "decoder.weight": torch.randn(d_in, d_sae)}


def cli(*args, check=False):
    return subprocess.run([str(SAEBENCH), *args], capture_output=True, text=True, check=check, timeout=300)


def test_plugins_lists_builtin_architectures_and_loaders():
    out = cli("plugins", "--json", check=True)
    data = json.loads(out.stdout)
    builtins = {(p["kind"], p["name"]) for p in data["plugins"] if p["source"] == "built-in"}
    assert {("architecture", a) for a in ("relu", "topk", "jumprelu")} <= builtins
    assert {("loader", n) for n in ("native", "saelens", "sparsify", "gemmascope", "openai")} <= builtins
    assert all(p["description"] for p in data["plugins"])
    assert [f for f in data["failures"] if f["source"] == "built-in"] == []
    text = cli("plugins", check=True).stdout
    assert text.splitlines()[0].split() == ["KIND", "NAME", "FROM", "DESCRIPTION"]
    assert any(line.split()[:3] == ["loader", "gemmascope", "built-in"] for line in text.splitlines())


def test_inspect_prints_the_config(tmp_path):
    saebench.save_sae(saebench.build_sae("topk", random_weights(8, 32, arch="topk"), k=4, hook_name="layers.2"), tmp_path / "sae")
    info = json.loads(cli("inspect", str(tmp_path / "sae"), "--json", check=True).stdout)
    assert (info["arch"], info["d_in"], info["d_sae"], info["k"], info["hook_name"]) == ("topk", 8, 32, 4, "layers.2")
    assert info["metadata"]["format"] == "native"
    assert info["decoder_row_norm"]["min"] > 0


@pytest.mark.parametrize(
    "make,expected",
    [
        (lambda p: p / "missing", "missing: no such file or folder"),
        (lambda p: (p / "x.txt").write_text("hello") and p / "x.txt", "not a checkpoint in any known format"),
        (lambda p: torch.save({"W_enc": torch.zeros(2, 2)}, p / "w.pt") or p / "w.pt", "convert pickles to safetensors"),
        (lambda p: torch.save(openai_state_dict(), p / "ae.pt") or p / "ae.pt", "is a pickle file"),
    ],
    ids=["missing", "unknown-format", "unknown-pickle", "openai-pickle"],
)
def test_bad_checkpoints_give_one_line_and_exit_2(tmp_path, make, expected):
    path = make(tmp_path)
    out = cli("inspect", str(path))
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("saebench: error: ") and expected in lines[0], out.stderr
    assert str(path) in lines[0]


def test_unknown_format_name_is_bad_input(tmp_path):
    saebench.save_sae(saebench.build_sae("relu", random_weights(8, 32, arch="relu")), tmp_path / "sae")
    out = cli("inspect", str(tmp_path / "sae"), "--format", "saelense")
    assert out.returncode == 2 and "did you mean 'saelens'" in out.stderr
