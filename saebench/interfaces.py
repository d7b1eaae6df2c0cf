"""The base classes of the pluggable kinds (other than SAE architectures and LLM clients) and what they exchange.

Data flows one way: an adapter produces activations, a data source produces text, a scorer
receives an SAE plus what it needs (:class:`EvalInputs`) and returns one :class:`ScoreResult`; it
never loads a model or writes to the store. Every plugin's options are a pydantic model
(``class Options(saebench.Options)``), parsed by its base class into ``self.options``.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from pydantic import BaseModel, Field
from torch import Tensor

from saebench.errors import ConfigError, PluginError
from saebench.interp.types import Explanation, LatentRecord, LatentScore, mean_metrics
from saebench.options import Options
from saebench.sae import SAE
from saebench.uncertainty import Units, mean_units

if TYPE_CHECKING:
    from saebench.interp.llm import LLMClient


class ModelAdapter(ABC):
    """Loads a subject model, names its hook points, captures and replaces activations there.

    Constructed as ``Adapter(path, **options)`` with the matrix's ``options`` (``device``, ``dtype``...),
    which loads the model. Hook points are named ``layers.{i}`` (residual stream after block i),
    ``layers.{i}.mlp`` and ``layers.{i}.attn`` (the sublayers' outputs).
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options
    #: identifies the loaded weights for cache keys (path plus a content hash or revision)
    model_id: str
    bos_token_id: int | None
    eos_token_id: int | None
    pad_token_id: int | None

    def __init__(self, path: str, **options: Any):
        self.path = str(path)
        self.options = self.Options.parse(options, f"model adapter {self.name}")

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
        raise PluginError(
            "this adapter cannot show tokens as text (token_strings), which interpretability needs",
            type(self).name or type(self).__name__,
        )

    @abstractmethod
    def special_mask(self, tokens: Tensor) -> Tensor:
        """Bool [batch, seq]: True at BOS/EOS/PAD positions, which every statistic excludes."""

    @abstractmethod
    def capture(self, tokens: Tensor, hookpoints: Sequence[str]) -> dict[str, Tensor]:
        """Activations [batch, seq, d] (float32, CPU) at each hook point; stops after the deepest one."""

    @abstractmethod
    def logits(
        self, tokens: Tensor, replace: Mapping[str, Callable[[Tensor], Tensor]] | None = None, resume: Any = None
    ) -> Tensor:
        """Logits [batch, seq, vocab] (float32, CPU), with each named hook point's output replaced by
        ``replace[hookpoint](output)`` (e.g. an SAE's reconstruction). Each function is called exactly
        once per call, with the full [batch, seq, d] float32 CPU tensor aligned with ``tokens``.
        Logits are batch × seq × vocab floats (1 GB at 8×128 tokens for a 262k vocabulary): callers
        keep batches small. ``resume`` (only ever passed when :meth:`resume_state` gave one for these
        tokens) starts the forward at that state's block; the replaced hook points lie at or after it."""

    def resume_state(self, tokens: Tensor, hookpoint: str) -> Any | None:
        """What ``logits(tokens, resume=...)`` needs to rerun ``tokens`` from the block of ``hookpoint`` on
        (e.g. that block's input), or None when this adapter cannot skip the blocks before it: callers
        then run full forwards. Several SAEs spliced in at one hook point share one prefix this way."""
        return None


class DataSource(ABC):
    """Yields documents (plain text) in a deterministic order.

    Constructed as ``Source(**options)`` with the matrix's ``data`` keys other than ``source``,
    ``tokens`` and ``context_length``.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type[Options]] = Options

    def __init__(self, **options: Any):
        self.options = self.Options.parse(options, "data", nest=True)

    @abstractmethod
    def documents(self) -> Iterator[str]:
        """The documents of this source, first to last."""


class SAELoader(ABC):
    """Reads one on-disk checkpoint layout into an :class:`SAE` (``saebench.load_sae`` picks the loader)."""

    name: ClassVar[str] = ""
    #: when several loaders detect a path, the highest priority wins
    priority: ClassVar[int] = 0

    @abstractmethod
    def detect(self, path: Path) -> bool:
        """Cheaply decide whether ``path`` (file or folder) is in this format. Must not raise."""

    @abstractmethod
    def load(self, path: Path, *, allow_pickle: bool = False) -> SAE:
        """Read the checkpoint. Raise CheckpointError for anything wrong with the files."""


@dataclass(frozen=True)
class Metric:
    """A metric a scorer declares as one of its headline numbers (what the report draws and readers look at).

    ``name`` is a metric name or a regular expression over them (``k\\d+_accuracy``). ``plot``: drawn
    against the sparsity axis in the report's frontier plots. ``axis``: this metric *is* that axis
    (the sparsity scorer's L0); one scorer declares it. ``label``: how a plot names it ("L0 (active
    latents per token)"); default the column's name. ``no_interval``: why the metric has no
    bootstrap interval, for a scorer that cannot keep per-unit statistics for it (the leaderboard
    says it instead of leaving the interval out silently).
    """

    name: str
    higher_is_better: bool | None = True
    plot: bool = True
    axis: bool = False
    label: str | None = None
    no_interval: str | None = None


@dataclass
class EvalInputs:
    """What the runner hands a scorer for one (model, hook point, SAE) cell.

    ``activations(batch_tokens)`` yields batches [≤ batch_tokens, d] (all full but the last) of the
    cached activations at ``hookpoint`` for the evaluation tokens, special positions (BOS/EOS/PAD)
    already removed, in a fixed order; each call starts again from the first token.
    ``tokens`` are the evaluation contexts [n_contexts, context_length] those activations came
    from (may be empty for scorers that need only activations); ``adapter`` is the loaded model,
    set only for scorers with ``needs_model`` (downstream loss). For a transcoder (``sae.transcode``)
    ``hookpoint_out`` is the hook point it writes and ``targets(batch_tokens)`` yields the activations
    there, row for row the tokens of ``activations`` (None for an SAE).
    """

    hookpoint: str
    activations: Callable[[int], Iterator[Tensor]]
    tokens: Tensor
    adapter: ModelAdapter | None = None
    seed: int = 0
    #: probe scorers: ``probe_data(task, context_length=, max_rows=)`` is the task's ProbeData at
    #: ``hookpoint`` (one cached forward pass per model, task and hook point, shared by every SAE)
    probe_data: Callable[..., Any] | None = None
    #: scorers with ``uses_explanations``: ``explain(latents)`` gives {latent: explanation text} from
    #: the run's rule explainer (stored explanations first)
    explain: Callable[[list[int]], dict[int, str]] | None = None
    #: [n_tokens] int64: the context (row of ``tokens``) each activation row comes from, in the order
    #: ``activations`` yields them; what token-averaged metrics resample over (see saebench.uncertainty)
    token_contexts: Tensor | None = None
    hookpoint_out: str | None = None
    targets: Callable[[int], Iterator[Tensor]] | None = None

    def model(self, scorer: str) -> ModelAdapter:
        """The loaded model, for a scorer with ``needs_model``; ConfigError when none was given."""
        if self.adapter is None:
            raise ConfigError(
                f"{scorer} needs a model (inputs.adapter is None): list the model in the matrix", f"scorer {scorer}"
            )
        return self.adapter


class ScoreResult(BaseModel):
    """One cell's outcome: flat metrics for the leaderboard plus free-form details.

    A metric that could not be computed is None, never a made-up number. ``units`` holds the
    per-unit statistics its metrics are recomputed from on a bootstrap resample (per-context sums,
    per-example correctness; see :mod:`saebench.uncertainty`), under the same short names; a
    metric it leaves out gets no interval.
    """

    metrics: dict[str, float | None]
    details: dict[str, Any] = Field(default_factory=dict)
    units: Units | None = None


class Scorer(ABC):
    """Computes metrics for one SAE (and, for interpretability scorers, its explanations).

    Constructed as ``Scorer(**options)`` with the matrix's scorer options; a bad option raises
    ConfigError. ``score`` must not write anywhere: the runner stores what it returns.
    """

    name: ClassVar[str] = ""
    family: ClassVar[Literal["intrinsic", "interp", "probe"]] = "intrinsic"
    #: whether score() needs inputs.adapter (a loaded model); others run from cached activations only
    needs_model: ClassVar[bool] = False
    #: whether score() reads inputs.explain (rules named from the run's explainer)
    uses_explanations: ClassVar[bool] = False
    #: whether score() evaluates transcoders correctly (inputs.hookpoint_out, inputs.targets); runs refuse the rest
    handles_transcoders: ClassVar[bool] = False
    #: the metrics the report draws and a reader looks at first (see Metric)
    headline: ClassVar[tuple[Metric, ...]] = ()
    Options: ClassVar[type[Options]] = Options

    def __init__(self, **options: Any):
        self.options = self.Options.parse(options, f"scorer {self.name}")

    @abstractmethod
    def score(self, sae: SAE, inputs: EvalInputs) -> ScoreResult:
        """Score ``sae``; metric names are short (``l0``), the runner prefixes the scorer's name."""

    def score_many(self, saes: Sequence[SAE], inputs: Sequence[EvalInputs]) -> list[ScoreResult]:
        """Score several SAEs of one model on the same evaluation tokens (``inputs[i]`` is ``saes[i]``'s;
        hook points may differ). A scorer whose SAEs can share work overrides this (the downstream
        scorer runs the clean and ablated model once for all of them); the runner then hands it
        every pending SAE of a model at once. Each result must equal ``score`` on that SAE alone."""
        return [self.score(sae, one) for sae, one in zip(saes, inputs, strict=True)]


@dataclass
class InterpContext:
    """What an interpretability scorer gets besides a record and its explanation.

    ``llm`` is the scorer's configured client (None when ``needs_llm`` is False); ``adapter`` is the
    loaded subject model when ``needs_model``; ``tokens`` are the evaluation contexts.
    """

    sae: SAE
    hookpoint: str
    llm: LLMClient | None = None
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
    handles_transcoders: ClassVar[bool] = True  # latent records are the latents of the hook point read

    def check_llm(self, client: LLMClient) -> None:
        """Raise ConfigError when ``client`` cannot serve this scorer (checked before any work)."""

    @abstractmethod
    async def score_latent(self, record: LatentRecord, explanation: Explanation, ctx: InterpContext) -> LatentScore:
        """Score one latent's explanation against ``record.test`` and ``record.test_negatives``."""

    def aggregate(self, scores: Sequence[LatentScore]) -> dict[str, float | None]:
        """Leaderboard metrics over the scored latents; by default the mean of each metric."""
        return mean_metrics(scores)

    def units(self, scores: Sequence[LatentScore]) -> Units | None:
        """What ``aggregate``'s metrics resample over: by default the latents, each metric a mean of
        per-latent values. A scorer that overrides ``aggregate`` overrides this too (or returns None)."""
        names = dict.fromkeys(name for s in scores for name in s.metrics)
        values = {name: [s.metrics.get(name) for s in scores] for name in names}
        return mean_units("latent", [s.latent for s in scores], values) if scores else None

    def score(self, sae: SAE, inputs: EvalInputs) -> ScoreResult:  # pragma: no cover - the runner drives interp scorers
        raise TypeError(f"{self.name} is an interpretability scorer: the runner calls score_latent per latent")


class Explainer(ABC):
    """Turns a latent record into a natural-language explanation.

    Constructed as ``Explainer(**options)``; the runner sets ``llm`` to the configured client
    before the first call when ``needs_llm``.
    """

    name: ClassVar[str] = ""
    needs_llm: ClassVar[bool] = True
    Options: ClassVar[type[Options]] = Options

    def __init__(self, **options: Any):
        self.options = self.Options.parse(options, f"explainer {self.name}")
        self.llm: LLMClient | None = None

    @abstractmethod
    async def explain(self, record: LatentRecord) -> Explanation:
        """Explain one latent from ``record.train`` (and ``record.train_negatives``), never from the test sets.

        An answer that cannot be parsed is returned with ``text=None`` and a ``failure``; an LLM
        that gives up after its retries raises :class:`saebench.interp.llm.LLMError`.
        """


@dataclass(frozen=True)
class TaskExample:
    """One text of a probe task: a ``label`` (sequence level) or ``spans`` (token level)."""

    text: str
    label: str | None = None
    #: [start, end) character spans of ``text`` and their labels; non-overlapping
    spans: tuple[tuple[int, int, str], ...] = ()


class ProbeTask(ABC):
    """A labelled probing task. Constructed as ``Task(**options)``; a bad option raises ConfigError.

    ``examples()`` must be deterministic for given options (the runner caches what it yields, keyed by
    ``identity()``); bump ``version`` when the texts or labels a task yields change.
    """

    name: ClassVar[str] = ""
    level: ClassVar[Literal["sequence", "token"]] = "sequence"
    version: ClassVar[str] = "1"
    Options: ClassVar[type[Options]] = Options

    def __init__(self, **options: Any):
        self.options = self.Options.parse(options, f"probe task {self.name}")

    @abstractmethod
    def examples(self) -> Iterator[TaskExample]:
        """The task's texts with their labels, in a fixed order."""

    def taxonomy(self) -> dict[str, str]:
        """A reference hierarchy over the labels, as {child: parent} (labels are leaves; inner names
        are free), or {} when the task has none. TreeProbe compares its induced tree with it."""
        return {}

    def identity(self) -> dict[str, Any]:
        return {"name": self.name, "version": self.version, "options": self.options.as_dict()}


class ReportSection(ABC):
    """A section of ``saebench report`` contributed by a plugin (TreeProbe's trees are one).

    ``render`` gets every finished cell of the store as a mapping with ``model``, ``hookpoint``,
    ``sae``, ``scorer`` (the cell's label), ``plugin`` (the scorer's registered name), ``metrics``
    and ``details``, and returns the section's HTML, or None to leave it out. Every string that comes
    from the data must be escaped (``saebench.results.html.esc``): the page allows no script but its own.
    """

    name: ClassVar[str] = ""
    title: ClassVar[str] = ""

    @abstractmethod
    def render(self, cells: Sequence[Mapping[str, Any]]) -> str | None:
        """The section's HTML body from the stored cells; None when it has nothing to show."""
