"""Where the subject model runs: ``device:`` on the matrix or a model entry (``auto``, ``cpu``, ``cuda``, ``cuda:N``, ``mps``).

A device this machine lacks is bad input, found when the matrix is checked (before any work), so
``device: cuda`` on a machine without CUDA exits 2 in one line instead of failing mid-run.
"""

from __future__ import annotations

import torch

from saebench.errors import ConfigError

AUTO = "auto"


def resolve(device: str, where: str) -> str:
    """The torch device for ``device``: ``auto`` is ``cuda`` when torch sees a CUDA device, else ``cpu``."""
    if device == AUTO:
        return "cuda" if torch.cuda.is_available() else "cpu"
    try:
        parsed = torch.device(device)
    except (RuntimeError, TypeError):
        raise ConfigError(f"unknown device {device!r}; use auto, cpu, cuda, cuda:N or mps", where) from None
    if parsed.type == "cuda":
        if not torch.cuda.is_available():
            raise ConfigError(
                f"device {device!r} asks for CUDA, but this torch ({torch.__version__}) sees no CUDA device; "
                "use device: auto or cpu",
                where,
            )
        if parsed.index is not None and parsed.index >= torch.cuda.device_count():
            raise ConfigError(f"device {device!r}: this machine has {torch.cuda.device_count()} CUDA device(s)", where)
    elif parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r} asks for Apple MPS, which this machine lacks; use auto or cpu", where)
    elif parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"unsupported device {device!r}; use auto, cpu, cuda, cuda:N or mps", where)
    return str(parsed)
