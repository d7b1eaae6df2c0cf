"""Embedding scorer: does the explanation, embedded as a search query, find the activating examples?

Each test example (``record.test``, label 1, and ``record.test_negatives``, label 0) is embedded as a
document by a sentence-transformers model and the explanation as a query; an example's score is
the cosine similarity of the two. Metrics per latent:

- ``auc``: ROC AUC of the similarities, activating vs non-activating (0.5 = chance; None when a
  class is missing)
- ``similarity_gap``: mean similarity of the activating examples minus that of the others.

No LLM is called, so this is the cheapest interpretability score (delphi's "embedding" scorer).
A model that defines ``query``/``document`` prompts (E5, BGE, Nomic...) gets them; symmetric models
such as the default all-MiniLM-L6-v2 define none and embed both sides alike.
"""

from __future__ import annotations

import asyncio
import threading
from typing import Any

import numpy as np
from pydantic import Field

import saebench
from saebench.errors import ConfigError
from saebench.interfaces import InterpContext, InterpScorer, Metric
from saebench.interp.types import Explanation, LatentRecord, LatentScore
from saebench.metrics import roc_auc


class EmbeddingScorer(InterpScorer):
    """Embedding: the explanation as a query ranks activating above non-activating examples (AUC)."""

    name = "embedding"
    needs_llm = False
    headline = (Metric("auc"),)

    class Options(saebench.Options):
        model: str = Field(
            "embedded:all-minilm-l6-v2",
            description="sentence-transformers model: embedded:NAME "
            "(shipped in a PyPI package), a folder or a hub name",
        )
        batch_size: int = Field(32, ge=1, description="texts embedded per forward pass")
        device: str = Field("cpu", description="torch device of the embedding model")

    def __init__(self, **options: Any):
        super().__init__(**options)
        self._model = None
        # One lock for loading and encoding: HF fast tokenizers raise "Already borrowed" when two
        # threads use them at once, and encoding is CPU-bound, so parallel calls would gain nothing.
        self._lock = threading.Lock()

    def _load(self):
        if self._model is None:
            from sentence_transformers import SentenceTransformer

            where = f"scorer {self.name}: model"
            path = self.options.model
            if path.startswith("embedded:"):
                from saebench.models import embedded

                path = str(embedded.resolve(path.removeprefix("embedded:")))
            try:
                self._model = SentenceTransformer(path, device=self.options.device)
            except (OSError, ValueError, RuntimeError) as exc:
                raise ConfigError(
                    f"cannot load sentence-transformers model {self.options.model!r}: "
                    f"{' '.join(str(exc).split())[:300]}",
                    where,
                ) from exc
        return self._model

    def embed(self, query: str, documents: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(query embedding [d], document embeddings [n, d]), float32, not normalised. Thread-safe."""
        with self._lock:
            model = self._load()
            kw = dict(batch_size=self.options.batch_size, convert_to_numpy=True, show_progress_bar=False)
            q = _encode(model, "query", [query], kw)[0]
            docs = _encode(model, "document", documents, kw) if documents else np.zeros((0, q.shape[0]), np.float32)
        return q, docs

    async def score_latent(self, record: LatentRecord, explanation: Explanation, ctx: InterpContext) -> LatentScore:
        examples = [(e, 1) for e in record.test] + [(e, 0) for e in record.test_negatives]
        texts = [e.text for e, _ in examples]
        labels = [y for _, y in examples]
        q, docs = await asyncio.to_thread(self.embed, explanation.text or "", texts)
        sims = cosine(q, docs)
        pos = [s for s, y in zip(sims, labels) if y]
        neg = [s for s, y in zip(sims, labels) if not y]
        gap = float(np.mean(pos) - np.mean(neg)) if pos and neg else None
        metrics = {"auc": roc_auc(labels, sims), "similarity_gap": gap}
        details = {
            "similarities": [round(float(s), 6) for s in sims],
            "labels": labels,
            "windows": [e.window for e, _ in examples],
        }
        return LatentScore(latent=record.latent, metrics=metrics, details=details, cost_usd=0.0)  # no LLM call


def _encode(model, role: str, texts: list[str], kw: dict) -> np.ndarray:
    """Embed with the model's prompt for ``role`` ("query"/"document") when it defines one."""
    method = getattr(model, f"encode_{role}", None)  # sentence-transformers >= 5
    if method is not None:
        return np.asarray(method(texts, **kw), dtype=np.float32)
    prompt_name = role if role in (getattr(model, "prompts", None) or {}) else None
    return np.asarray(model.encode(texts, prompt_name=prompt_name, **kw), dtype=np.float32)


def cosine(q: np.ndarray, docs: np.ndarray) -> list[float]:
    """Cosine similarity of q [d] with each row of docs [n, d], in float64; 0 for a zero vector."""
    q64, d64 = q.astype(np.float64), docs.astype(np.float64)
    norms = np.linalg.norm(d64, axis=1) * np.linalg.norm(q64)
    dots = d64 @ q64
    return [float(d / n) if n > 0 else 0.0 for d, n in zip(dots, norms)]


@saebench.hookimpl
def register_scorers(register):
    register(EmbeddingScorer)
