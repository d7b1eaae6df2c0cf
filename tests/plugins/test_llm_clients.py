"""LLM clients: the OpenAI and Anthropic plugins against the fake server (retries, concurrency, the
response cache, keys), the local transformers client on the embedded SmolLM2, and embedded models.

The fake server's tokens are words with their trailing spaces, each with logprob -0.1 × its
length, so every expected logprob below is written out by hand.
"""

import asyncio
import contextlib
import time

import pytest

import saebench.interp.llm
from saebench.errors import ConfigError
from saebench.interp.llm import LLMError, LLMRequest
from saebench.models import embedded
from saebench.plugins.llm_clients.anthropic import AnthropicClient
from saebench.plugins.llm_clients.openai import OpenAIClient
from saebench.testing.fakellm import FakeLLMServer

SECRET = "sk-planted-secret-7c1e9b"


def chat(text, **kw):
    return LLMRequest(messages=({"role": "user", "content": text},), **kw)


def openai_client(server, **options):
    options.setdefault("backoff_s", 0.0)
    return OpenAIClient(base_url=server.openai_url, model="fake-model", **options)


def run(coro):
    return asyncio.run(coro)


# -- OpenAI-compatible -------------------------------------------------------------------------------
def test_chat_text_usage_and_logprobs():
    with FakeLLMServer(answer=lambda body: "Paris is big") as server:
        r = run(openai_client(server).complete(chat("capital of France?", top_logprobs=2, max_tokens=20)))
        body = server.requests[-1].body
    assert r.text == "Paris is big" and (r.prompt_tokens, r.completion_tokens) == (3, 3) and not r.cached
    assert body["logprobs"] is True and body["top_logprobs"] == 2 and body["max_tokens"] == 20
    assert [t.token for t in r.logprobs] == ["Paris ", "is ", "big"]
    assert [t.logprob for t in r.logprobs] == pytest.approx([-0.6, -0.3, -0.3])
    assert r.logprobs[0].top == pytest.approx({"Paris ": -0.6, "alt1": -1.6})
    assert r.finish_reason == "stop"


def test_completions_mode_and_max_tokens():
    with FakeLLMServer(answer=lambda body: "upon a time there") as server:
        client = openai_client(server, mode="completions")
        r = run(client.complete(LLMRequest(prompt="Once", top_logprobs=3, max_tokens=2)))
        body = server.requests[-1].body
        with pytest.raises(LLMError, match="needs requests with a prompt"):
            run(client.complete(chat("hi")))
    assert body["prompt"] == "Once" and body["logprobs"] == 3
    assert r.text == "upon a " and r.finish_reason == "length"
    assert [(t.token, round(t.logprob, 6)) for t in r.logprobs] == [("upon ", -0.5), ("a ", -0.2)]
    assert list(r.logprobs[0].top) == ["upon ", "alt1", "alt2"]


def test_continuation_logprobs_from_echoed_prompt():
    with FakeLLMServer(answer=lambda body: "tail") as server:
        client = openai_client(server)
        assert client.supports_continuation_logprobs
        # tokens "The ", "cat ", "sat ", "on": the continuation is "sat on"
        assert run(client.continuation_logprobs("The cat ", "sat on")) == pytest.approx([-0.4, -0.2])
        body = server.requests[-1].body
    assert server.requests[-1].path == "/v1/completions" and body["echo"] is True and body["prompt"] == "The cat sat on"
    with FakeLLMServer(echo=False) as server:
        with pytest.raises(LLMError, match="no logprobs for the prompt") as e:
            run(openai_client(server).continuation_logprobs("The cat ", "sat on"))
        assert not e.value.transient and len(server.requests) == 1


