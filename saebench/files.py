"""Shared folders: artifact locks and atomic writes, so any number of runs may share an output or cache folder.

The concurrency model (README, "Running several at once"): a shared artifact (an activation
cache, a trained SAE, latent records, probe data, the converted embedded model) is built by the
one process that holds its lock; the others wait, saying whose work they wait for, then find it
complete and reuse it. Every artifact is written under a name private to its writer and renamed
into place, so a reader sees the whole artifact or none, and nobody deletes another's temporary
files. Locks are ``filelock`` leases: a holder refreshes its claim every ``LEASE_S / 3`` seconds;
a lock whose holder died on this host is taken over at once, one whose holder is on another host
(Ray workers on shared storage) once its claim has gone ``LEASE_S`` seconds without a refresh.
"""

from __future__ import annotations

import os
import secrets
import shutil
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType

from filelock import SoftFileLease, Timeout

#: seconds a holder's claim survives without a refresh; every process sharing a folder must agree
LEASE_S = float(os.environ.get("SAEBENCH_LOCK_LEASE_S", "60"))
POLL_S = 0.2
#: seconds an SQLite write (results store, LLM response cache) waits for another run's transaction;
#: each transaction is one cell or one task's latents, so a wait this long means a stuck writer
SQLITE_BUSY_S = 600.0


def private_name(path: Path) -> Path:
    """A hidden sibling of ``path`` that no other writer (process, thread or host) can pick."""
    tag = f"{socket.gethostname()}-{os.getpid()}-{secrets.token_hex(4)}"
    return path.with_name(f".{path.name}.{tag}.tmp")


def write_atomic(path: str | Path, data: bytes | str) -> None:
    """Write a file under a private name, flush it to disk, and rename it over ``path``."""
    path = Path(path)
    tmp = private_name(path)
    try:
        with open(tmp, "wb") as f:
            f.write(data.encode() if isinstance(data, str) else data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def replace_folder(built: Path, folder: Path) -> None:
    """Put the folder ``built`` at ``folder``; an older one is moved aside and deleted only after."""
    if folder.exists():
        old = private_name(folder)
        folder.rename(old)
        built.rename(folder)
        shutil.rmtree(old, ignore_errors=True)
    else:
        built.rename(folder)


@contextmanager
def building(folder: str | Path) -> Iterator[Path]:
    """A private empty folder to build ``folder``'s content in: renamed into place when the block ends
    normally, deleted when it raises (Ctrl-C included)."""
    folder = Path(folder)
    folder.parent.mkdir(parents=True, exist_ok=True)
    tmp = private_name(folder)
    tmp.mkdir()
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    replace_folder(tmp, folder)


class ArtifactLock:
    """The lock of one shared artifact, ``with``-able. ``say`` gets one line when it must wait."""

    def __init__(self, path: str | Path, what: str, say: Callable[[str], None] | None = None):
        self.path = Path(path)
        self.what = what
        self.say = say
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = SoftFileLease(self.path, lease_duration=LEASE_S, thread_local=False)

    def holder(self) -> str:
        """Who holds it, as a person reads it (``pid 123 on host-a``), or ``another run``."""
        try:
            owner = self._lock.owner
        except Exception:  # a marker being rewritten as we read it
            owner = None
        return f"pid {owner.pid} on {owner.hostname}" if owner is not None else "another run"

    def try_acquire(self) -> bool:
        try:
            self._lock.acquire(timeout=0)
        except Timeout:
            return False
        return True

    def acquire(self) -> None:
        if self.try_acquire():
            return
        if self.say is not None:
            self.say(f"waiting for {self.what}: {self.holder()} is computing it")
        start = time.monotonic()
        self._lock.acquire(timeout=-1, poll_interval=POLL_S)
        if self.say is not None:
            self.say(f"{self.what}: ready after {time.monotonic() - start:.0f} s of waiting")

    def release(self) -> None:
        if self._lock.is_locked:
            self._lock.release()

    def __enter__(self) -> ArtifactLock:
        self.acquire()
        return self

    def __exit__(self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None) -> None:
        self.release()
