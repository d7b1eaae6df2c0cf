"""Published SAEs: ``hf://ORG/REPO/SUBFOLDER[@REVISION]`` paths, and SAELens's directory of releases.

An ``hf://`` path names one SAE inside a Hugging Face repository: a subfolder (or a single file, or
the whole repository when there is no subfolder). :func:`resolve` fetches only those files with
huggingface_hub into the standard Hugging Face cache and returns the local copy, which the usual
auto-detecting loaders read. The environment decides as it does for every Hugging Face library:
``HF_HUB_CACHE`` (else ``HF_HOME/hub``) is the cache, ``HF_HUB_OFFLINE=1`` reads the cache alone,
``HF_TOKEN`` authenticates. They are read at each call because huggingface_hub reads them once, when
it is imported, and a process (a test, a notebook) may set them later. The token is handed to
huggingface_hub and to nothing else: it is in no error, log line, result or cache key.

``release`` + ``sae_id`` (SAELens's names for a published SAE) are looked up in SAELens's
``pretrained_saes.yaml``, read as data: the file inside the installed ``sae_lens`` package, found
without importing it (its import pulls in model code), or the copy ``SAEBENCH_SAE_DIRECTORY`` names.
Each release gives ``repo_id`` and, per SAE, its ``id`` and ``path`` in that repository:
``hf://REPO_ID/PATH``.
"""

from __future__ import annotations

import difflib
import functools
import importlib.util
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from saebench.errors import CheckpointError, ConfigError, SaebenchError, one_line

PREFIX = "hf://"
DIRECTORY_ENV = "SAEBENCH_SAE_DIRECTORY"
DIRECTORY_FILE = "pretrained_saes.yaml"
#: the files :func:`resolve` fetches with ``configs_only``: what names a checkpoint's hook, never its weights
CONFIG_PATTERNS = ("*.json", "*.yaml", "*.yml")
_COMMIT = re.compile(r"[0-9a-f]{40}")
_TRUE = {"1", "ON", "YES", "TRUE"}


def is_hub_path(path: object) -> bool:
    return isinstance(path, str) and path.startswith(PREFIX)


@dataclass(frozen=True)
class HubPath:
    """``hf://ORG/REPO/SUBFOLDER@REVISION`` taken apart; ``subfolder`` is "" for the whole repository."""

    repo_id: str
    subfolder: str
    revision: str | None

    @property
    def text(self) -> str:
        sub = f"/{self.subfolder}" if self.subfolder else ""
        return f"{PREFIX}{self.repo_id}{sub}" + (f"@{self.revision}" if self.revision else "")


def parse(path: str) -> HubPath:
    """The parts of an ``hf://`` path; a ConfigError naming it when it has none of that shape."""
    body, at, revision = path.removeprefix(PREFIX).rstrip("/").rpartition("@")
    if not at:
        body, revision = revision, ""
    parts = body.split("/")
    bad = len(parts) < 2 or any(p in ("", ".", "..") for p in parts) or (at and not revision)
    if not path.startswith(PREFIX) or bad:
        raise ConfigError("expected hf://ORG/REPO/SUBFOLDER or hf://ORG/REPO/SUBFOLDER@REVISION", path[:200])
    return HubPath("/".join(parts[:2]), "/".join(parts[2:]), revision or None)


# -- the environment ------------------------------------------------------------------------------
def cache_dir() -> Path:
    """The Hugging Face cache this process uses now: HF_HUB_CACHE, else HF_HOME/hub, else the library's default."""
    given = os.environ.get("HF_HUB_CACHE") or os.environ.get("HUGGINGFACE_HUB_CACHE")
    if not given and os.environ.get("HF_HOME"):
        given = os.path.join(os.environ["HF_HOME"], "hub")
    if not given:
        from huggingface_hub import constants

        given = constants.HF_HUB_CACHE
    return Path(os.path.expandvars(given)).expanduser()


