"""Intervention scorer: steer the latent in the subject model and ask a judge which text the explanation describes.

Prompts are the first ``n_prompts`` evaluation contexts cut to ``prompt_tokens`` tokens after BOS.
Steering adds v = α·s·u at ``ctx.hookpoint`` at every non-special position (BOS/EOS/PAD keep their
activation, as in the downstream scorer: BOS is an attention sink SAEs are not trained on), where
u is the latent's unit decoder direction and s the mean residual norm over the non-special
positions of those contexts, so α is in units of a typical activation.

α is chosen so that KL(clean ‖ steered) of the next-token distribution at the prompts' ends,
averaged over prompts, is ``target_kl`` within ``kl_tolerance`` (relative): α doubles from
``start_alpha`` until the KL reaches the target, then bisects, at most ``search_steps`` forward
passes, never beyond ``max_alpha``; the closest α seen is used (``target_reached`` False when none
was within tolerance); option ``alpha`` fixes α instead. The default of 1 nat is a judgement call,
not a calibrated value: enough for greedy continuations to differ, little enough to keep them text.

Clean and steered greedy continuations of ``n_tokens`` tokens (no KV cache; cut at EOS) go to the
judge per prompt, in a seeded random order, asking which is better described by the explanation.
Metrics per latent: ``score`` (fraction of parsed answers that pick the steered text; 0.5 =
chance; None when no answer parses), ``kl`` (achieved), ``alpha``.
"""

from __future__ import annotations

import asyncio
import random
import re
import threading
import weakref
from collections.abc import Callable
from typing import Any

import torch
from pydantic import Field
from torch import Tensor

import saebench
from saebench.errors import ConfigError
from saebench.interfaces import InterpContext, InterpScorer, Metric
from saebench.interp.llm import LLMRequest
from saebench.interp.prompts import render
from saebench.interp.types import Explanation, LatentRecord, LatentScore, Usage

JUDGE = """A language model feature is described by this explanation:

Explanation: {explanation}

Below are two continuations of the same text. Which continuation is better described by the explanation?

Text: {prompt}

Continuation A: {a}

Continuation B: {b}

Answer with a single letter: A or B."""
_ANSWER = re.compile(r"\W*(?:answer\W*)?(?:continuation\s*)?([AB])\W*", re.IGNORECASE)

# One forward at a time per model: the adapter's hooks are registered on shared modules, so two
# threads running the same model at once would each see the other's replacement.
_LOCKS: weakref.WeakKeyDictionary[Any, threading.Lock] = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def _model_lock(adapter) -> threading.Lock:
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(adapter, threading.Lock())


