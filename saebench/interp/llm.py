"""LLM clients: the request/response types and the base class every client plugin extends.

A client plugin implements only ``_send`` (one HTTP call or one local generation), and
``_continuation`` when it can score a continuation. The base class owns what must behave the same
for every client: a concurrency limit, a timeout, retries with exponential backoff and jitter on
transient failures, the on-disk response cache, and token/cost accounting (``stats``).

Requests are immutable and carry their own sampling parameters, so nothing leaks from one request
to the next. API keys are read from the environment variable a client is configured with, when
its SDK client is built, and are kept nowhere else: not in options, identity, the cache or errors.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sqlite3
import threading
import time
import weakref
from abc import ABC, abstractmethod
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, TypeVar

from pydantic import BaseModel, ConfigDict, Field

from saebench.errors import ConfigError, SaebenchError
from saebench.files import SQLITE_BUSY_S
from saebench.options import Options

#: longest wait a server's Retry-After header can impose, and the longest backoff between attempts
MAX_RETRY_WAIT_S = 60.0

T = TypeVar("T")


class LLMError(SaebenchError):
    """A call that failed for good (after retries, or at once for a permanent error such as a 400).

    Plugins raise it from ``_send`` for one failed attempt: ``transient`` (retry: 429, 5xx, timeouts,
    connection errors, undecodable bodies) or not; ``retry_after`` is the server's Retry-After in
    seconds; ``kind`` names the failure for ``stats`` (derived from ``status`` when not given).
    """

    exit_code = 1

    def __init__(
        self,
        problem: str,
        where: str | None = None,
        *,
        transient: bool = False,
        status: int | None = None,
        kind: str | None = None,
        retry_after: float | None = None,
    ):
        super().__init__(problem, where)
        self.transient = transient
        self.status = status
        self.kind = kind or _kind(status, transient)
        self.retry_after = retry_after


def _kind(status: int | None, transient: bool) -> str:
    if status == 429:
        return "rate_limit"
    if status is not None:
        return "server" if status >= 500 else "client"
    return "connection" if transient else "other"


class TokenLogprob(BaseModel):
    """One generated token with its log-probability and the most likely alternatives at its position."""

    token: str
    logprob: float
    top: dict[str, float] = Field(default_factory=dict, description="token -> logprob, the top alternatives")


class LLMRequest(BaseModel):
    """One prompt with its own sampling parameters (immutable: never shared or modified between requests).

    Chat mode uses ``messages``; completion mode (a base model, raw text) uses ``prompt``.
    """

    model_config = ConfigDict(frozen=True)

    messages: tuple[dict[str, str], ...] = ()
    prompt: str | None = None
    max_tokens: int = 256
    temperature: float = 0.0
    top_logprobs: int = Field(0, ge=0, le=20, description="0: no logprobs; n: the top n alternatives per token")
    stop: tuple[str, ...] = ()
    seed: int | None = None


class LLMResponse(BaseModel):
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[TokenLogprob] | None = Field(None, description="per generated token, when requested and supported")
    cost_usd: float | None = Field(
        None, description="None when no price is configured; a cache hit keeps the cost of the call that produced it"
    )
    finish_reason: str | None = Field(None, description="'stop', 'length' (cut by max_tokens)... when known")
    cached: bool = Field(False, description="served from the response cache, without a call")


@dataclass
class LLMStats:
    """Counters of one client for the run log. ``failures`` counts failed attempts by kind."""

    calls: int = 0
    cache_hits: int = 0
    attempts: int = 0
    retries: int = 0
    gave_up: int = 0
    failures: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        return {**self.__dict__, "failures": dict(self.failures)}


class ResponseCache:
    """Responses on disk, keyed by a hash of (client identity, request): SQLite in WAL mode, so
    several processes may share one file. Calls are short and serialised by a lock; they run on
    the event loop's thread."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=SQLITE_BUSY_S, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(
            "CREATE TABLE IF NOT EXISTS responses (key TEXT PRIMARY KEY, request TEXT NOT NULL, "
            "value TEXT NOT NULL, created REAL NOT NULL)"
        )

    def get(self, key: str) -> str | None:
        with self._lock:
            row = self._db.execute("SELECT value FROM responses WHERE key = ?", (key,)).fetchone()
        return row[0] if row else None

    def put(self, key: str, request: str, value: str) -> None:
        # OR IGNORE: when two processes race, the answer stored first stays the one everybody sees
        with self._lock:
            self._db.execute("INSERT OR IGNORE INTO responses VALUES (?, ?, ?, ?)", (key, request, value, time.time()))

    def close(self) -> None:
        with self._lock:
            self._db.close()


