"""Gemma Scope: a params.npz with W_enc [d_in, d_sae], W_dec [d_sae, d_in], b_enc, b_dec, threshold.

Gemma Scope's JumpReLU encodes ReLU(x·W_enc + b_enc)·1[x·W_enc + b_enc > threshold], with no
pre-encoder bias, and decodes f·W_dec + b_dec: our JumpReLU without ``apply_b_dec_to_input``,
with θ < 0 raised to 0 (exact, see :func:`saebench.loading.masked_relu_threshold`). The release
lays files out as ``layer_<L>/width_<W>/average_l0_<N>/params.npz``; those parts of the path go
into the metadata when present.
"""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import saebench
from saebench import loading

FILE = "params.npz"
PATH_FACTS = {"layer": r"layer_(\d+)", "width": r"width_(\w+)", "average_l0": r"average_l0_(\d+)"}


class GemmaScopeLoader(saebench.SAELoader):
    """Gemma Scope params.npz: W_enc, W_dec, b_enc, b_dec, threshold (JumpReLU)."""

    name = "gemmascope"
    priority = 5

    def detect(self, path: Path) -> bool:
        try:
            if path.is_dir():
                return (path / FILE).is_file()
            if not path.is_file() or path.suffix != ".npz":
                return False
            if path.name == FILE:
                return True
            with zipfile.ZipFile(path) as z:  # another name: look at the member list, not the data
                return {"W_enc.npy", "threshold.npy"} <= set(z.namelist())
        except (OSError, zipfile.BadZipFile):
            return False

    def load(self, path: Path, *, allow_pickle: bool = False) -> saebench.SAE:
        file = path / FILE if path.is_dir() else path
        tensors = loading.read_npz(file)
        if "threshold" in tensors:
            tensors["threshold"] = loading.masked_relu_threshold(tensors["threshold"])
        facts = {}
        for key, pattern in PATH_FACTS.items():
            for part in file.resolve().parent.parts:
                if m := re.fullmatch(pattern, part):
                    facts[key] = int(m.group(1)) if m.group(1).isdigit() else m.group(1)
        w_enc = tensors.get("W_enc")
        return loading.build_checkpoint(
            "jumprelu",
            tensors,
            file,
            apply_b_dec_to_input=False,
            dtype=loading.dtype_name(getattr(w_enc, "dtype", None)),
            metadata={"gemmascope": facts},
        )


@saebench.hookimpl
def register_loaders(register):
    register(GemmaScopeLoader)