def offline() -> bool:
    return any(os.environ.get(v, "").upper() in _TRUE for v in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"))


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or os.environ.get("HUGGING_FACE_HUB_TOKEN") or None


# -- fetching -------------------------------------------------------------------------------------
def resolve(path: str, *, configs_only: bool = False) -> Path:
    """The local copy of an ``hf://`` SAE, fetched into the Hugging Face cache when it is not there.

    ``configs_only`` fetches its JSON and YAML files alone (what names its hook point, for a matrix
    check that reads no weights); then the returned folder may not exist, when the SAE has none.
    """
    from huggingface_hub import snapshot_download

    hub = parse(path)
    sub = hub.subfolder
    patterns: list[str] | None = None
    if sub:
        patterns = [f"{sub}/{p}" for p in CONFIG_PATTERNS] if configs_only else [sub, f"{sub}/*"]
    elif configs_only:
        patterns = list(CONFIG_PATTERNS)
    cache, is_offline = cache_dir(), offline()
    try:
        snapshot = snapshot_download(
            hub.repo_id,
            revision=hub.revision,
            cache_dir=str(cache),
            local_files_only=is_offline,
            token=_token(),
            allow_patterns=patterns,
        )
    except Exception as exc:  # huggingface_hub's errors, and any OSError of the cache or the connection
        raise _hub_error(exc, hub, cache, is_offline) from None
    local = Path(snapshot) / sub if sub else Path(snapshot)
    if not configs_only and not local.exists():
        commit = Path(snapshot).name
        raise CheckpointError(
            f"no file or folder {sub!r} in {hub.repo_id} at revision {hub.revision or 'main'} (commit {commit[:12]})",
            hub.text,
        )
    return local


def _hub_error(exc: Exception, hub: HubPath, cache: Path, is_offline: bool) -> SaebenchError:
    """A one-line error naming the hf:// path for what huggingface_hub raised; a bug keeps its traceback."""
    from huggingface_hub import errors

    revision = hub.revision or "main"
    if isinstance(exc, errors.HFValidationError):
        return ConfigError(f"not a valid repository id or revision ({_clean(exc)})", hub.text)
    if isinstance(exc, errors.GatedRepoError):
        problem = f"{hub.repo_id} is gated: accept its conditions on huggingface.co and set HF_TOKEN"
    elif isinstance(exc, errors.RepositoryNotFoundError):
        problem = f"repository {hub.repo_id} not found on the Hugging Face Hub (a private one needs HF_TOKEN)"
    elif isinstance(exc, errors.RevisionNotFoundError):
        problem = f"revision {revision!r} not found in {hub.repo_id}"
    elif isinstance(exc, errors.IncompleteSnapshotError):
        problem = f"the cached copy in {cache} is incomplete and the Hub cannot be reached"
    elif isinstance(exc, errors.LocalEntryNotFoundError):
        why = "HF_HUB_OFFLINE is set" if is_offline else "the Hugging Face Hub cannot be reached"
        problem = f"revision {revision!r} is not in the Hugging Face cache ({cache}) and {why}"
    elif isinstance(exc, (OSError, ValueError)):  # HfHubHTTPError is an OSError
        problem = f"cannot fetch it ({_clean(exc)})"
    else:
        raise exc
    return CheckpointError(problem, hub.text)


def _clean(exc: BaseException) -> str:
    """An exception's message as one short line, with the token (should a library ever echo it) masked."""
    text = one_line(exc, 300)
    token = _token()
    return text.replace(token, "***") if token else text


def cached_commit(path: str) -> str | None:
    """The commit an ``hf://`` path's revision names: the revision itself when it is a commit hash, else what
    the cache's ``refs/REVISION`` holds (written by every download); None when nothing was fetched yet."""
    hub = parse(path)
    if hub.revision and _COMMIT.fullmatch(hub.revision):
        return hub.revision
    ref = cache_dir() / f"models--{hub.repo_id.replace('/', '--')}" / "refs" / (hub.revision or "main")
    try:
        commit = ref.read_text().strip()
    except OSError:
        return None
    return commit if _COMMIT.fullmatch(commit) else None


def fingerprint(path: str) -> str:
    """What a cell's hash keeps of an ``hf://`` SAE besides its path: the commit its revision resolves to."""
    hub = parse(path)
    return f"{hub.repo_id}@{cached_commit(path) or hub.revision or 'main'}/{hub.subfolder}"


def localised(exc: SaebenchError, local: Path, path: str) -> SaebenchError:
    """A loader's error about a file of the fetched copy, located by the ``hf://`` path instead of the cache."""
    where, root = exc.where or "", str(local)
    if not where.startswith(root):
        return exc.inside(path) if not where else exc
    hub = parse(path)
    return type(exc)(exc.problem, HubPath(hub.repo_id, hub.subfolder, None).text + where[len(root) :])


# -- SAELens's directory of releases ------------------------------------------------------------------
def directory_file(where: str) -> Path:
    """SAELens's ``pretrained_saes.yaml``: the file SAEBENCH_SAE_DIRECTORY names, else the installed package's."""
    given = os.environ.get(DIRECTORY_ENV)
    if given:
        file = Path(given).expanduser()
        if not file.is_file():
            raise ConfigError(f"{DIRECTORY_ENV}={given}: no such file", where)
        return file
    spec = importlib.util.find_spec("sae_lens")  # finds the package's folder; imports nothing of it
    for folder in (spec.submodule_search_locations or []) if spec else []:
        if (Path(folder) / DIRECTORY_FILE).is_file():
            return Path(folder) / DIRECTORY_FILE
    installed = "sae-lens is installed but has no " + DIRECTORY_FILE if spec else "sae-lens is not installed"
    raise ConfigError(
        f"release and sae_id are looked up in SAELens's {DIRECTORY_FILE} and {installed}: pip install sae-lens, "
        f"or set {DIRECTORY_ENV}=/path/to/{DIRECTORY_FILE}, or give path: hf://ORG/REPO/SUBFOLDER",
        where,
    )


@functools.lru_cache(maxsize=4)
def _releases(file: str, mtime_ns: int) -> Mapping[str, Any]:
    import yaml

    safe = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # libyaml's safe loader: the 1.5 MB file in about a second
    try:
        loader = safe(Path(file).read_text())
        try:
            data = loader.get_single_data()
        finally:
            loader.dispose()
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"cannot read SAELens's directory ({one_line(exc, 200)})", file) from None
    if isinstance(data, dict) and isinstance(data.get("SAE_LOOKUP"), dict):  # SAELens before 4 nested it
        data = data["SAE_LOOKUP"]
    if not isinstance(data, dict):
        raise ConfigError("expected a mapping of release names", file)
    return data


