"""OpenAI-compatible endpoints through the official SDK: OpenAI itself, vLLM, llama.cpp's server...

The SDK's own retries are off (``max_retries=0``): the base class retries, so that every client
backs off, counts and gives up the same way. An SDK client is made per event loop, because its
connection pool belongs to the loop that opened it.
"""

from __future__ import annotations

from pydantic import Field

import saebench
from saebench.errors import ConfigError
from saebench.interp.llm import LLMClient, LLMError, LLMOptions, LLMRequest, LLMResponse, TokenLogprob
from saebench.interp.sdk import api_key, sdk_call

DEFAULT_BASE_URL = "https://api.openai.com/v1"


class OpenAIClient(LLMClient):
    """Any OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp server): chat or completions, logprobs when available.

    ``continuation_logprobs`` uses the completions endpoint with ``echo``; a server that returns no
    prompt logprobs makes it raise LLMError. The API key comes from the environment only.
    """

    name = "openai"
    supports_continuation_logprobs = True

    class Options(LLMOptions):
        model: str = Field(description="model name at the endpoint (required)")
        base_url: str | None = Field(None, description="e.g. http://127.0.0.1:8000/v1 for a local server")
        api_key_env: str | None = Field(
            None, description="environment variable holding the API key (default OPENAI_API_KEY; none with a base_url)"
        )
        mode: str = Field("chat", description="chat, or completions (raw text, for a base model)")

    def __init__(self, **options):
        super().__init__(**options)
        if self.options.mode not in ("chat", "completions"):
            raise ConfigError(f"option 'mode' must be 'chat' or 'completions', got {self.options.mode!r}", self._where)
        self._key()  # a missing key is a configuration error, found when the matrix is checked

    def _key(self) -> str:
        # a local server (base_url given) needs no key, but the SDK insists on one
        o = self.options
        placeholder = "not-needed" if o.base_url is not None and o.api_key_env is None else None
        return api_key(self.name, o.api_key_env, "OPENAI_API_KEY", placeholder=placeholder)

    def _endpoint(self) -> dict:
        return {"base_url": self.options.base_url or DEFAULT_BASE_URL, "mode": self.options.mode}

    def _sdk(self):
        import openai

        # base_url explicit: the SDK would otherwise read OPENAI_BASE_URL, which the identity would not show
        return self.loop_local(
            "sdk",
            lambda: openai.AsyncOpenAI(
                api_key=self._key(),
                base_url=self.options.base_url or DEFAULT_BASE_URL,
                max_retries=0,
                timeout=self.options.timeout_s,
            ),
        )

    # -- one attempt -----------------------------------------------------------------------------
    async def _send(self, request: LLMRequest) -> LLMResponse:
        common = {"model": self.options.model, "max_tokens": request.max_tokens, "temperature": request.temperature}
        if request.stop:
            common["stop"] = list(request.stop)
        if request.seed is not None:
            common["seed"] = request.seed
        out, text, logprobs = await (self._chat if self.options.mode == "chat" else self._completion)(request, common)
        usage = out.usage
        return LLMResponse(
            text=text,
            prompt_tokens=getattr(usage, "prompt_tokens", 0) or 0,
            completion_tokens=getattr(usage, "completion_tokens", 0) or 0,
            logprobs=logprobs,
            finish_reason=self._choice(out).finish_reason,
        )

    async def _chat(self, request: LLMRequest, common: dict):
        messages = list(request.messages) or [{"role": "user", "content": request.prompt or ""}]
        if request.top_logprobs:
            common.update(logprobs=True, top_logprobs=request.top_logprobs)
        out = await self._call(self._sdk().chat.completions.create(messages=messages, **common))
        choice = self._choice(out)
        logprobs = None
        if request.top_logprobs and choice.logprobs is not None and choice.logprobs.content is not None:
            logprobs = [
                TokenLogprob(token=c.token, logprob=c.logprob, top={t.token: t.logprob for t in c.top_logprobs or ()})
                for c in choice.logprobs.content
            ]
        return out, choice.message.content or "", logprobs

    async def _completion(self, request: LLMRequest, common: dict):
        if request.prompt is None:
            raise LLMError("mode 'completions' needs requests with a prompt, not chat messages", self._where)
        if request.top_logprobs:
            common["logprobs"] = request.top_logprobs
        out = await self._call(self._sdk().completions.create(prompt=request.prompt, **common))
        choice = self._choice(out)
        logprobs = None
        lp = choice.logprobs
        if request.top_logprobs and lp is not None and lp.tokens is not None:
            tops = lp.top_logprobs or [None] * len(lp.tokens)
            logprobs = [
                TokenLogprob(token=t, logprob=v, top=dict(top or {}))
                for t, v, top in zip(lp.tokens, lp.token_logprobs or (), tops)
                if v is not None
            ]
        return out, choice.text or "", logprobs

    async def _continuation(self, prompt: str, continuation: str) -> list[float]:
        if not prompt:
            raise LLMError(
                "continuation_logprobs needs a non-empty prompt (the first token has no logprob)", self._where
            )
        full = prompt + continuation
        # max_tokens 1, not 0: some servers read 0 as "up to the context length"; the extra token is ignored
        out = await self._call(
            self._sdk().completions.create(
                model=self.options.model, prompt=full, max_tokens=1, echo=True, logprobs=1, temperature=0.0
            )
        )
        return _continuation_values(self._choice(out), prompt, full, self._where)

    # -- SDK plumbing ----------------------------------------------------------------------------
    @staticmethod
    def _choice(out):
        choices = getattr(out, "choices", None)
        if not choices:
            raise LLMError("the response has no choices", transient=True, kind="malformed")
        return choices[0]

    async def _call(self, pending):
        import openai

        return await sdk_call(openai, pending, self.options.timeout_s)


def _continuation_values(choice, prompt: str, full: str, where: str) -> list[float]:
    """The logprobs of the tokens of an echoed completion that overlap ``full[len(prompt):]``."""
    lp = choice.logprobs
    if (
        lp is None
        or not lp.tokens
        or not (choice.text or "").startswith(full)
        or len(lp.token_logprobs or ()) != len(lp.tokens)
    ):
        raise LLMError(
            "the server returned no logprobs for the prompt (completions with echo=True and logprobs); "
            "continuation_logprobs needs a server that supports echo",
            where,
        )
    starts = list(lp.text_offset or ())
    if len(starts) != len(lp.tokens):
        starts = [0]
        for t in lp.tokens[:-1]:
            starts.append(starts[-1] + len(t))
    # OpenAI's layout: one entry per prompt token, then the generated ones. llama-cpp-python (up to
    # 0.3.36 at least) leaves the generated token out and gives each prompt token the logprob of the
    # position after it (abetlen/llama-cpp-python#1983): numbers that look right and are not.
    if len(choice.text) > len(full) and starts[-1] < len(full):
        raise LLMError(
            "the server's echoed logprobs do not follow OpenAI's layout (no entry for the generated "
            "token): llama-cpp-python's server shifts them by one position; use the 'local' client "
            "or another server (vLLM) for continuation_logprobs",
            where,
        )
    ends = starts[1:] + [starts[-1] + len(lp.tokens[-1])]
    values = [v for s, e, v in zip(starts, ends, lp.token_logprobs) if s < len(full) and e > len(prompt)]
    if not values or starts[0] != 0 or any(v is None for v in values):
        raise LLMError("the server returned no logprobs for the continuation's tokens", where)
    return [float(v) for v in values]


@saebench.hookimpl
def register_llm_clients(register):
    register(OpenAIClient)
