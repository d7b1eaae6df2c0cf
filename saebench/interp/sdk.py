"""What the clients of HTTP APIs share: the API key from the environment, and SDK errors as LLMError.

The ``openai`` and ``anthropic`` SDKs share their exception names, so one mapping serves both:
timeouts, connection errors, 408, 429, 5xx and undecodable bodies are transient (retried by
:class:`saebench.LLMClient`), anything else is final.
"""

from __future__ import annotations

import json
import os
from collections.abc import Awaitable
from typing import Any, TypeVar

from saebench.errors import ConfigError
from saebench.interp.llm import LLMError

T = TypeVar("T")


def api_key(client: str, api_key_env: str | None, default_env: str, *, placeholder: str | None = None) -> str:
    """The API key from the environment: ``api_key_env`` when given (it must be set), else ``default_env``,
    else ``placeholder`` (a local server that needs none). Raises ConfigError naming the variable, never its value."""
    where = f"llm client {client!r}"
    if api_key_env is not None:
        value = os.environ.get(api_key_env)
        if not value:
            raise ConfigError(f"environment variable {api_key_env} (option api_key_env) is not set", where)
        return value
    if placeholder is not None:
        return placeholder
    value = os.environ.get(default_env)
    if not value:
        raise ConfigError(f"no API key: set {default_env}, or name another variable with option api_key_env", where)
    return value


async def sdk_call(sdk: Any, pending: Awaitable[T], timeout_s: float) -> T:
    """Await a call of the ``openai`` or ``anthropic`` SDK module ``sdk`` (they share exception names):
    its exceptions become LLMError, transient for timeouts, connection errors, 408, 429, 5xx and
    undecodable bodies."""
    try:
        return await pending
    except sdk.APITimeoutError:
        raise LLMError(f"no answer within {timeout_s:g} s", transient=True, kind="timeout") from None
    except sdk.APIConnectionError as exc:
        cause = exc.__cause__ or exc.__context__
        raise LLMError(f"connection failed: {cause or exc}", transient=True, kind="connection") from None
    except sdk.APIStatusError as exc:
        status = exc.status_code
        raise LLMError(
            f"HTTP {status}: {_status_message(exc)}",
            status=status,
            transient=status in (408, 429) or status >= 500,
            retry_after=retry_after(exc.response.headers),
        ) from None
    except (sdk.APIResponseValidationError, json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise LLMError(f"undecodable response: {str(exc)[:300]}", transient=True, kind="malformed") from None


def _status_message(exc: Any) -> str:
    body = getattr(exc, "body", None)
    err = body.get("error", body) if isinstance(body, dict) else None
    if isinstance(err, dict) and err.get("message"):
        return str(err["message"])[:300]
    return str(exc)[:300]


def retry_after(headers: Any) -> float | None:
    """Seconds from a response's Retry-After (or retry-after-ms) header; None when absent or an HTTP date."""
    for name, scale in (("retry-after-ms", 1e-3), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is not None:
            try:
                return float(value) * scale
            except ValueError:
                return None
    return None
