"""A transformers causal LM in this process, with concurrent requests micro-batched.

The model loads on the first call, not at construction: the runner builds clients while it checks
a matrix. Generation runs in a worker thread, one batch at a time; requests that arrive while a
batch is generating wait in a queue and go together into the next one (left-padded, up to
``max_batch``). Greedy requests batch with others that have the same stop strings (each row's
output is what it would be alone); a sampled request runs alone, so its ``seed`` alone decides it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import random
import threading
from dataclasses import dataclass, field
from pathlib import Path

import torch
from pydantic import Field

import saebench
from saebench.errors import ConfigError
from saebench.interp.llm import LLMClient, LLMError, LLMOptions, LLMRequest, LLMResponse, TokenLogprob
from saebench.models import embedded


@dataclass
class _Queue:
    """Requests of one event loop waiting for the model, and the task that feeds them to it."""

    waiting: list[tuple[LLMRequest, asyncio.Future]] = field(default_factory=list)
    worker: asyncio.Task | None = None


class LocalClient(LLMClient):
    """A transformers causal LM run in this process (embedded:smollm2-135m-instruct by default).

    Messages go through the model's chat template; a request
    with only a ``prompt`` is continued as raw text. Greedy at temperature 0, else sampling (no top-k
    or top-p) seeded by the request's ``seed``.
    """

    name = "local"
    supports_continuation_logprobs = True

    class Options(LLMOptions):
        model: str = Field("embedded:smollm2-135m-instruct", description="embedded:NAME or a local model folder")
        device: str = Field("cpu", description="torch device the model runs on (cpu, cuda, cuda:1...)")
        max_batch: int = Field(8, ge=1, description="most concurrent requests generated as one batch")
        # twice max_batch, so the next batch is already queued while one generates
        max_concurrency: int = Field(16, ge=1, description="requests in flight at once (queued for the next batch)")
        # a batch of long generations on a CPU takes minutes; the time queued counts too
        timeout_s: float = Field(600.0, ge=0.001, description="seconds one attempt may take, time queued included")

    def __init__(self, **options):
        super().__init__(**options)
        # bad options are found here, when the runner checks the matrix, not at the first call
        model, device = self.options.model, self.options.device
        if model.startswith("embedded:"):
            embedded.check(model.removeprefix("embedded:"))
        elif not (Path(model).expanduser() / "config.json").is_file():
            raise ConfigError(
                "not a model folder (no config.json); use embedded:NAME or a save_pretrained folder",
                f"{self._where}: model",
            )
        try:
            torch.device(device)
        except (RuntimeError, TypeError) as exc:
            raise ConfigError(f"unknown device {device!r}", f"{self._where}: device") from exc
        self._weights: str | None = None
        self._loaded = None  # (model, tokenizer), on first use
        self._load_lock = threading.Lock()
        self._model_lock = threading.Lock()  # one forward at a time, whichever loop or thread asks

    def _endpoint(self) -> dict:
        if self._weights is None:  # the weights, not just their name: a re-converted model is a new model
            model = self.options.model
            if model.startswith("embedded:"):
                self._weights = embedded.embedded_id(model.removeprefix("embedded:"))
            else:
                self._weights = _folder_digest(Path(model).expanduser())
        return {"weights": self._weights}

    # -- requests --------------------------------------------------------------------------------
    async def _send(self, request: LLMRequest) -> LLMResponse:
        queue = self.loop_local("queue", _Queue)
        future = asyncio.get_running_loop().create_future()
        queue.waiting.append((request, future))
        if queue.worker is None or queue.worker.done():
            queue.worker = asyncio.ensure_future(self._drain(queue))
        return await future

    async def _drain(self, queue: _Queue) -> None:
        while queue.waiting:
            batch = self._next_batch(queue)
            if not batch:
                continue
            try:
                responses = await asyncio.to_thread(self._generate, [r for r, _ in batch])
            except Exception as exc:  # noqa: BLE001 - handed to every caller of the batch
                for _, f in batch:
                    if not f.done():
                        f.set_exception(exc)
                continue
            for (_, f), response in zip(batch, responses):
                if f.done():  # a caller that timed out has cancelled its future
                    continue
                if isinstance(response, Exception):
                    f.set_exception(response)
                else:
                    f.set_result(response)

    def _next_batch(self, queue: _Queue) -> list[tuple[LLMRequest, asyncio.Future]]:
        """The first waiting request and the ones that can share its batch, removed from the queue."""
        queue.waiting = [(r, f) for r, f in queue.waiting if not f.done()]
        if not queue.waiting:
            return []
        first = queue.waiting[0][0]
        if first.temperature > 0:
            return [queue.waiting.pop(0)]
        batch, rest = [], []
        for r, f in queue.waiting:
            ok = len(batch) < self.options.max_batch and r.temperature == 0 and r.stop == first.stop
            (batch if ok else rest).append((r, f))
        queue.waiting = rest
        return batch

    async def _continuation(self, prompt: str, continuation: str) -> list[float]:
        return await asyncio.to_thread(self._score, prompt, continuation)

    # -- the model (in a worker thread) ----------------------------------------------------------
    def _load(self):
        with self._load_lock:
            if self._loaded is None:
                from transformers import AutoModelForCausalLM, AutoTokenizer

                name = self.options.model
                folder = (
                    embedded.resolve(name.removeprefix("embedded:"))
                    if name.startswith("embedded:")
                    else Path(name).expanduser()
                )
                try:
                    tokenizer = AutoTokenizer.from_pretrained(folder)
                    model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32)
                    model.to(torch.device(self.options.device)).eval()
                except (OSError, ValueError, RuntimeError) as exc:
                    raise ConfigError(
                        f"cannot load the model: {' '.join(str(exc).split())[:300]}", self._where
                    ) from exc
                self._loaded = model, tokenizer
            return self._loaded

    def _encode(self, tokenizer, request: LLMRequest) -> list[int]:
        if request.messages:
            if not tokenizer.chat_template:
                raise LLMError("this model has no chat template: send requests with a prompt", self._where)
            text = tokenizer.apply_chat_template(list(request.messages), add_generation_prompt=True, tokenize=False)
            return tokenizer(text, add_special_tokens=False)["input_ids"]  # the template wrote the special tokens
        return tokenizer(request.prompt or "")["input_ids"]

    def _generate(self, requests: list[LLMRequest]) -> list[LLMResponse | LLMError]:
        """One response per request; a request that cannot be encoded gets its error, the others their answers."""
        model, tokenizer = self._load()
        out: list[LLMResponse | LLMError | None] = [None] * len(requests)
        prompts: dict[int, list[int]] = {}
        for i, r in enumerate(requests):
            try:
                prompts[i] = self._encode(tokenizer, r)
            except LLMError as exc:
                out[i] = exc
        if prompts:
            answers = self._generate_batch(model, tokenizer, [requests[i] for i in prompts], list(prompts.values()))
            for i, answer in zip(prompts, answers):
                out[i] = answer
        return out

    def _generate_batch(
        self, model, tokenizer, requests: list[LLMRequest], prompts: list[list[int]]
    ) -> list[LLMResponse]:
        eos = tokenizer.eos_token_id if tokenizer.eos_token_id is not None else model.generation_config.eos_token_id
        pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else eos
        width = max(len(p) for p in prompts)
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in prompts], device=model.device)
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in prompts], device=model.device)
        first = requests[0]
        kwargs = {
            "max_new_tokens": max(r.max_tokens for r in requests),
            "pad_token_id": pad,
            "eos_token_id": eos,
            "return_dict_in_generate": True,
            "output_logits": any(r.top_logprobs for r in requests),
        }
        if first.stop:
            kwargs.update(stop_strings=list(first.stop), tokenizer=tokenizer)
        if first.temperature > 0:  # alone in its batch (see _next_batch)
            kwargs.update(do_sample=True, temperature=first.temperature, top_k=0, top_p=1.0)
        else:
            kwargs.update(do_sample=False, temperature=None, top_k=None, top_p=None)
        with self._model_lock, torch.inference_mode(), self._seeded(first):
            out = model.generate(input_ids=ids, attention_mask=mask, **kwargs)
        new = out.sequences[:, width:].tolist()
        logits = torch.stack(out.logits, dim=1) if out.logits is not None else None  # [batch, steps, vocab]
        ends = set(eos) if isinstance(eos, (list, tuple)) else {eos}
        ends.add(pad)  # a row stopped by a stop string is padded after it
        return [
            self._response(tokenizer, r, len(p), row, logits[i] if logits is not None else None, ends)
            for i, (r, p, row) in enumerate(zip(requests, prompts, new))
        ]

    @contextlib.contextmanager
    def _seeded(self, request: LLMRequest):
        """Sampling from the request's seed, without touching the process's random state."""
        if request.temperature == 0:
            yield
            return
        device = torch.device(self.options.device)
        devices = [] if device.type == "cpu" else [device]
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(request.seed if request.seed is not None else random.SystemRandom().randrange(2**63))
            yield

    def _response(
        self, tokenizer, request: LLMRequest, n_prompt: int, row: list[int], logits, ends: set[int]
    ) -> LLMResponse:
        row = row[: request.max_tokens]  # the batch generated as many tokens as its longest request wanted
        n_generated, finish = len(row), "length"
        for j, t in enumerate(row):
            if t in ends:
                row, n_generated, finish = row[:j], j + 1, "stop"
                break
        text = tokenizer.decode(row, skip_special_tokens=True)
        cut = min((text.index(s) for s in request.stop if s in text), default=None)
        if cut is not None:
            text, finish = text[:cut], "stop"
        logprobs = None
        if request.top_logprobs:
            lp = torch.log_softmax(logits[: len(row)].float(), dim=-1)
            top_v, top_i = lp.topk(request.top_logprobs, dim=-1)
            logprobs, length = [], 0
            for j, t in enumerate(row):
                if length >= len(text):  # the tokens of the text returned, not those after a stop string
                    break
                piece = tokenizer.decode([t])
                length += len(piece)
                top: dict[str, float] = {}
                for v, i in zip(top_v[j].tolist(), top_i[j].tolist()):
                    top.setdefault(tokenizer.decode([i]), v)
                logprobs.append(TokenLogprob(token=piece, logprob=float(lp[j, t]), top=top))
        return LLMResponse(
            text=text, prompt_tokens=n_prompt, completion_tokens=n_generated, logprobs=logprobs, finish_reason=finish
        )

    def _score(self, prompt: str, continuation: str) -> list[float]:
        model, tokenizer = self._load()
        full = prompt + continuation
        enc = tokenizer(full, return_offsets_mapping=True)
        ids, spans = enc["input_ids"], enc["offset_mapping"]
        # tokens that overlap the continuation (one straddling the boundary counts as continuation)
        wanted = [i for i, (s, e) in enumerate(spans) if e > len(prompt) and s < len(full)]
        if not wanted:
            return []
        if wanted[0] == 0:
            raise LLMError(
                "continuation_logprobs needs a non-empty prompt (the first token has no logprob)", self._where
            )
        with self._model_lock, torch.inference_mode():
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
            lp = torch.log_softmax(logits.float(), dim=-1)
        return [float(lp[i - 1, ids[i]]) for i in wanted]


def _folder_digest(folder: Path) -> str:
    """config.json's bytes and each weight file's name, size and mtime: cheap, and changes with the weights."""
    h = hashlib.sha256((folder / "config.json").read_bytes())
    for f in sorted(folder.iterdir()):
        if f.suffix in (".safetensors", ".bin", ".gguf"):
            st = f.stat()
            h.update(f"{f.name}:{st.st_size}:{st.st_mtime_ns}".encode())
    return f"{folder.resolve()}@{h.hexdigest()[:12]}"


@saebench.hookimpl
def register_llm_clients(register):
    register(LocalClient)