def test_transient_failures_are_retried_until_an_answer():
    faults = ["429", "500", "timeout", "malformed", "disconnect", "503"]
    with FakeLLMServer(answer=lambda body: "fine", faults=faults, hang_s=1.0) as server:
        client = openai_client(server, timeout_s=0.3, max_retries=6)
        r = run(client.complete(chat("hi")))
        assert r.text == "fine" and len(server.requests) == 7
    s = client.stats
    assert (s.calls, s.attempts, s.retries, s.gave_up) == (1, 7, 6, 0)
    assert dict(s.failures) == {"rate_limit": 1, "server": 2, "timeout": 1, "malformed": 1, "connection": 1}


def test_gives_up_after_max_retries_and_never_retries_a_400():
    with FakeLLMServer(faults=["500"] * 3) as server:
        client = openai_client(server, max_retries=2)
        with pytest.raises(LLMError) as e:
            run(client.complete(chat("hi")))
        assert len(server.requests) == 3 and client.stats.gave_up == 1
    assert e.value.transient and e.value.status == 500
    assert "'openai'" in str(e.value) and "gave up after 3 attempt(s)" in str(e.value) and "HTTP 500" in str(e.value)

    with FakeLLMServer(faults=["400"]) as server:
        with pytest.raises(LLMError, match="HTTP 400") as e:
            run(openai_client(server, max_retries=5).complete(chat("hi")))
        assert len(server.requests) == 1 and not e.value.transient


def test_retry_after_is_honoured_and_capped(monkeypatch):
    with FakeLLMServer(faults=["429"], retry_after=0.4) as server:
        t0 = time.perf_counter()
        run(openai_client(server).complete(chat("hi")))
        assert time.perf_counter() - t0 >= 0.4 and len(server.requests) == 2
    monkeypatch.setattr(saebench.interp.llm, "MAX_RETRY_WAIT_S", 0.05)
    with FakeLLMServer(faults=["429"], retry_after=30) as server:
        t0 = time.perf_counter()
        run(openai_client(server).complete(chat("hi")))
        assert time.perf_counter() - t0 < 5 and len(server.requests) == 2


def test_concurrency_limit_is_respected_and_reached():
    with FakeLLMServer(delay_s=0.1) as server:
        client = openai_client(server, max_concurrency=4)

        async def many():
            return await asyncio.gather(*(client.complete(chat(f"q{i}")) for i in range(20)))

        assert len(run(many())) == 20
        assert server.max_in_flight == 4 and len(server.requests) == 20


def test_each_request_carries_its_own_sampling_parameters():
    a = chat("first", temperature=0.0, max_tokens=7, seed=1, stop=("\n",))
    b = chat("second", temperature=0.9, max_tokens=33, seed=2)
    with FakeLLMServer(delay_s=0.05) as server:
        client = openai_client(server)

        async def both():
            return await asyncio.gather(client.complete(a), client.complete(b))

        run(both())
        bodies = {r.body["messages"][0]["content"]: r.body for r in server.requests}
    assert {k: bodies["first"][k] for k in ("temperature", "max_tokens", "seed", "stop")} == \
        {"temperature": 0.0, "max_tokens": 7, "seed": 1, "stop": ["\n"]}
    assert {k: bodies["second"].get(k) for k in ("temperature", "max_tokens", "seed", "stop")} == \
        {"temperature": 0.9, "max_tokens": 33, "seed": 2, "stop": None}


def test_a_client_survives_successive_event_loops():
    with FakeLLMServer(answer=lambda body: "again") as server:
        client = openai_client(server, max_concurrency=2)
        for _ in range(3):  # each asyncio.run closes its loop; semaphores and SDK clients must not outlive it
            assert run(client.complete(chat("hi"))).text == "again"
        assert len(server.requests) == 3


