"""saebench.files: atomic writes and artifact locks, with real processes holding the locks."""

import os
import re
import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

from saebench.files import ArtifactLock, building, private_name, write_atomic


def test_write_atomic_replaces_whole_or_not_at_all(tmp_path, monkeypatch):
    path = tmp_path / "f.json"
    write_atomic(path, "old")
    write_atomic(path, b"new")
    assert path.read_text() == "new"

    def broken_fsync(fd):
        raise OSError("disk full")

    monkeypatch.setattr(os, "fsync", broken_fsync)
    with pytest.raises(OSError, match="disk full"):
        write_atomic(path, "half")
    assert path.read_text() == "new"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["f.json"]  # no temporary file left


def test_building_a_folder_puts_it_in_place_or_leaves_the_old_one(tmp_path):
    target = tmp_path / "cache"
    with building(target) as tmp:
        (tmp / "a").write_text("1")
        assert not target.exists()  # a reader never sees a half-built folder
    assert (target / "a").read_text() == "1"
    with pytest.raises(KeyboardInterrupt), building(target) as tmp:
        (tmp / "a").write_text("2")
        raise KeyboardInterrupt
    assert (target / "a").read_text() == "1"
    with building(target) as tmp:
        (tmp / "b").write_text("3")
    assert sorted(p.name for p in target.iterdir()) == ["b"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_private_names_differ_per_writer(tmp_path):
    names = {private_name(tmp_path / "x") for _ in range(100)}
    assert len(names) == 100
    assert all(n.parent == tmp_path and n.name.startswith(".x.") for n in names)


HOLDER = textwrap.dedent(
    """
    import sys, time
    {patch}
    from saebench.files import ArtifactLock
    lock = ArtifactLock(sys.argv[1], "x")
    lock.acquire()
    print("held", flush=True)
    time.sleep(600)
    """
)


def hold(path, patch="", env=None):
    proc = subprocess.Popen(
        [sys.executable, "-c", HOLDER.format(patch=patch), str(path)],
        stdout=subprocess.PIPE,
        text=True,
        env={**os.environ, **(env or {})},
    )
    assert proc.stdout.readline().strip() == "held"
    return proc


def test_a_lock_held_by_a_live_process_waits_and_names_it(tmp_path):
    path = tmp_path / ".locks" / "a.lock"
    proc = hold(path)
    try:
        said = []
        lock = ArtifactLock(path, "the thing", said.append)
        assert not lock.try_acquire()
        assert lock.holder().startswith(f"pid {proc.pid} on ")
        waiter = threading.Thread(target=lock.acquire)
        waiter.start()
        time.sleep(1.0)
        assert waiter.is_alive()  # waits while the holder lives
        assert re.fullmatch(rf"waiting for the thing: pid {proc.pid} on \S+ is computing it", said[0])
        proc.terminate()
        proc.wait()
        waiter.join(timeout=30)  # the holder is gone: its marker is stale on this host
        assert not waiter.is_alive()
        assert said[1].startswith("the thing: ready after ")
        lock.release()
        assert not path.exists()  # released: no marker left behind
    finally:
        proc.kill()


def test_a_sigkilled_holder_is_detected_at_once(tmp_path):
    path = tmp_path / "b.lock"
    proc = hold(path)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert path.exists()  # the dead holder's marker is still there
    start = time.monotonic()
    with ArtifactLock(path, "b"):
        pass
    assert time.monotonic() - start < 10


def test_a_holder_on_another_host_that_stops_refreshing_loses_the_lock_after_the_lease(tmp_path):
    # what a Ray worker on another node looks like from here: its pid cannot be probed, only its lease can expire
    path = tmp_path / "c.lock"
    patch = (
        "import filelock._marker as m, filelock._identity as i, filelock._soft as s\n"
        "i.host_name = m.host_name = s.host_name = lambda: 'elsewhere'"
    )
    env = {"SAEBENCH_LOCK_LEASE_S": "1.5"}
    proc = hold(path, patch, env)
    try:
        probe = subprocess.run(
            [sys.executable, "-c", "from saebench.files import ArtifactLock; import sys; "
             "l = ArtifactLock(sys.argv[1], 'c'); print(l.try_acquire(), l.holder())", str(path)],
            capture_output=True, text=True, env={**os.environ, **env}, check=True,
        )
        assert probe.stdout.split()[:4] == ["False", "pid", str(proc.pid), "on"] and "elsewhere" in probe.stdout
        os.kill(proc.pid, signal.SIGSTOP)  # alive, but its heartbeat stops
        taken = subprocess.run(
            [sys.executable, "-c", "from saebench.files import ArtifactLock; import sys, time; t = time.monotonic(); "
             "l = ArtifactLock(sys.argv[1], 'c'); l.acquire(); print(round(time.monotonic() - t, 1))", str(path)],
            capture_output=True, text=True, env={**os.environ, **env}, check=True, timeout=60,
        )
        assert 1.0 <= float(taken.stdout) < 30
    finally:
        os.kill(proc.pid, signal.SIGCONT)
        proc.kill()


BUILDER = textwrap.dedent(
    """
    import os, sys, time
    from pathlib import Path
    from saebench.files import ArtifactLock, write_atomic
    target, log = Path(sys.argv[1]), Path(sys.argv[2])
    with ArtifactLock(target.parent / ".locks" / "t.lock", "t"):
        if not target.exists():
            with open(log, "a") as f:
                f.write(f"{os.getpid()}\\n")
            time.sleep(0.5)
            write_atomic(target, "built")
    print(target.read_text())
    """
)


def test_racing_processes_build_an_artifact_once(tmp_path):
    target, log = tmp_path / "artifact", tmp_path / "log"
    procs = [
        subprocess.Popen([sys.executable, "-c", BUILDER, str(target), str(log)], stdout=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert [p.returncode for p in procs] == [0] * 4
    assert outs == ["built"] * 4
    assert len(log.read_text().splitlines()) == 1
