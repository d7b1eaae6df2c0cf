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

    def token_strings(self, ids: Sequence[int]) -> list[str]:
        """The text of each token of a sequence, such that their concatenation is the decoded sequence
        (a leading space stays with its token). Needed only by interpretability (examples shown to
        explainers and judges), so adapters written before it still work for everything else."""
        from saebench.errors import PluginError

        raise PluginError("this adapter cannot show tokens as text (token_strings), which interpretability needs",
                          type(self).name or type(self).__name__)

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


class Example(BaseModel):
    """One context window as explainers and scorers see it: token strings and one latent's activations."""

    tokens: list[str] = Field(description="token strings; their concatenation is the window's text")
    activations: list[float] = Field(description="the latent's activation at each token (all 0 for a negative)")
    window: int = Field(description="index of the window in the evaluation set (for disjointness checks)")
    kind: Literal["activating", "random", "hard"] = "activating"
    quantile: int | None = Field(None, description="activation-quantile bin of an activating example, 0 = weakest")

    @property
    def text(self) -> str:
        return "".join(self.tokens)

    @property
    def max_activation(self) -> float:
        return max(self.activations, default=0.0)


class LatentRecord(BaseModel):
    """What an explainer and a scorer see of one latent.

    ``train`` (shown to explainers) and ``test`` (for scorers) are disjoint sets of activating windows,
    as are ``train_negatives`` and ``test_negatives`` (windows where the latent is 0 everywhere);
    no window appears in two of the four lists.
    """

    latent: int
    n_activating: int = Field(description="activating windows in the evaluation set")
    density: float = Field(description="fraction of evaluation tokens where the latent is non-zero")
    max_activation: float
    train: list[Example] = Field(default_factory=list)
    test: list[Example] = Field(default_factory=list)
    train_negatives: list[Example] = Field(default_factory=list)
    test_negatives: list[Example] = Field(default_factory=list)


class Explanation(BaseModel):
    """An explainer's answer. ``text`` is None when there is no usable answer: it is never scored."""

    latent: int
    explainer: str
    text: str | None
    failure: str | None = Field(None, description="why text is None (unparsable answer, LLM gave up...)")
    parse_failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


class ScoreResult(BaseModel):
    """One cell's outcome: flat metrics for the leaderboard plus free-form details.

    A metric that could not be computed is None, never a made-up number.
    """

    metrics: dict[str, float | None]
    details: dict[str, Any] = Field(default_factory=dict)


class Explainer(ABC):
    """Turns a latent record into a natural-language explanation.

    Constructed as ``Explainer(**options)`` (``OPTIONS`` parsed like a scorer's); the runner sets
    ``llm`` to the configured client before the first call when ``needs_llm``.
    """

    name: ClassVar[str] = ""
    needs_llm: ClassVar[bool] = True
    OPTIONS: ClassVar[tuple] = ()

    def __init__(self, **options: Any):
        from saebench.metrics import parse_options

        self.options = parse_options(f"explainer {self.name}", options, self.OPTIONS)
        for key, value in self.options.items():
            setattr(self, key, value)
        self.llm: LLMClient | None = None

    @abstractmethod
    async def explain(self, record: LatentRecord) -> Explanation:
        """Explain one latent from ``record.train`` (and ``record.train_negatives``), never from the test sets.

        An answer that cannot be parsed is returned with ``text=None`` and a ``failure``; an LLM
        that gives up after its retries raises :class:`saebench.llm.LLMError`.
        """


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
    #: probe scorers: ``probe_data(task)`` is the task's ProbeData at ``hookpoint`` (one cached
    #: forward pass per model, task and hook point, shared by every SAE and probe scorer)
    probe_data: "Callable[[Any], Any] | None" = None
    #: probe scorers: ``explain(latents)`` gives {latent: explanation text} from the matrix's
    #: explainers (stored explanations first); None when the run has none configured
    explain: "Callable[[list[int]], dict[int, str]] | None" = None


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


class LatentScore(BaseModel):
    """One latent's result from an interpretability scorer (stored per latent as it arrives)."""

    latent: int
    metrics: dict[str, float | None] = Field(description="e.g. balanced_accuracy; None when not computable")
    details: dict[str, Any] = Field(default_factory=dict, description="per-example predictions and the like")
    parse_failures: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    cost_usd: float | None = None


@dataclass
class InterpContext:
    """What an interpretability scorer gets besides a record and its explanation.

    ``llm`` is the scorer's configured client (None when ``needs_llm`` is False); ``adapter`` is the
    loaded subject model when ``needs_model``; ``tokens`` are the evaluation contexts.
    """

    sae: SAE
    hookpoint: str
    llm: "LLMClient | None" = None
    adapter: ModelAdapter | None = None
    tokens: Tensor | None = None
    seed: int = 0


class InterpScorer(Scorer):
    """Scores explanations one latent at a time; the runner aggregates and stores per latent.

    ``score_latent`` is called only for explanations with a text. It may call ``ctx.llm``
    concurrently (the client limits concurrency); an LLMError it lets through marks the latent
    failed (retried on the next run), a parse failure it counts in ``LatentScore.parse_failures``.
    """

    family: ClassVar[Literal["intrinsic", "interp", "probe"]] = "interp"
    needs_llm: ClassVar[bool] = True

    @abstractmethod
    async def score_latent(self, record: LatentRecord, explanation: Explanation, ctx: InterpContext) -> LatentScore:
        """Score one latent's explanation against ``record.test`` and ``record.test_negatives``."""

    def aggregate(self, scores: Sequence[LatentScore]) -> dict[str, float | None]:
        """Leaderboard metrics over the scored latents; by default the mean of each metric."""
        from saebench.interp import mean_metrics

        return mean_metrics(scores)

    def score(self, sae: SAE, inputs: EvalInputs) -> ScoreResult:  # pragma: no cover - the runner drives interp scorers
        raise TypeError(f"{self.name} is an interpretability scorer: the runner calls score_latent per latent")


from saebench.llm import LLMClient, LLMError, LLMRequest, LLMResponse, TokenLogprob  # noqa: E402  (re-exported)
