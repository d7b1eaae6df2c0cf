"""A fake LLM server on 127.0.0.1 that the official OpenAI and Anthropic SDKs talk to: for tests and
throughput benchmarks, with known answers, token counts, logprobs, latency and injected faults.

    with FakeLLMServer(answer=lambda body: "yes", delay_s=0.05, faults=["429", None, "timeout"]) as server:
        client = OpenAIClient(base_url=server.openai_url, model="fake")
        ...
        server.requests        # every request received: path, JSON body, headers, the fault it got
        server.max_in_flight   # the most generation requests it was answering at once

Endpoints: OpenAI ``GET /v1/models``, ``POST /v1/chat/completions`` and ``/v1/completions``;
Anthropic ``POST /v1/messages`` (give the Anthropic SDK ``server.url``, the OpenAI SDK
``server.openai_url``). Tokens are the text's :func:`pieces` (a word with its trailing spaces);
each piece's logprob is ``-0.1 * len(piece)``, and the top alternatives are the piece itself then
``alt1``, ``alt2``... each 1 nat less likely. ``max_tokens`` cuts the answer after that many pieces
(finish reason "length"); a ``stop`` string cuts it before the stop.

Faults (one per generation request: the ``faults`` schedule first, an entry None meaning none, then
each request with probability ``fault_rate``, drawn from ``fault_kinds`` by a ``seed``ed RNG):
an HTTP status ("429", "500", "529", "400"...) with an error body in the endpoint's format (and
``Retry-After: retry_after`` when set); "timeout" (answers only after ``hang_s``); "malformed"
(status 200, a body that is not JSON); "truncated" (a valid answer cut half-way, finish reason
"length"); "disconnect" (the connection closes half-way through the body).
"""

from __future__ import annotations

import json
import random
import re
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def pieces(text: str) -> list[str]:
    """The fake tokenisation: leading spaces, then each word with the spaces after it (they join to ``text``)."""
    return re.findall(r"^\s+|\S+\s*", text)


def piece_logprob(piece: str) -> float:
    return -0.1 * len(piece)


def prompt_text(body: dict) -> str:
    """The whole prompt of a request body (system, then each message's content, or the raw prompt)."""
    parts = [body["system"]] if isinstance(body.get("system"), str) else []
    for m in body.get("messages") or ():
        content = m.get("content")
        if isinstance(content, list):  # Anthropic's content blocks
            content = "".join(b.get("text", "") for b in content if isinstance(b, dict))
        parts.append(str(content))
    if isinstance(body.get("prompt"), str):
        parts.append(body["prompt"])
    return "\n".join(parts)


@dataclass
class Recorded:
    """One request the server received."""

    path: str
    body: Any
    headers: dict[str, str]  # names in lower case
    fault: str | None


class _QuietServer(ThreadingHTTPServer):
    def handle_error(self, request, client_address) -> None:
        import sys

        if isinstance(sys.exc_info()[1], (ConnectionResetError, BrokenPipeError)):
            return  # a client that went away (a killed run, a timeout): expected in fault and crash tests
        super().handle_error(request, client_address)


