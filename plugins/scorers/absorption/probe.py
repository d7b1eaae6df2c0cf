"""The ground-truth letter probe and the letters' main latents by k-sparse probing (steps 3 and 4 of
the scorer's docstring)."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor

import saebench
from saebench.probes.linear import binary_f1, classification_metrics, fit_logistic


@dataclass
class LetterData:
    """The prompts' activations (float64) of the train and test words, with their letters' class indices."""

    x_train: Tensor
    y_train: Tensor
    x_test: Tensor
    y_test: Tensor
    n_letters: int


@dataclass
class GroundTruthProbe:
    """The multinomial letter probe's test predictions and scores, and its unit directions [letters, d]."""

    predictions: Tensor
    accuracy: float
    f1: float | None
    directions: Tensor

    @classmethod
    def fit(cls, data: LetterData, l2: float) -> GroundTruthProbe:
        probe = fit_logistic(data.x_train, data.y_train, data.n_letters, l2=l2, dtype=torch.float64, max_iter=1000)
        pred = probe.logits(data.x_test).argmax(1)
        accuracy = float((pred == data.y_test).double().mean())
        f1 = classification_metrics(pred, data.y_test, data.n_letters)["f1"]
        directions = probe.weight / probe.weight.norm(dim=1, keepdim=True).clamp_min(1e-300)  # [L, d]
        return cls(pred, accuracy, f1, directions)

    def decoder_cosines(self, sae: saebench.SAE) -> Tensor:
        """[letters, d_sae] float64: the cosine of each decoder row with each letter's probe direction."""
        dec = sae.W_dec.detach().to(torch.float32)
        return (
            (dec @ self.directions.to(dec.device, torch.float32).T) / dec.norm(dim=1, keepdim=True).clamp_min(1e-12)
        ).T.to("cpu", torch.float64)


def encoded(sae: saebench.SAE, x: Tensor, batch: int) -> Iterator[tuple[int, Tensor]]:
    """(start, dense latents [≤ batch, d_sae] float32 on the CPU) per batch of rows of ``x``."""
    for i in range(0, x.shape[0], batch):
        yield i, sae.encode(x[i : i + batch].to(sae.W_dec.dtype)).float().cpu()


def ranked_latents(sae: saebench.SAE, data: LetterData, max_k: int, batch: int) -> list[list[int]]:
    """Per letter, the ``max_k`` latents with the largest mean activation on its train words minus the
    mean on the other letters' train words (streamed: the SAE may be wide)."""
    sums = torch.zeros(data.n_letters, sae.cfg.d_sae, dtype=torch.float64)
    for start, f in encoded(sae, data.x_train, batch):
        sums.index_add_(0, data.y_train[start : start + f.shape[0]], f.to(torch.float64))
    n_in = torch.bincount(data.y_train, minlength=data.n_letters).to(torch.float64)[:, None]
    diff = sums / n_in - (sums.sum(0) - sums) / (data.x_train.shape[0] - n_in)
    return [torch.argsort(-diff[li], stable=True)[:max_k].tolist() for li in range(data.n_letters)]


@dataclass
class Candidates:
    """The train and test words' activations of the latents some letter ranks in its top ``max_k``
    (``column[latent]`` is the latent's column), which is all k-sparse probing looks at."""

    column: dict[int, int]
    train: Tensor
    test: Tensor

    @classmethod
    def encode(cls, sae: saebench.SAE, data: LetterData, ranked: list[list[int]], batch: int) -> Candidates:
        cand = sorted({j for r in ranked for j in r})
        cand_t = torch.tensor(cand, dtype=torch.int64)
        return cls(
            {j: i for i, j in enumerate(cand)},
            torch.cat([f[:, cand_t] for _, f in encoded(sae, data.x_train, batch)]),
            torch.cat([f[:, cand_t] for _, f in encoded(sae, data.x_test, batch)]),
        )

    def sparse_probe_f1(self, latents: list[int], pos_train: Tensor, pos_test: Tensor, l2: float) -> float | None:
        """Test F1 of a one-vs-rest logistic probe (``l2``) on ``latents``, fitted on the train words."""
        cols = [self.column[j] for j in latents]
        # two softmax rows at 2·l2 are the binary probe at l2
        sp = fit_logistic(self.train[:, cols], pos_train.long(), 2, l2=2 * l2, dtype=torch.float64, max_iter=1000)
        return binary_f1(sp.predict(self.test[:, cols]) == 1, pos_test)


def main_latents(
    ranked: list[int], f1_of: Callable[[list[int]], float | None], f1_jump_threshold: float
) -> tuple[list[int], list[float | None]]:
    """(the main latents, the F1 for each k tried): k grows from 1 while the probe on the top k + 1 of
    ``ranked`` improves the test F1 (``f1_of``) by more than ``f1_jump_threshold``."""
    f1_by_k: list[float | None] = []
    k = 1
    for kk in range(1, len(ranked) + 1):
        f1_by_k.append(f1_of(ranked[:kk]))
        if kk == 1:
            continue
        prev, cur = f1_by_k[-2], f1_by_k[-1]
        if prev is not None and cur is not None and cur - prev > f1_jump_threshold:
            k = kk
        else:
            break
    return ranked[:k], f1_by_k


@dataclass
class MainLatents:
    """Per letter (class index): its main latents and the k-sparse probe's test F1 for each k tried."""

    latents: list[list[int]]
    f1_by_k: list[list[float | None]]

    def f1(self, letter: int) -> float | None:
        """The test F1 of the letter's chosen k-sparse probe (k = its number of main latents)."""
        return self.f1_by_k[letter][len(self.latents[letter]) - 1]