class InterventionScorer(InterpScorer):
    """Intervention: does the explanation pick out the text generated with the latent steered?"""

    name = "intervention"
    needs_model = True
    headline = (Metric("score"),)
    handles_transcoders = False  # it steers decoder directions at the hook point read; a transcoder's write elsewhere

    class Options(saebench.Options):
        target_kl: float = Field(1.0, ge=1e-6, description="mean KL (nats) of the next token at the prompt ends")
        kl_tolerance: float = Field(0.1, ge=0.0, description="relative: |KL - target| <= tolerance * target stops")
        start_alpha: float = Field(0.5, ge=1e-6, description="first α tried, in units of the typical residual norm")
        max_alpha: float = Field(32.0, ge=0.0, description="largest α tried")
        search_steps: int = Field(16, ge=1, description="forward passes the search may spend")
        alpha: float | None = Field(None, ge=0.0, description="fixed α: skip the search")
        n_prompts: int = Field(4, ge=1, description="prompts steered: the first n evaluation contexts")
        prompt_tokens: int = Field(8, ge=1, description="prompt length, BOS not counted")
        n_tokens: int = Field(12, ge=1, description="tokens generated per continuation")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._clean: dict[tuple, tuple[float, Tensor, Tensor]] = {}  # per model, hook point and prompts

    async def score_latent(self, record: LatentRecord, explanation: Explanation, ctx: InterpContext) -> LatentScore:
        if ctx.adapter is None:
            raise ConfigError(
                "intervention steers the subject model but none was given (ctx.adapter is None)", f"scorer {self.name}"
            )
        if ctx.llm is None:
            raise ConfigError("intervention needs a judge LLM", f"scorer {self.name}")
        if ctx.sae.is_transcoder:
            raise ConfigError("intervention does not evaluate transcoders", f"scorer {self.name}")
        if float(ctx.sae.W_dec[record.latent].norm()) == 0.0:  # a dead direction: steering changes nothing
            return LatentScore(
                latent=record.latent,
                metrics={"score": None, "kl": None, "alpha": None},
                details={"skipped": "zero decoder direction"},
            )
        out = await asyncio.to_thread(self.steer, ctx, record.latent)
        rng = random.Random(f"{ctx.seed}:{record.latent}")
        steered_first = [rng.random() < 0.5 for _ in out["prompts"]]
        requests = [
            _judge_request(explanation.text or "", p, c, s, first)
            for p, c, s, first in zip(out["prompts"], out["clean"], out["steered"], steered_first)
        ]
        usage = Usage()
        responses = [usage.add(r) for r in await asyncio.gather(*(ctx.llm.complete(r) for r in requests))]
        picks = [_pick(r.text, first) for r, first in zip(responses, steered_first)]
        usage.parse_failures += sum(p is None for p in picks)
        parsed = [p for p in picks if p is not None]
        return LatentScore(
            latent=record.latent,
            metrics={"score": sum(parsed) / len(parsed) if parsed else None, "kl": out["kl"], "alpha": out["alpha"]},
            details={
                **out,
                "steered_first": steered_first,
                "picked_steered": picks,
                "answers": [r.text for r in responses],
            },
            **usage.usage(),
        )

    @torch.no_grad()
    def steer(self, ctx: InterpContext, latent: int) -> dict[str, Any]:
        """Choose α, generate clean and steered continuations; the texts and the search as a dict."""
        adapter, hp = ctx.adapter, ctx.hookpoint
        opts = self.options
        contexts = _contexts(ctx, opts.n_prompts)
        bos = adapter.bos_token_id
        L = opts.prompt_tokens + int(bos is not None and bool((contexts[:, 0] == bos).all()))
        if contexts.shape[1] < L:
            raise ConfigError(
                f"contexts of {contexts.shape[1]} tokens are shorter than the prompts ({L})",
                f"scorer {self.name}: prompt_tokens",
            )
        prompts = contexts[:, :L]
        w = ctx.sae.W_dec[latent].detach().to("cpu", torch.float32)
        with _model_lock(adapter):
            key = (getattr(adapter, "model_id", id(adapter)), hp, contexts.numpy().tobytes())
            if key not in self._clean:
                norm = residual_norm(adapter, hp, contexts)
                lp_clean = next_logprobs(adapter, prompts, None)
                self._clean[key] = (norm, lp_clean, generate(adapter, prompts, opts.n_tokens, None))
            norm, lp_clean, clean = self._clean[key]
            vector = w / w.norm() * norm

            def kl_at(alpha: float) -> float:
                lp = next_logprobs(adapter, prompts, {hp: steering(adapter, prompts, alpha * vector)})
                return mean_kl(lp_clean, lp)

            if opts.alpha is not None:
                alpha, kl, trace = opts.alpha, kl_at(opts.alpha), []
            else:
                alpha, kl, trace = search_alpha(
                    kl_at, opts.target_kl, opts.kl_tolerance, opts.start_alpha, opts.max_alpha, opts.search_steps
                )
            steered = generate(adapter, prompts, opts.n_tokens, alpha * vector, hp)
        texts = [_texts(adapter, p.tolist(), c.tolist(), s.tolist()) for p, c, s in zip(prompts, clean, steered)]
        reached = opts.alpha is not None or abs(kl - opts.target_kl) <= opts.kl_tolerance * opts.target_kl
        return {
            "alpha": alpha,
            "kl": kl,
            "target_reached": reached,
            "search": trace,
            "residual_norm": norm,
            "prompts": [t[0] for t in texts],
            "clean": [t[1] for t in texts],
            "steered": [t[2] for t in texts],
        }


def search_alpha(
    kl_at: Callable[[float], float], target: float, tolerance: float, start: float, max_alpha: float, steps: int
) -> tuple[float, float, list[tuple[float, float]]]:
    """(α, KL(α), every (α, KL) tried): double from ``start`` until KL ≥ target, then bisect.

    Assumes KL grows with α (true near 0, usual beyond); when it does not, the closest α seen wins.
    """
    trace: list[tuple[float, float]] = []
    lo, hi, alpha = 0.0, None, min(start, max_alpha)
    for _ in range(steps):
        kl = kl_at(alpha)
        trace.append((alpha, kl))
        if abs(kl - target) <= tolerance * target:
            break
        if kl < target:
            lo = alpha
            if hi is None and alpha >= max_alpha:
                break  # the target is out of reach
        else:
            hi = alpha
        alpha = min(2 * alpha, max_alpha) if hi is None else (lo + hi) / 2
    best = min(trace, key=lambda t: abs(t[1] - target))
    return best[0], best[1], trace