def test_response_cache(tmp_path):
    path = tmp_path / "llm.sqlite"
    with FakeLLMServer(answer=lambda body: "cached words here") as server:
        client = openai_client(server, prompt_price_per_mtok=1e6, completion_price_per_mtok=2e6)
        client.use_cache(path)
        first = run(client.complete(chat("hi there", temperature=0.0)))
        again = run(client.complete(chat("hi there", temperature=0.0)))
        assert len(server.requests) == 1 and not first.cached and again.cached
        assert (again.text, again.prompt_tokens, again.completion_tokens) == ("cached words here", 2, 3)
        assert first.cost_usd == again.cost_usd == pytest.approx(2 + 2 * 3)  # a hit keeps the original cost
        run(client.complete(chat("hi there", temperature=0.5)))
        run(client.complete(chat("hi there", max_tokens=5)))
        assert len(server.requests) == 3
        assert (client.stats.calls, client.stats.cache_hits) == (4, 1)

        other = openai_client(server)
        other.use_cache(path)
        assert run(other.complete(chat("hi there"))).cached and len(server.requests) == 3
        other_model = OpenAIClient(base_url=server.openai_url, model="another-model", backoff_s=0.0)
        other_model.use_cache(path)
        assert not run(other_model.complete(chat("hi there"))).cached and len(server.requests) == 4

    with FakeLLMServer(faults=["400"]) as server:  # a failure is not stored: the next call asks again
        client = openai_client(server)
        client.use_cache(path)
        with pytest.raises(LLMError):
            run(client.complete(chat("fails once")))
        assert run(client.complete(chat("fails once"))).text == "ok" and len(server.requests) == 2


def test_identical_concurrent_requests_share_one_call(tmp_path):
    with FakeLLMServer(delay_s=0.1) as server:
        client = openai_client(server)
        client.use_cache(tmp_path / "llm.sqlite")

        async def same():
            return await asyncio.gather(*(client.complete(chat("same")) for _ in range(5)))

        out = run(same())
        assert len(server.requests) == 1 and sum(not r.cached for r in out) == 1 and client.stats.cache_hits == 4


def test_cache_files_are_shared_between_connections(tmp_path):
    a, b = saebench.interp.llm.ResponseCache(tmp_path / "c.sqlite"), saebench.interp.llm.ResponseCache(tmp_path / "c.sqlite")
    a.put("k1", "{}", "one")
    b.put("k1", "{}", "other")  # the first answer stored stays
    b.put("k2", "{}", "two")
    assert (a.get("k1"), a.get("k2"), b.get("k1"), a.get("k3")) == ("one", "two", "one", None)


def test_the_api_key_stays_out_of_everything(tmp_path, monkeypatch):
    monkeypatch.setenv("SAEBENCH_TEST_KEY", SECRET)
    path = tmp_path / "llm.sqlite"
    with FakeLLMServer(answer=lambda body: "answer", api_key=SECRET) as server:
        client = openai_client(server, api_key_env="SAEBENCH_TEST_KEY")
        client.use_cache(path)
        run(client.complete(chat("hello", top_logprobs=1)))
        assert server.requests[-1].headers["authorization"] == f"Bearer {SECRET}"  # the key was used
    with FakeLLMServer(api_key="the-right-one") as server:  # a 401 that quotes the key sent
        with pytest.raises(LLMError) as e:
            run(openai_client(server, api_key_env="SAEBENCH_TEST_KEY").complete(chat("hi")))
        assert "HTTP 401" in str(e.value) and "***" in str(e.value)
    texts = [str(e.value), repr(e.value), e.value.problem, str(client), repr(client), str(client.options),
             str(client.identity), str(client.stats)]
    assert not [t for t in texts if SECRET in t]
    client.use_cache(None)
    for f in tmp_path.iterdir():  # the database and its WAL
        assert SECRET.encode() not in f.read_bytes()


