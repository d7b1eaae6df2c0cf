"""Interfaces of the pluggable kinds other than SAE architectures and loaders.

These fix the shape of the system; the runner, auto-interpretability and probe
issues fill in implementations. Data flows one way: an adapter produces
activations, a data source produces text, a scorer receives an SAE plus what
it needs and returns one :class:`ScoreResult`; it never writes to the store.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Any, ClassVar, Iterator, Literal, Sequence

from pydantic import BaseModel, Field

from saebench.sae import SAE


class ModelAdapter(ABC):
    """Loads a subject model, names its hook points, captures and replaces activations there."""

    name: ClassVar[str] = ""

    @abstractmethod
    def hookpoints(self) -> list[str]:
        """Every hook point this model exposes, e.g. ``layers.6``, ``layers.6.mlp``."""

    @abstractmethod
    def tokenize(self, texts: Sequence[str], context_length: int) -> Any:
        """Token ids [n_contexts, context_length], each context starting with BOS when the model has one."""

    @abstractmethod
    def capture(self, tokens: Any, hookpoints: Sequence[str]) -> dict[str, Any]:
        """Activations [batch, seq, d] at each hook point; stops the forward after the deepest one."""


class DataSource(ABC):
    """Yields documents (plain text) in a deterministic order."""

    name: ClassVar[str] = ""

    @abstractmethod
    def documents(self, **options: Any) -> Iterator[str]:
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


class Scorer(ABC):
    """Computes metrics for one SAE (and, for interpretability scorers, its explanations)."""

    name: ClassVar[str] = ""
    family: ClassVar[Literal["intrinsic", "interp", "probe"]] = "intrinsic"

    @abstractmethod
    def score(self, sae: SAE, inputs: Any, **options: Any) -> ScoreResult:
        """Score ``sae`` on ``inputs`` (cached activations, records, explanations: what the family needs)."""


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