class FakeLLMServer:
    """OpenAI- and Anthropic-compatible HTTP server in a background thread (a context manager).

    ``answer(body) -> str`` writes each answer from the request's JSON body (default: "ok");
    ``count_tokens(text) -> int`` gives the usage counts (default: whitespace-separated words);
    ``delay_s`` is added to every generation; ``echo=False`` makes ``/v1/completions`` ignore
    ``echo`` (no prompt logprobs), like servers that do not support it; with ``api_key`` set, a
    request with another key gets a 401 that quotes the key it sent, as OpenAI's does.
    """

    def __init__(
        self,
        answer: Callable[[dict], str] | None = None,
        *,
        delay_s: float = 0.0,
        faults: Sequence[str | None] = (),
        fault_rate: float = 0.0,
        fault_kinds: Sequence[str] = ("429", "500"),
        seed: int = 0,
        count_tokens: Callable[[str], int] | None = None,
        hang_s: float = 5.0,
        retry_after: float | None = None,
        echo: bool = True,
        api_key: str | None = None,
        model: str = "fake-model",
    ):
        self.answer = answer or (lambda body: "ok")
        self.count_tokens = count_tokens or (lambda text: len(text.split()))
        self.delay_s, self.hang_s, self.retry_after, self.echo, self.model = delay_s, hang_s, retry_after, echo, model
        self.api_key = api_key
        self.fault_rate, self.fault_kinds = fault_rate, tuple(fault_kinds)
        self._schedule = list(faults)
        self._rng = random.Random(seed)
        self._lock = threading.Lock()
        self.requests: list[Recorded] = []
        self.in_flight = 0
        self.max_in_flight = 0
        self._httpd: ThreadingHTTPServer | None = None

    # -- lifecycle -------------------------------------------------------------------------------
    @property
    def url(self) -> str:
        """``http://127.0.0.1:PORT``: the Anthropic SDK's base_url."""
        if self._httpd is None:
            raise RuntimeError("the fake server is not running: use it as a context manager or call start()")
        return f"http://127.0.0.1:{self._httpd.server_address[1]}"

    @property
    def openai_url(self) -> str:
        """``http://127.0.0.1:PORT/v1``: the OpenAI SDK's base_url."""
        return self.url + "/v1"

    def start(self) -> FakeLLMServer:
        handler = type("Handler", (_Handler,), {"fake": self})
        self._httpd = _QuietServer(("127.0.0.1", 0), handler)
        self._httpd.daemon_threads = True
        self._httpd.block_on_close = False  # a "timeout" fault may still be sleeping
        threading.Thread(target=self._httpd.serve_forever, name="fake-llm-server", daemon=True).start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._httpd = None

    def __enter__(self) -> FakeLLMServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    def reset(self) -> None:
        """Forget the recorded requests and the in-flight maximum."""
        with self._lock:
            self.requests.clear()
            self.max_in_flight = self.in_flight

    def generation_requests(self) -> list[Recorded]:
        return [r for r in self.requests if r.path != "/v1/models"]

    # -- what the handler asks -------------------------------------------------------------------
    def _admit(self, path: str, body: Any, headers: dict[str, str]) -> str | None:
        with self._lock:
            fault = None
            if path != "/v1/models":
                if self._schedule:
                    fault = self._schedule.pop(0)
                elif self.fault_rate and self._rng.random() < self.fault_rate:
                    fault = self._rng.choice(self.fault_kinds)
                self.in_flight += 1
                self.max_in_flight = max(self.max_in_flight, self.in_flight)
            self.requests.append(Recorded(path, body, headers, fault))
            return fault

    def _leave(self) -> None:
        with self._lock:
            self.in_flight -= 1


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as the SDKs expect
    fake: FakeLLMServer

    def log_message(self, *args) -> None:  # quiet: tests read self.fake.requests instead
        pass

    def _headers(self) -> dict[str, str]:
        return {k.lower(): v for k, v in self.headers.items()}

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        self.fake._admit(path, None, self._headers())
        if path == "/v1/models":
            self._json(
                200,
                {
                    "object": "list",
                    "data": [{"id": self.fake.model, "object": "model", "created": 0, "owned_by": "saebench-fake"}],
                },
            )
        else:
            self._json(404, {"error": {"message": f"no route {path}", "type": "not_found", "code": None}})

    def do_POST(self) -> None:
        path = self.path.split("?")[0]
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        try:
            body = json.loads(raw)
        except ValueError:
            body = None
        fault = self.fake._admit(path, body, self._headers())
        try:
            self._generate(path, body, fault)
        except (BrokenPipeError, ConnectionResetError):  # the client gave up (a timeout fault)
            pass
        finally:
            self.fake._leave()

    def _generate(self, path: str, body: Any, fault: str | None) -> None:
        anthropic = path == "/v1/messages"
        if path not in ("/v1/chat/completions", "/v1/completions", "/v1/messages"):
            return self._error(404, f"no route {path}", anthropic)
        if not isinstance(body, dict):
            return self._error(400, "the body is not a JSON object", anthropic)
        given = self.headers.get("Authorization", "").removeprefix("Bearer ") or self.headers.get("x-api-key", "")
        if self.fake.api_key is not None and given != self.fake.api_key:
            return self._error(401, f"Incorrect API key provided: {given}", anthropic)
        if fault and fault.isdigit():
            return self._error(int(fault), f"injected fault {fault}", anthropic)
        time.sleep(self.fake.hang_s if fault == "timeout" else self.fake.delay_s)
        if fault == "malformed":
            return self._send(200, b'{"id": "x", "choices": [{"text": "unfinis')
        text = self.fake.answer(body)
        limit = body.get("max_tokens")
        if fault == "truncated":
            limit = len(pieces(text)) // 2
        answer, finish = _cut(text, limit, body.get("stop") or body.get("stop_sequences"))
        if anthropic:
            out = self._messages(body, answer, finish)
        elif path == "/v1/chat/completions":
            out = self._chat(body, answer, finish)
        else:
            out = self._completions(body, answer, finish)
        data = json.dumps(out).encode()
        if fault == "disconnect":
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data[: len(data) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        self._send(200, data)

    # -- bodies ----------------------------------------------------------------------------------
    def _usage(self, body: dict, answer: str) -> tuple[int, int]:
        return self.fake.count_tokens(prompt_text(body)), self.fake.count_tokens(answer)

    def _chat(self, body: dict, answer: str, finish: str) -> dict:
        logprobs = None
        if body.get("logprobs"):
            n = int(body.get("top_logprobs") or 0)
            logprobs = {
                "content": [
                    {
                        "token": p,
                        "logprob": piece_logprob(p),
                        "bytes": list(p.encode()),
                        "top_logprobs": [
                            {"token": t, "logprob": lp, "bytes": list(t.encode())} for t, lp in _top(p, n).items()
                        ],
                    }
                    for p in pieces(answer)
                ],
                "refusal": None,
            }
        prompt, completion = self._usage(body, answer)
        return {
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "created": int(time.time()),
            "model": body.get("model", self.fake.model),
            "choices": [
                {
                    "index": 0,
                    "message": {"role": "assistant", "content": answer},
                    "finish_reason": finish,
                    "logprobs": logprobs,
                }
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }

    def _completions(self, body: dict, answer: str, finish: str) -> dict:
        prompt_str = body.get("prompt") if isinstance(body.get("prompt"), str) else ""
        echo = bool(body.get("echo")) and self.fake.echo
        logprobs = None
        if body.get("logprobs") is not None:
            n = int(body["logprobs"])
            tokens, lps, tops = [], [], []
            if echo:
                for i, p in enumerate(pieces(prompt_str)):  # the first token has nothing to be predicted from
                    tokens.append(p)
                    lps.append(None if i == 0 else piece_logprob(p))
                    tops.append(None if i == 0 else _top(p, n))
            for p in pieces(answer):
                tokens.append(p)
                lps.append(piece_logprob(p))
                tops.append(_top(p, n))
            # offsets count from the prompt's start, echoed or not (OpenAI's layout)
            offsets = [(0 if echo else len(prompt_str)) + sum(len(t) for t in tokens[:i]) for i in range(len(tokens))]
            logprobs = {"tokens": tokens, "token_logprobs": lps, "top_logprobs": tops, "text_offset": offsets}
        prompt, completion = self._usage(body, answer)
        return {
            "id": "cmpl-fake",
            "object": "text_completion",
            "created": int(time.time()),
            "model": body.get("model", self.fake.model),
            "choices": [
                {
                    "index": 0,
                    "text": (prompt_str if echo else "") + answer,
                    "finish_reason": finish,
                    "logprobs": logprobs,
                }
            ],
            "usage": {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion},
        }

    def _messages(self, body: dict, answer: str, finish: str) -> dict:
        prompt, completion = self._usage(body, answer)
        return {
            "id": "msg_fake",
            "type": "message",
            "role": "assistant",
            "model": body.get("model", self.fake.model),
            "content": [{"type": "text", "text": answer}],
            "stop_reason": {"length": "max_tokens", "stop": "end_turn"}.get(finish, finish),
            "stop_sequence": None,
            "usage": {"input_tokens": prompt, "output_tokens": completion},
        }

    # -- plumbing --------------------------------------------------------------------------------
    def _error(self, status: int, message: str, anthropic: bool) -> None:
        if anthropic:
            kind = {429: "rate_limit_error", 529: "overloaded_error"}.get(status, "api_error")
            out = {"type": "error", "error": {"type": kind, "message": message}}
        else:
            out = {"error": {"message": message, "type": "fake_error", "param": None, "code": str(status)}}
        headers = {}
        if self.fake.retry_after is not None and status in (429, 503, 529):
            headers["Retry-After"] = f"{self.fake.retry_after:g}"
        self._send(status, json.dumps(out).encode(), headers)

    def _json(self, status: int, out: dict) -> None:
        self._send(status, json.dumps(out).encode())

    def _send(self, status: int, data: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(data)


def _top(piece: str, n: int) -> dict[str, float]:
    lp = piece_logprob(piece)
    return {piece: lp, **{f"alt{i}": lp - i for i in range(1, n)}} if n > 0 else {}


def _cut(text: str, max_tokens: int | None, stop: Any) -> tuple[str, str]:
    """The answer as the server returns it, and its finish reason."""
    finish = "stop"
    if isinstance(stop, str):
        stop = [stop]
    for s in stop or ():
        if s and s in text:
            text = text[: text.index(s)]
    ps = pieces(text)
    if max_tokens is not None and len(ps) > max_tokens:
        text, finish = "".join(ps[:max_tokens]), "length"
    return text, finish