def _contexts(ctx: InterpContext, n: int) -> Tensor:
    tokens = ctx.tokens
    if tokens is None or tokens.ndim != 2 or tokens.shape[0] == 0:
        raise ConfigError("needs evaluation contexts [n, length] (ctx.tokens) for its prompts", "scorer intervention")
    return tokens[:n].to("cpu", torch.long)


def residual_norm(adapter, hookpoint: str, tokens: Tensor) -> float:
    """Mean L2 norm of the activations at ``hookpoint`` over the non-special positions of ``tokens``."""
    acts = adapter.capture(tokens, [hookpoint])[hookpoint]
    keep = ~adapter.special_mask(tokens).to("cpu", torch.bool)
    return float(acts[keep].to(torch.float64).norm(dim=-1).mean())


def steering(adapter, tokens: Tensor, vector: Tensor) -> Callable[[Tensor], Tensor]:
    """Replacement adding ``vector`` to the hook point's output at the non-special positions of ``tokens``."""
    add = (~adapter.special_mask(tokens).to("cpu", torch.bool))[..., None] * vector  # [batch, seq, d]
    return lambda h: h + add.to(h.dtype)


def next_logprobs(adapter, tokens: Tensor, replace) -> Tensor:
    """log p of the next token after each row, [n, vocab] in float64."""
    return torch.log_softmax(adapter.logits(tokens, replace=replace)[:, -1].to(torch.float64), dim=-1)


def mean_kl(lp_clean: Tensor, lp_new: Tensor) -> float:
    p = lp_clean.exp()  # KL(clean ‖ new) per row, then the mean over rows
    return float(torch.where(p > 0, p * (lp_clean - lp_new), 0.0).sum(-1).mean())


def generate(adapter, prompts: Tensor, n_tokens: int, vector: Tensor | None, hookpoint: str | None = None) -> Tensor:
    """Greedy continuations [n, n_tokens], steered by ``vector`` at ``hookpoint`` when given (no KV cache)."""
    tokens = prompts
    for _ in range(n_tokens):
        replace = {hookpoint: steering(adapter, tokens, vector)} if vector is not None else None
        nxt = adapter.logits(tokens, replace=replace)[:, -1].argmax(-1)
        tokens = torch.cat([tokens, nxt[:, None].to(tokens.dtype)], dim=1)
    return tokens[:, prompts.shape[1] :]


def _texts(adapter, prompt: list[int], clean: list[int], steered: list[int]) -> tuple[str, str, str]:
    """(prompt, clean, steered) as text: special tokens dropped, continuations cut at EOS."""
    special = {adapter.bos_token_id, adapter.eos_token_id, adapter.pad_token_id} - {None}
    prompt = [t for t in prompt if t not in special]

    def continuation(ids: list[int]) -> str:
        if adapter.eos_token_id in ids:
            ids = ids[: ids.index(adapter.eos_token_id)]
        ids = [t for t in ids if t not in special]
        # decoded after the prompt so that a token's leading space is kept as the model wrote it
        return "".join(adapter.token_strings(prompt + ids)[len(prompt) :])

    return "".join(adapter.token_strings(prompt)), continuation(clean), continuation(steered)


def _pick(answer: str, steered_first: bool) -> bool | None:
    """Whether the judge chose the steered text; None when the answer is not a lone A or B."""
    m = _ANSWER.fullmatch(answer.strip())
    return None if m is None else (m.group(1).upper() == "A") == steered_first


def _judge_request(explanation: str, prompt: str, clean: str, steered: str, steered_first: bool) -> LLMRequest:
    a, b = (steered, clean) if steered_first else (clean, steered)
    # render: newlines escaped, so each text is one line of the prompt (the judges' shared convention)
    content = JUDGE.format(explanation=explanation, prompt=render([prompt]), a=render([a]), b=render([b]))
    return LLMRequest(messages=({"role": "user", "content": content},), max_tokens=8, temperature=0.0)


@saebench.hookimpl
def register_scorers(register):
    register(InterventionScorer)
