"""LLM clients: the request/response types and the base class every client plugin extends.

A client plugin implements only ``_send`` (one HTTP call or one local generation). The base class
owns what must behave the same for every client: a concurrency limit, a timeout, retries with
exponential backoff and jitter on transient failures, the on-disk response cache, and token/cost
accounting returned with each response. Requests are immutable and carry their own sampling
parameters, so nothing leaks from one request to the next. API keys are read from the environment
variable a client is configured with and never stored anywhere else.
"""

from __future__ import annotations

import asyncio
import random
from abc import ABC, abstractmethod
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field

from saebench.errors import SaebenchError


class LLMError(SaebenchError):
    """A call that failed for good (after retries, or at once for a permanent error such as a 400)."""

    exit_code = 1

    def __init__(self, problem: str, where: str | None = None, *, transient: bool = False, status: int | None = None):
        super().__init__(problem, where)
        self.transient = transient
        self.status = status


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
    cost_usd: float | None = Field(None, description="None when no price is configured; 0 for a cache hit")
    cached: bool = False


class LLMClient(ABC):
    """Talks to one LLM endpoint. Constructed as ``Client(**options)`` from a matrix ``llms:`` entry.

    Options common to every client are parsed here (``model``, ``max_concurrency``, ``timeout_s``,
    ``max_retries``, prices per million tokens); a client adds its own in ``OPTIONS``.
    """

    name: ClassVar[str] = ""
    OPTIONS: ClassVar[tuple] = ()
    #: whether ``continuation_logprobs`` works (needed by the surprisal scorer)
    supports_continuation_logprobs: ClassVar[bool] = False

    def __init__(self, **options: Any):
        from saebench.metrics import Option, parse_options

        common = (
            Option("model", str, None, help="model name at the endpoint (or embedded:NAME for local)"),
            Option("max_concurrency", int, 8, minimum=1),
            Option("timeout_s", float, 60.0, minimum=0.001),
            Option("max_retries", int, 5, minimum=0),
            Option("backoff_s", float, 1.0, minimum=0.0, help="first retry delay; doubles each retry, with jitter"),
            Option("prompt_price_per_mtok", float, None, minimum=0.0, optional=True),
            Option("completion_price_per_mtok", float, None, minimum=0.0, optional=True),
        )
        self.options = parse_options(f"llm client {self.name}", options, common + tuple(self.OPTIONS))
        for key, value in self.options.items():
            setattr(self, key, value)
        self._semaphores: dict[int, asyncio.Semaphore] = {}

    @property
    def identity(self) -> dict[str, Any]:
        """What the response cache and the cell hash key on: client, model and the endpoint (never a key)."""
        return {"client": self.name, "model": self.options.get("model")}

    async def complete(self, request: LLMRequest) -> LLMResponse:
        """One completion, with the concurrency limit, retries and accounting; raises LLMError when it gives up."""
        loop = id(asyncio.get_running_loop())
        sem = self._semaphores.setdefault(loop, asyncio.Semaphore(self.max_concurrency))
        attempt = 0
        while True:
            try:
                async with sem:
                    response = await asyncio.wait_for(self._send(request), self.timeout_s)
                return self._priced(response)
            except asyncio.TimeoutError:
                error = LLMError(f"timed out after {self.timeout_s:g} s", self.name, transient=True)
            except LLMError as exc:
                error = exc
            if not error.transient or attempt >= self.max_retries:
                raise error
            await asyncio.sleep(self.backoff_s * 2**attempt * random.uniform(0.5, 1.5))
            attempt += 1

    async def continuation_logprobs(self, prompt: str, continuation: str) -> list[float]:
        """Log-probability of each token of ``continuation`` after ``prompt`` (a base LM's loss)."""
        raise NotImplementedError(f"llm client {self.name!r} cannot score a continuation")

    @abstractmethod
    async def _send(self, request: LLMRequest) -> LLMResponse:
        """One attempt. Raise LLMError(transient=True) for 429/5xx/connection errors, transient=False otherwise."""

    def _priced(self, response: LLMResponse) -> LLMResponse:
        if response.cached or self.prompt_price_per_mtok is None or self.completion_price_per_mtok is None:
            return response
        cost = (response.prompt_tokens * self.prompt_price_per_mtok
                + response.completion_tokens * self.completion_price_per_mtok) / 1e6
        return response.model_copy(update={"cost_usd": cost})