class _LoopState:
    """What must belong to one event loop: asyncio primitives and SDK clients fail on another."""

    def __init__(self, max_concurrency: int):
        self.semaphore = asyncio.Semaphore(max_concurrency)
        self.inflight: dict[str, asyncio.Future] = {}
        self.resources: dict[str, Any] = {}
        self.keeper: asyncio.Task | None = None


async def _keep_until_cancelled(state: _LoopState) -> None:
    try:
        await asyncio.Event().wait()
    finally:
        await _close_resources(state)


async def _close_resources(state: _LoopState) -> None:
    resources, state.resources = list(state.resources.values()), {}
    for resource in resources:
        close = getattr(resource, "aclose", None) or getattr(resource, "close", None)
        if close is not None:
            result = close()
            if asyncio.iscoroutine(result):
                await result


class LLMOptions(Options):
    """The options every LLM client takes."""

    model: str | None = Field(None, description="model name at the endpoint (or embedded:NAME for local)")
    max_concurrency: int = Field(8, ge=1, description="requests in flight at once")
    timeout_s: float = Field(60.0, ge=0.001, description="seconds one attempt may take")
    max_retries: int = Field(5, ge=0, description="retries of a transient failure (429, 5xx, timeouts)")
    backoff_s: float = Field(1.0, ge=0.0, description="first retry delay; doubles each retry, with jitter")
    prompt_price_per_mtok: float | None = Field(None, ge=0.0, description="USD per million prompt tokens")
    completion_price_per_mtok: float | None = Field(None, ge=0.0, description="USD per million completion tokens")