def release_path(release: str, sae_id: str, where: str) -> str:
    """``hf://REPO_ID/PATH`` of SAE ``sae_id`` of ``release``; ConfigErrors at ``WHERE.release`` / ``.sae_id``."""
    file = directory_file(f"{where}.release")
    releases = _releases(str(file), file.stat().st_mtime_ns)
    entry = releases.get(release)
    if not isinstance(entry, dict):
        raise ConfigError(f"unknown release {release!r} in {file}{_close(release, releases)}", f"{where}.release")
    saes = entry.get("saes") or []
    if isinstance(saes, dict):  # an id -> path mapping, as some copies write it
        saes = [{"id": k, "path": v} for k, v in saes.items()]
    paths = {s.get("id"): s.get("path") for s in saes if isinstance(s, dict)}
    if sae_id not in paths:
        raise ConfigError(f"release {release!r} has no sae_id {sae_id!r}{_close(sae_id, paths)}", f"{where}.sae_id")
    repo, sub = entry.get("repo_id"), paths[sae_id]
    if not isinstance(repo, str) or not isinstance(sub, str) or not sub.strip("/"):
        raise ConfigError(f"{file} gives no repo_id and path for this SAE", f"{where}.sae_id")
    return f"{PREFIX}{repo}/{sub.strip('/')}"


def _close(name: str, known: Mapping[Any, Any]) -> str:
    names = [str(k) for k in known if k is not None]
    close = difflib.get_close_matches(name, names, n=3, cutoff=0.6)
    if close:
        return f"; did you mean {', '.join(repr(c) for c in close)}?"
    return f" ({len(names)} known)"
