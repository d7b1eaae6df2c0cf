"""Interfaces of the pluggable kinds other than SAE architectures and loaders.

These fix the shape of the system; the runner, auto-interpretability and probe
issues fill in implementations. Data flows one way: an adapter produces
activations, a data source produces text, a scorer receives an SAE plus what
it needs and returns one :class:`ScoreResult`; it never writes to the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import Any, Callable, ClassVar, Iterator, Literal, Mapping, Sequence

from pydantic import BaseModel, Field
from torch import Tensor

from saebench.sae import SAE


class ModelAdapter(ABC):
    """Loads a subject model, names its hook points, captures and replaces activations there.

    Constructed as ``Adapter(path, **options)`` (options from the matrix: ``device``, ``dtype``...),
    which loads the model. Hook points are named ``layers.{i}`` (residual stream after block i),
    ``layers.{i}.mlp`` and ``layers.{i}.attn`` (the sublayers' outputs).
    """

    name: ClassVar[str] = ""
    #: identifies the loaded weights for cache keys (path plus a content hash or revision)
    model_id: str
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None

    @abstractmethod
    def hookpoints(self) -> list[str]:
        """Every hook point this model exposes."""

    @abstractmethod
    def d_model(self, hookpoint: str) -> int:
        """Width of the activations at ``hookpoint``."""

    @abstractmethod
    def tokenize(self, text: str) -> list[int]:
        """Token ids of one document, without special tokens."""

    @abstractmethod
    def special_mask(self, tokens: Tensor) -> Tensor:
        """Bool [batch, seq]: True at BOS/EOS/PAD positions, which every statistic excludes."""

    @abstractmethod
    def capture(self, tokens: Tensor, hookpoints: Sequence[str]) -> dict[str, Tensor]:
        """Activations [batch, seq, d] (float32, CPU) at each hook point; stops after the deepest one."""

    @abstractmethod
    def logits(self, tokens: Tensor, replace: Mapping[str, Callable[[Tensor], Tensor]] | None = None) -> Tensor:
        """Logits [batch, seq, vocab] (float32, CPU), with each named hook point's output replaced by
        ``replace[hookpoint](output)`` (e.g. an SAE's reconstruction). Each function is called exactly
        once per call, with the full [batch, seq, d] float32 CPU tensor aligned with ``tokens``.
        Logits are batch × seq × vocab floats (1 GB at 8×128 tokens for a 262k vocabulary): callers
        keep batches small."""


class DataSource(ABC):
    """Yields documents (plain text) in a deterministic order.

    Constructed as ``Source(**options)`` with the matrix's ``data`` keys other than
    ``source``, ``tokens`` and ``context_length``; a bad option raises ConfigError.
    """

    name: ClassVar[str] = ""

    @abstractmethod
    def documents(self) -> Iterator[str]:
        """The documents of this source, first to last."""


class LatentRecord(BaseModel):
    """What an explainer and a scorer see of one latent: its activating and non-activating examples."""

    latent: int
    train_examples: list[list[str]] = Field(default_factory=list, description="token windows shown to the explainer")
    train_activations: list[list[float]] = Field(default_factory=list)
    test_examples: list[list[str]] = Field(default_factory=list, description="disjoint from train, for scorers")
    test_activations: list[list[float]] = Field(default_factory=list)
    negative_examples: list[list[str]] = Field(default_factory=list)


class Explanation(BaseModel):
    """An explainer's answer. ``text`` is None when the answer could not be parsed (never scored)."""

    latent: int
    text: str | None
    failure: str | None = None
    prompt_tokens: int = 0
    completion_tokens: int = 0


class ScoreResult(BaseModel):
    """One cell's outcome: flat metrics for the leaderboard plus free-form details.

    A metric that could not be computed is None, never a made-up number.
    """

    metrics: dict[str, float | None]
    details: dict[str, Any] = Field(default_factory=dict)


class Explainer(ABC):
    """Turns a latent record into a natural-language explanation."""

    name: ClassVar[str] = ""

    @abstractmethod
    async def explain(self, record: LatentRecord) -> Explanation:
        """Explain one latent from its training examples."""


@dataclass
class EvalInputs:
    """What the runner hands a scorer for one (model, hook point, SAE) cell.

    ``activations(batch_tokens)`` yields batches [≤ batch_tokens, d] (all full but the last) of the
    cached activations at ``hookpoint`` for the evaluation tokens, special positions (BOS/EOS/PAD)
    already removed, in a fixed order; each call starts again from the first token.
    ``tokens`` are the evaluation contexts [n_contexts, context_length] those activations came
    from (may be empty for scorers that need only activations); ``adapter`` is the loaded model,
    set only for scorers with ``needs_model`` (downstream loss).
    """

    hookpoint: str
    activations: Callable[[int], Iterator[Tensor]]
    tokens: Tensor
    adapter: ModelAdapter | None = None
    seed: int = 0


class Scorer(ABC):
    """Computes metrics for one SAE (and, for interpretability scorers, its explanations).

    Constructed as ``Scorer(**options)`` with the matrix's scorer options; a bad option raises
    ConfigError. ``score`` must not write anywhere: the runner stores what it returns.
    """

    name: ClassVar[str] = ""
    family: ClassVar[Literal["intrinsic", "interp", "probe"]] = "intrinsic"
    #: whether score() needs inputs.adapter (a loaded model); others run from cached activations only
    needs_model: ClassVar[bool] = False
    #: the options this scorer takes (saebench.metrics.Option); each becomes an attribute
    OPTIONS: ClassVar[tuple] = ()

    def __init__(self, **options: Any):
        from saebench.metrics import parse_options

        self.options = parse_options(f"scorer {self.name}", options, self.OPTIONS)
        for key, value in self.options.items():
            setattr(self, key, value)

    @abstractmethod
    def score(self, sae: SAE, inputs: EvalInputs) -> ScoreResult:
        """Score ``sae``; metric names are short (``l0``), the runner prefixes the scorer's name."""


class LLMRequest(BaseModel):
    """One prompt with its own sampling parameters (never shared between requests)."""

    messages: list[dict[str, str]]
    max_tokens: int = 256
    temperature: float = 0.0
    logprobs: bool = False


class LLMResponse(BaseModel):
    text: str
    prompt_tokens: int = 0
    completion_tokens: int = 0
    logprobs: list[dict[str, float]] | None = None


class LLMClient(ABC):
    """Talks to one LLM endpoint (OpenAI-compatible, Anthropic, local transformers)."""

    name: ClassVar[str] = ""

    @abstractmethod
    async def complete(self, request: LLMRequest) -> LLMResponse:
        """One completion; raises on failure after the client's own retries."""