class LLMClient(ABC):
    """Talks to one LLM endpoint. Constructed as ``Client(**options)`` from a matrix ``llms:`` entry.

    The options common to every client are :class:`LLMOptions`; a client adds its own with
    ``class Options(LLMOptions)``, where a field of the same name replaces the common one (e.g. a
    default ``model``).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[LLMOptions]] = LLMOptions
    #: whether ``continuation_logprobs`` works (needed by the surprisal scorer)
    supports_continuation_logprobs: ClassVar[bool] = False

    def __init__(self, **options: Any):
        self.options = self.Options.parse(options, f"llm client {self.name}")
        self.stats = LLMStats()
        self._cache: ResponseCache | None = None
        self._loops: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
        self._loops_lock = threading.Lock()

    # -- what callers use ------------------------------------------------------------------------
    @property
    def identity(self) -> dict[str, Any]:
        """What the response cache and the cell hash key on: client, model and the endpoint (never a key)."""
        return {"client": self.name, "model": self.options.model, **self._endpoint()}

    def use_cache(self, path: str | Path | None) -> None:
        """Serve repeated requests from the SQLite file ``path`` (None: no cache)."""
        if self._cache is not None:
            self._cache.close()
        self._cache = ResponseCache(path) if path is not None else None

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """One completion, with the concurrency limit, retries, cache and accounting; raises LLMError when it gives up."""
        self.stats.calls += 1
        body = request.model_dump(mode="json")
        stored = await self._cached(
            "complete", body, lambda: self._retrying(lambda: self._send(request)), dump=lambda r: r.model_dump_json()
        )
        if isinstance(stored, LLMResponse):
            return stored
        return LLMResponse.model_validate_json(stored).model_copy(update={"cached": True})

    async def continuation_logprobs(self, prompt: str, continuation: str) -> list[float]:
        """Log-probability of each token of ``continuation`` after ``prompt`` (a base LM's loss).

        Tokens that straddle the boundary count as continuation tokens.
        """
        if not self.supports_continuation_logprobs:
            raise LLMError("cannot score a continuation: this client gives no prompt logprobs", self._where)
        self.stats.calls += 1
        body = {"prompt": prompt, "continuation": continuation}
        stored = await self._cached(
            "continuation",
            body,
            lambda: self._retrying(lambda: self._continuation(prompt, continuation)),
            dump=json.dumps,
        )
        return stored if isinstance(stored, list) else json.loads(stored)

    async def aclose(self) -> None:
        """Close this event loop's SDK clients now (otherwise they close when asyncio.run ends)."""
        await _close_resources(self._state())

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.identity})"

    # -- what plugins implement ------------------------------------------------------------------
    @abstractmethod
    async def _send(self, request: LLMRequest) -> LLMResponse:
        """One attempt. Raise LLMError(transient=True) for 429/5xx/connection errors, transient=False otherwise."""

    async def _continuation(self, prompt: str, continuation: str) -> list[float]:
        """One attempt at ``continuation_logprobs`` (when ``supports_continuation_logprobs``)."""
        raise LLMError("cannot score a continuation", self._where)

    def _endpoint(self) -> dict[str, Any]:
        """Identity entries beyond client and model (base_url, mode...): whatever changes the answers."""
        return {}

    def _key(self) -> str | None:
        """The API key, read from the environment when needed (clients of keyed endpoints override this)."""
        return None

    def _secrets(self) -> list[str]:
        """Values that must never appear in an error message: the API key, when one is set."""
        try:
            key = self._key()
        except ConfigError:
            return []
        return [key] if key else []

    def loop_local(self, name: str, factory: Callable[[], T]) -> T:
        """An object made once per event loop (an SDK client: its connections belong to the loop).

        Objects with ``aclose``/``close`` are closed when the loop's ``asyncio.run`` ends: it cancels
        the tasks left, among them a keeper task that closes them then. Left open, they would try
        to close on a later loop when garbage-collected, and fail ("Event loop is closed").
        """
        state = self._state()
        if name not in state.resources:
            state.resources[name] = factory()
            if state.keeper is None:
                state.keeper = asyncio.ensure_future(_keep_until_cancelled(state))
        return state.resources[name]

    # -- machinery -------------------------------------------------------------------------------
    @property
    def _where(self) -> str:
        return f"llm client {self.name!r} ({self.options.model})"

    def _state(self) -> _LoopState:
        # keyed by the loop object, weakly: an id() could be reused by the next asyncio.run's loop
        loop = asyncio.get_running_loop()
        with self._loops_lock:
            state = self._loops.get(loop)
            if state is None:
                state = self._loops[loop] = _LoopState(self.options.max_concurrency)
        return state

    async def _cached(self, what: str, body: dict, produce: Callable[[], Awaitable[Any]], dump: Callable[[Any], str]):
        """``produce()``'s fresh result, or the stored JSON text of an earlier identical call.

        Identical calls in flight at the same time share one attempt, like a cache hit.
        """
        cache = self._cache
        if cache is None:
            return self._account(await produce())
        request = json.dumps({"identity": self.identity, what: body}, sort_keys=True)
        key = hashlib.sha256(request.encode()).hexdigest()
        hit = cache.get(key)
        if hit is not None:
            self.stats.cache_hits += 1
            return hit
        state = self._state()
        shared = state.inflight.get(key)
        if shared is not None:
            result = await asyncio.shield(shared)
            self.stats.cache_hits += 1
            return dump(result)

        async def fresh():
            result = self._account(await produce())
            cache.put(key, request, dump(result))  # only a success gets here: failures are never stored
            return result

        # shielded: a caller cancelled while others wait on the same call must not cancel it for them
        task = state.inflight[key] = asyncio.ensure_future(fresh())
        task.add_done_callback(lambda _: state.inflight.pop(key, None))
        return await asyncio.shield(task)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]]) -> T:
        state = self._state()
        for n in range(self.options.max_retries + 1):
            try:
                async with state.semaphore:
                    self.stats.attempts += 1
                    return await asyncio.wait_for(attempt(), self.options.timeout_s)
            except TimeoutError:  # asyncio's and the socket's
                error = LLMError(f"no answer within {self.options.timeout_s:g} s", transient=True, kind="timeout")
            except LLMError as exc:
                error = exc
            self.stats.failures[error.kind] += 1
            if not error.transient or n == self.options.max_retries:
                break
            self.stats.retries += 1
            await asyncio.sleep(self._delay(n, error))
        self.stats.gave_up += 1
        problem = self._scrub(error.problem)
        if error.transient:
            problem = f"gave up after {n + 1} attempt(s); last: {problem}"
        raise LLMError(problem, self._where, transient=error.transient, status=error.status, kind=error.kind) from None

    def _delay(self, n: int, error: LLMError) -> float:
        if error.retry_after is not None:
            return min(max(error.retry_after, 0.0), MAX_RETRY_WAIT_S)
        return min(self.options.backoff_s * 2**n, MAX_RETRY_WAIT_S) * random.uniform(0.5, 1.5)

    def _scrub(self, text: str) -> str:
        for secret in self._secrets():
            if secret:
                text = text.replace(secret, "***")
        return text

    def _account(self, result: T) -> T:
        if not isinstance(result, LLMResponse):
            return result
        prices = self.options.prompt_price_per_mtok, self.options.completion_price_per_mtok
        if None not in prices:
            cost = (result.prompt_tokens * prices[0] + result.completion_tokens * prices[1]) / 1e6
            result = result.model_copy(update={"cost_usd": cost})
        self.stats.prompt_tokens += result.prompt_tokens
        self.stats.completion_tokens += result.completion_tokens
        self.stats.cost_usd += result.cost_usd or 0.0
        return result
