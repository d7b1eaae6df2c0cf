"""The Ray executor on a real local cluster (`ray start --head` on 127.0.0.1, 2 CPUs): a matrix run on
Ray gives exactly the leaderboard of the local executor, and a worker killed in the middle of a task
only delays the run. The matrix is the crash-safety one: activations, training, latent records,
explanations and judgements from an HTTP LLM, intrinsic and probe cells."""

import csv
import io
import json
import os
import secrets
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml

import saebench
from saebench.cli import main as saebench_main
from saebench.results.leaderboard import details_json, render
from saebench.testing.fakellm import FakeLLMServer
from test_crash_safety import answer, make_folder

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install 'saebench[ray]')")

BIN = Path(sys.executable).parent
KEY = f"sk-planted-{secrets.token_hex(12)}"  # must never reach a file the run writes
ENV = {**os.environ, "OPENAI_API_KEY": KEY, "RAY_USAGE_STATS_ENABLED": "0"}
STAGES = ("activations", "train", "records", "latents", "cells")


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """A two-CPU Ray cluster on this machine, started the way a user starts one, with token
    authentication (the token in a file of its own, not in ~/.ray); workers inherit ENV."""
    token = tmp_path_factory.mktemp("ray") / "token"
    token.write_text(secrets.token_hex(32))
    ENV.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=ENV, capture_output=True)
    start = subprocess.run([str(BIN / "ray"), "start", "--head", "--node-ip-address=127.0.0.1", f"--port={port}",
                            "--num-cpus=2", "--num-gpus=0", "--include-dashboard=false", "--disable-usage-stats"],
                           env=ENV, capture_output=True, text=True, timeout=180)
    assert start.returncode == 0, start.stderr[-2000:]
    yield f"127.0.0.1:{port}"
    subprocess.run([str(BIN / "ray"), "stop", "--force"], env=ENV, capture_output=True, timeout=120)


def make(folder: Path, tiny_llama, tiny_corpus, url: str) -> Path:
    """The crash-safety matrix with every latent explained (on Ray: records built in three parts) plus
    TreeProbe, whose rules are named from the stored explanations (on Ray, the driver hands them to
    the cells task)."""
    make_folder(folder, tiny_llama, tiny_corpus, url)
    path = folder / "matrix.yaml"
    matrix = yaml.safe_load(path.read_text())
    matrix["interp"]["latents"] = "all"
    matrix["scorers"].append({"name": "treeprobe", "options": {"tasks": ["python_token_type"], "finetune_epochs": 5,
                                                                "seeds": 1, "max_rows": 1024}})
    path.write_text(yaml.safe_dump(matrix, sort_keys=False))
    return folder


def trees(folder: Path) -> dict:
    """Each SAE's TreeProbe tree, with its rule names."""
    cells = json.loads(details_json(folder / "runs" / "crash", "treeprobe"))
    return {c["sae"]: c["details"]["tasks"]["python_token_type"]["tree"] for c in cells}


def on_ray(folder: Path, address: str) -> None:
    path = folder / "matrix.yaml"
    matrix = yaml.safe_load(path.read_text())
    # two threads per task, as the local run has: the same float reductions, hence the same digits
    matrix["executor"] = {"ray": {"address": address, "latents_per_task": 3, "latents_per_records_task": 16,
                                  "resources": {stage: {"num_cpus": 2 if stage != "latents" else 1} for stage in STAGES}}}
    path.write_text(yaml.safe_dump(matrix, sort_keys=False))