def test_key_rules(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    monkeypatch.setenv("EMPTY_KEY", "")
    with pytest.raises(ConfigError, match="MISSING_KEY_VAR"):
        OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", api_key_env="MISSING_KEY_VAR")
    with pytest.raises(ConfigError, match="EMPTY_KEY"):
        AnthropicClient(model="m", api_key_env="EMPTY_KEY")
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        OpenAIClient(model="gpt-x")
    with pytest.raises(ConfigError, match="ANTHROPIC_API_KEY"):
        AnthropicClient(model="claude-x")
    local = OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1")  # a local server needs no key
    assert local.identity == {"client": "openai", "model": "m", "base_url": "http://127.0.0.1:9/v1", "mode": "chat"}
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)
    assert OpenAIClient(model="gpt-x").identity["base_url"] == "https://api.openai.com/v1"
    with pytest.raises(ConfigError, match="'mode'"):
        OpenAIClient(model="m", base_url="http://127.0.0.1:9/v1", mode="edit")
    with pytest.raises(ConfigError, match="'model'"):
        OpenAIClient(base_url="http://127.0.0.1:9/v1")


# -- Anthropic ---------------------------------------------------------------------------------------
def test_anthropic_messages_system_usage_and_retries(monkeypatch):
    monkeypatch.setenv("SAEBENCH_TEST_KEY", SECRET)
    request = LLMRequest(messages=({"role": "system", "content": "Be brief."}, {"role": "user", "content": "Capital?"}),
                         max_tokens=50, temperature=0.0)
    with FakeLLMServer(answer=lambda body: "Paris , of course", faults=["529", "500"], api_key=SECRET) as server:
        client = AnthropicClient(base_url=server.url, model="claude-x", api_key_env="SAEBENCH_TEST_KEY", backoff_s=0.0)
        r = run(client.complete(request))
        body = server.requests[-1].body
        assert [q.path for q in server.requests] == ["/v1/messages"] * 3
        assert client.identity == {"client": "anthropic", "model": "claude-x", "base_url": server.url}
    assert (r.text, r.prompt_tokens, r.completion_tokens, r.logprobs) == ("Paris , of course", 3, 4, None)
    assert body["system"] == "Be brief." and body["messages"] == [{"role": "user", "content": "Capital?"}]
    assert body["max_tokens"] == 50 and body["model"] == "claude-x"
    assert dict(client.stats.failures) == {"server": 2} and client.stats.retries == 2
    assert not client.supports_continuation_logprobs
    with pytest.raises(LLMError, match="cannot score a continuation"):
        run(client.continuation_logprobs("a", "b"))


# -- fake server -------------------------------------------------------------------------------------
def test_fake_server_random_faults_follow_the_seed():
    def faults(seed):
        with FakeLLMServer(fault_rate=0.5, fault_kinds=("429", "500"), seed=seed) as server:
            client = openai_client(server, max_retries=0)
            for i in range(12):
                with contextlib.suppress(LLMError):  # the fault sequence is what the test compares
                    run(client.complete(chat(f"q{i}")))
            return [r.fault for r in server.requests]

    first = faults(1)
    assert first == faults(1) and first != faults(2) and {None, "429", "500"} >= set(first) and None in first


# -- embedded models ---------------------------------------------------------------------------------
def test_embedded_names_and_packages(monkeypatch):
    with pytest.raises(ConfigError, match="unknown embedded model 'llama-9000'; known: .*smollm2-135m-instruct"):
        embedded.resolve("llama-9000")
    folder = embedded.resolve("all-minilm-l6-v2")
    assert (folder / "config.json").is_file() and (folder / "model.safetensors").is_file()
    assert embedded.embedded_id("all-minilm-l6-v2").startswith("all-minilm-l6-v2@")
    ghost = embedded._Package("no_such_module_xyz", "pip install ghost-model", "gguf", "x.gguf")
    monkeypatch.setitem(embedded.EMBEDDED, "ghost", ghost)
    with pytest.raises(ConfigError, match="pip install ghost-model"):
        embedded.resolve("ghost")


