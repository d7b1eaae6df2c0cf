"""Anthropic's Messages API through the official SDK (its own retries off: the base class retries).

System messages of a request go to ``system=``, the rest to ``messages=``; a request with only a
``prompt`` becomes one user message. The API gives no logprobs (``LLMResponse.logprobs`` is None)
and, since its 2026-10-21 version, takes no sampling parameters: a request's ``temperature`` and
``seed`` are not sent (they still key the response cache).
"""

from __future__ import annotations

from pydantic import Field

import saebench
from saebench.interp.llm import LLMClient, LLMError, LLMOptions, LLMRequest, LLMResponse
from saebench.interp.sdk import api_key, sdk_call

DEFAULT_BASE_URL = "https://api.anthropic.com"


class AnthropicClient(LLMClient):
    """Anthropic's Messages API (or any endpoint speaking it)."""

    name = "anthropic"

    class Options(LLMOptions):
        model: str = Field(description="model name at the endpoint (required)")
        base_url: str | None = Field(None, description=f"the Messages API's address (default {DEFAULT_BASE_URL})")
        api_key_env: str | None = Field(
            None, description="environment variable holding the API key (default ANTHROPIC_API_KEY)"
        )

    def __init__(self, **options):
        super().__init__(**options)
        self._key()  # a missing key is a configuration error, found when the matrix is checked

    def _key(self) -> str:
        return api_key(self.name, self.options.api_key_env, "ANTHROPIC_API_KEY")

    def _endpoint(self) -> dict:
        return {"base_url": self.options.base_url or DEFAULT_BASE_URL}

    def _sdk(self):
        import anthropic

        # base_url explicit: the SDK would otherwise read ANTHROPIC_BASE_URL, which the identity would not show
        return self.loop_local(
            "sdk",
            lambda: anthropic.AsyncAnthropic(
                api_key=self._key(),
                base_url=self.options.base_url or DEFAULT_BASE_URL,
                max_retries=0,
                timeout=self.options.timeout_s,
            ),
        )

    async def _send(self, request: LLMRequest) -> LLMResponse:
        import anthropic

        system = "\n\n".join(m["content"] for m in request.messages if m.get("role") == "system")
        messages = [{"role": m["role"], "content": m["content"]} for m in request.messages if m.get("role") != "system"]
        if not messages:
            if request.prompt is None:
                raise LLMError("the request has no user message", self._where)
            messages = [{"role": "user", "content": request.prompt}]
        # No temperature: the API version SDK 2.x speaks (2026-10-21) rejects sampling parameters with a 400.
        kwargs = {"model": self.options.model, "max_tokens": request.max_tokens, "messages": messages}
        if system:
            kwargs["system"] = system
        if request.stop:
            kwargs["stop_sequences"] = list(request.stop)
        out = await sdk_call(anthropic, self._sdk().messages.create(**kwargs), self.options.timeout_s)
        content = getattr(out, "content", None)
        if content is None:
            raise LLMError("the response has no content", transient=True, kind="malformed")
        text = "".join(getattr(block, "text", "") for block in content if getattr(block, "type", None) == "text")
        usage = out.usage
        finish = {"max_tokens": "length", "end_turn": "stop", "stop_sequence": "stop"}.get(
            out.stop_reason, out.stop_reason
        )
        return LLMResponse(
            text=text,
            prompt_tokens=usage.input_tokens or 0,
            completion_tokens=usage.output_tokens or 0,
            finish_reason=finish,
        )


@saebench.hookimpl
def register_llm_clients(register):
    register(AnthropicClient)