def run(folder: Path) -> subprocess.Popen:
    return subprocess.Popen([str(BIN / "saebench"), "run", "matrix.yaml", "--quiet"], cwd=folder, env=ENV,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def board(folder: Path) -> list[dict]:
    return list(csv.DictReader(io.StringIO(render(folder / "runs" / "crash", "csv"))))


def worker_running(stage: str) -> int | None:
    """The pid of a Ray worker executing a task of ``stage`` (Ray titles it ray::saebench.STAGE)."""
    ps = subprocess.run(["ps", "-eo", "pid=,args="], capture_output=True, text=True).stdout
    for line in ps.splitlines():
        pid, _, args = line.strip().partition(" ")
        if args.startswith(f"ray::saebench.{stage}"):
            return int(pid)
    return None


@pytest.fixture(scope="module")
def local_board(tmp_path_factory, tiny_llama, tiny_corpus):
    with FakeLLMServer(answer=answer, delay_s=0.02) as server:
        folder = make(tmp_path_factory.mktemp("local") / "m", tiny_llama, tiny_corpus, server.openai_url)
        proc = run(folder)
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    return board(folder), trees(folder)


@pytest.mark.slow
def test_a_run_on_ray_gives_the_local_leaderboard(tmp_path, cluster, local_board, tiny_llama, tiny_corpus):
    with FakeLLMServer(answer=answer, delay_s=0.02) as server:
        folder = make(tmp_path / "m", tiny_llama, tiny_corpus, server.openai_url)
        on_ray(folder, cluster)
        proc = run(folder)
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
        local_board, local_trees = local_board
        assert len(local_board) == 2 and board(folder) == local_board
        assert trees(folder) == local_trees and "Is there" in json.dumps(local_trees)  # rules named alike
        parts = list((folder / "runs" / "crash" / "cache" / "records").glob("relu-*-part-*.json.gz"))
        assert len(parts) == 3  # 48 latents, 16 per records task
        report = folder / "report.html"
        assert saebench_main(["report", str(folder / "runs" / "crash"), "-o", str(report)]) == 0
        assert report.read_text().count('class="ex"') > 0  # the cards found their examples in the parts
        # the work ran on the cluster's workers: the trained SAE and the records came from there
        assert (folder / "runs" / "crash" / "saes" / "topk" / "trained.json").is_file()
        again = run(folder)  # everything finished: nothing is submitted, nothing changes
        assert again.wait(timeout=300) == 0 and board(folder) == local_board
        leaked = [p for p in (folder / "runs").rglob("*") if p.is_file() and KEY.encode() in p.read_bytes()]
        assert not leaked, leaked
        # a changed checkpoint: only its cells are recomputed on Ray, stored with the new configuration
        # hash, so the next run finds every cell finished
        sae = saebench.load_sae(folder / "sae")
        with torch.no_grad():
            sae.W_enc.mul_(0.5)
        saebench.save_sae(sae, folder / "sae")
        assert run(folder).wait(timeout=600) == 0
        before = finished(folder)
        assert run(folder).wait(timeout=300) == 0 and finished(folder) == before
        now, then = ({row["sae"]: row for row in b} for b in (board(folder), local_board))
        assert now["relu"] != then["relu"] and now["topk"] == then["topk"]


def finished(folder: Path) -> list:
    db = sqlite3.connect(folder / "runs" / "crash" / "results.sqlite")
    try:
        return db.execute("SELECT sae, scorer, config_hash, finished FROM cells ORDER BY rowid").fetchall()
    finally:
        db.close()


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["train", "latents", "cells"])
def test_a_killed_worker_only_delays_the_run(tmp_path, cluster, local_board, tiny_llama, tiny_corpus, stage):
    with FakeLLMServer(answer=answer, delay_s=0.05) as server:
        folder = make(tmp_path / "m", tiny_llama, tiny_corpus, server.openai_url)
        on_ray(folder, cluster)
        proc = run(folder)
        killed = None
        deadline = time.time() + 300
        while killed is None and proc.poll() is None and time.time() < deadline:
            pid = worker_running(stage)
            if pid is not None:
                time.sleep(0.2)  # inside the task's work
                try:
                    os.kill(pid, signal.SIGKILL)
                    killed = pid
                except ProcessLookupError:  # it finished meanwhile; catch the next one
                    pass
            time.sleep(0.05)
        assert killed is not None, f"no {stage} task was seen running"
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
        assert board(folder) == local_board[0]
        shutil.rmtree(folder / "runs", ignore_errors=True)


def seeded(folder: Path, tiny_llama, tiny_corpus, url: str) -> Path:
    """The crash-safety matrix with two seeds and a sample of 8 latents per seed."""
    make_folder(folder, tiny_llama, tiny_corpus, url)
    path = folder / "matrix.yaml"
    matrix = yaml.safe_load(path.read_text())
    matrix.pop("seed", None)
    matrix["interp"].pop("seed", None)
    matrix["interp"]["latents"] = 8
    matrix["seeds"] = [0, 1]
    path.write_text(yaml.safe_dump(matrix, sort_keys=False))
    return folder


@pytest.mark.slow
def test_seeds_on_ray_give_the_local_leaderboard(tmp_path, cluster, tiny_llama, tiny_corpus):
    """Repeats are SAE entries of their own (records, latents, cells per seed): Ray schedules them like
    any other and trains the SAE once."""
    with FakeLLMServer(answer=answer, delay_s=0.01) as server:
        local = seeded(tmp_path / "local", tiny_llama, tiny_corpus, server.openai_url)
        assert run(local).wait(timeout=600) == 0
        remote = seeded(tmp_path / "ray", tiny_llama, tiny_corpus, server.openai_url)
        on_ray(remote, cluster)
        proc = run(remote)
        assert proc.wait(timeout=600) == 0, proc.stderr.read()[-2000:]
    assert board(remote) == board(local)
    columns = board(local)[0]
    seeded_columns = [c for c in columns if "@s1." in c]
    assert seeded_columns and all(c.replace("@s1.", "@s0.") in columns for c in seeded_columns)
    assert [p.name for p in (remote / "runs" / "crash" / "saes").iterdir() if not p.name.startswith(".")] == ["topk"]
