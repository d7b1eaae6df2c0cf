"""A scripted LLM client for tests: answers come from a Python function, so every metric is known.

``ScriptedLLM(answer)`` calls ``answer(request) -> str | LLMResponse`` for each request (raise an
LLMError from it to simulate a failure). ``requests`` records what was asked, in order. Register
it like any third-party client with ``saebench.testing.register_plugin(ScriptedPlugin)`` when a
matrix must name it (``client: scripted``).
"""

from __future__ import annotations

from collections.abc import Callable

from saebench import hookimpl
from saebench.interp.llm import LLMClient, LLMRequest, LLMResponse


class ScriptedLLM(LLMClient):
    """An LLM whose answers a test function writes."""

    name = "scripted"

    def __init__(self, answer: Callable[[LLMRequest], str | LLMResponse] | None = None,
                 continuation: Callable[[str, str], list[float]] | None = None, **options):
        options.setdefault("model", "scripted")
        options.setdefault("backoff_s", 0.0)
        super().__init__(**options)
        self.answer = answer or (lambda request: "")
        self.continuation = continuation
        self.requests: list[LLMRequest] = []

    @property
    def supports_continuation_logprobs(self) -> bool:  # type: ignore[override]
        return self.continuation is not None

    async def _send(self, request: LLMRequest) -> LLMResponse:
        self.requests.append(request)
        out = self.answer(request)
        if isinstance(out, LLMResponse):
            return out
        prompt = " ".join(m["content"] for m in request.messages) if request.messages else request.prompt or ""
        return LLMResponse(text=out, prompt_tokens=len(prompt.split()), completion_tokens=len(out.split()))

    async def continuation_logprobs(self, prompt: str, continuation: str) -> list[float]:
        if self.continuation is None:
            return await super().continuation_logprobs(prompt, continuation)
        return self.continuation(prompt, continuation)


def prompt_text(request: LLMRequest) -> str:
    """The whole prompt of a request as one string (messages joined), for answer functions to read."""
    return "\n".join(m["content"] for m in request.messages) if request.messages else request.prompt or ""


class ScriptedPlugin:
    @staticmethod
    @hookimpl
    def register_llm_clients(register):
        register(ScriptedLLM)