# -- local transformers client -----------------------------------------------------------------------
@pytest.fixture(scope="module")
def smollm():
    from saebench.plugins.llm_clients.local import LocalClient

    client = LocalClient(max_batch=4)
    sizes = []
    generate = client._generate

    def spy(requests):
        sizes.append(len(requests))
        return generate(requests)

    client._generate = spy
    client.batch_sizes = sizes
    return client


def test_local_client_loads_lazily_and_checks_its_model(tmp_path):
    from saebench.plugins.llm_clients.local import LocalClient

    client = LocalClient()
    assert client._loaded is None and client.identity["weights"].startswith("smollm2-135m-instruct@")
    with pytest.raises(ConfigError, match="unknown embedded model"):
        LocalClient(model="embedded:nope")
    with pytest.raises(ConfigError, match="not a model folder"):
        LocalClient(model=str(tmp_path))


@pytest.mark.slow
def test_local_generation_with_top_logprobs(smollm):
    r = run(smollm.complete(chat("What is the capital of France?", max_tokens=8, top_logprobs=3)))
    assert r.text and r.prompt_tokens > 5 and 0 < r.completion_tokens <= 8
    assert "".join(t.token for t in r.logprobs) == r.text
    for t in r.logprobs:
        assert t.logprob <= 0 and len(t.top) == 3 and max(t.top.values()) <= 0
        assert t.token in t.top and t.top[t.token] == pytest.approx(t.logprob)  # greedy: the chosen token is the best
        assert t.logprob == pytest.approx(max(t.top.values()))


@pytest.mark.slow
def test_local_continuation_logprobs_match_a_float64_recomputation(smollm):
    import copy

    import torch

    prompt, continuation = "The capital of France is", " Paris, a city"
    got = run(smollm.continuation_logprobs(prompt, continuation))
    model, tokenizer = smollm._loaded
    enc = tokenizer(prompt + continuation, return_offsets_mapping=True)
    ids = enc["input_ids"]
    # the continuation's tokens: those ending after the prompt
    first = next(i for i, (s, e) in enumerate(enc["offset_mapping"]) if e > len(prompt))
    with torch.no_grad():
        logits = copy.deepcopy(model).double()(input_ids=torch.tensor([ids])).logits[0]
    lp = torch.log_softmax(logits, -1)
    expected = [lp[i - 1, ids[i]].item() for i in range(first, len(ids))]
    assert len(got) == len(expected) == len(tokenizer(continuation)["input_ids"])
    assert got == pytest.approx(expected, abs=1e-4)


@pytest.mark.slow
def test_local_micro_batched_greedy_equals_one_by_one(smollm):
    requests = [chat(q, max_tokens=10) for q in ("Name a color.", "What is 2+2?", "Say hello.", "Name a fruit.")]
    requests.append(LLMRequest(prompt="Once upon a time", max_tokens=6))

    async def together():
        return await asyncio.gather(*(smollm.complete(r) for r in requests))

    smollm.batch_sizes.clear()
    batched = run(together())
    assert max(smollm.batch_sizes) == 4 and sum(smollm.batch_sizes) == 5  # max_batch 4: 4 + 1
    smollm.batch_sizes.clear()
    alone = [run(smollm.complete(r)) for r in requests]
    assert smollm.batch_sizes == [1] * 5
    assert [r.text for r in batched] == [r.text for r in alone]
    assert [r.completion_tokens for r in batched] == [r.completion_tokens for r in alone]


@pytest.mark.slow
def test_local_sampling_follows_the_seed_and_leaves_the_global_rng_alone(smollm):
    import torch

    def sample(seed):
        return run(smollm.complete(LLMRequest(prompt="My favourite animal is", max_tokens=6, temperature=1.0, seed=seed)))

    torch.manual_seed(123)
    expected_next = torch.rand(3)
    torch.manual_seed(123)
    a, b, c = sample(1), sample(1), sample(2)
    assert torch.equal(torch.rand(3), expected_next)  # sampling used its own generator state
    assert a.text == b.text and a.text != c.text and a.completion_tokens == 6
