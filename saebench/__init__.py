"""saebench: evaluate sparse autoencoders as a matrix of plugins."""

from saebench.errors import CheckpointError, ConfigError, DataError, PluginError, SaebenchError, ShapeError
from saebench.hookspecs import hookimpl
from saebench.interfaces import (
    DataSource,
    EvalInputs,
    Explainer,
    Explanation,
    LatentRecord,
    LLMClient,
    LLMRequest,
    LLMResponse,
    ModelAdapter,
    Scorer,
    ScoreResult,
)
from saebench.loading import SAELoader, build_sae, load_sae, save_sae
from saebench.probing import ProbeData, ProbeTask, TaskExample
from saebench.sae import SAE, SAEConfig

__version__ = "0.1.0"

__all__ = [
    "DataError",
    "ProbeTask",
    "ProbeData",
    "TaskExample",
    "SAE",
    "SAEConfig",
    "SAELoader",
    "build_sae",
    "load_sae",
    "save_sae",
    "hookimpl",
    "ModelAdapter",
    "DataSource",
    "EvalInputs",
    "Explainer",
    "Scorer",
    "LLMClient",
    "LLMRequest",
    "LLMResponse",
    "LatentRecord",
    "Explanation",
    "ScoreResult",
    "SaebenchError",
    "ConfigError",
    "CheckpointError",
    "PluginError",
    "ShapeError",
]
