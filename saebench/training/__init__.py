"""Training SAEs on cached activations: ``TrainConfig`` (config.py) and ``train_sae`` (trainer.py)."""

from saebench.training.config import (
    HistoryEntry,
    MultiTopK,
    TrainConfig,
    TrainingOutput,
    TrainingStats,
    TrainState,
)
from saebench.training.trainer import GatherPreacts, geometric_median, latent_sum, mse, train_sae

__all__ = [
    "TrainConfig",
    "MultiTopK",
    "TrainState",
    "TrainingOutput",
    "TrainingStats",
    "HistoryEntry",
    "GatherPreacts",
    "geometric_median",
    "latent_sum",
    "mse",
    "train_sae",
]
