"""EleutherAI sparsify: one folder per hook point, each with cfg.json and sae.safetensors.

What sparsify stores (sparsify/sparse_coder.py, config.py): the encoder is an ``nn.Linear``, so
``encoder.weight`` [d_sae, d_in] and ``encoder.bias`` [d_sae]; ``W_dec`` [d_sae, d_in];
``b_dec`` [d_in]. cfg.json is the SparseCoderConfig (``k``, ``num_latents`` or
``expansion_factor``, ``activation``, ``transcode``, ``skip_connection``...) plus ``d_in``.
Sparsify encodes top-k of ReLU(encoder(x − b_dec)) and decodes Σ f_i·W_dec,i + b_dec: the values
our TopK SAE computes with ``apply_b_dec_to_input`` (ReLU before or after the top-k keeps the
same values). The folder's name is sparsify's hook point, kept as ``hook_name``.

A folder that holds one such folder per hook point is recognised, and refused with the list of
hook points to pick from. Transcoders, skip connections and GroupMax activations are refused.
"""

from __future__ import annotations

import re
from pathlib import Path

import saebench
from saebench import loading

CONFIG = "cfg.json"
WEIGHTS = "sae.safetensors"
NAMES = {"W_enc": "encoder.weight.T", "b_enc": "encoder.bias", "W_dec": "W_dec", "b_dec": "b_dec"}
#: config flags that make the checkpoint something other than a plain sparse autoencoder
REFUSED = {
    "transcode": "a transcoder (it predicts another hook point's output from this one)",
    "skip_connection": "a sparse coder with a linear skip connection (W_skip)",
    "embed_skip": "a sparse coder with a skip connection from the embeddings",
    "gram_lookup": "a sparse coder trained against an n-gram lookup table",
}
SPARSIFY_DEFAULT_K = 32  # SparseCoderConfig.k's default, used by sparsify when cfg.json has no k


class SparsifyLoader(saebench.SAELoader):
    """EleutherAI sparsify folder: cfg.json and sae.safetensors (TopK, pre-encoder bias)."""

    name = "sparsify"
    priority = 5

    @staticmethod
    def _is_coder(folder: Path) -> bool:
        return (folder / CONFIG).is_file() and (folder / WEIGHTS).is_file()

    @classmethod
    def _hook_points(cls, folder: Path) -> list[str]:
        """Subfolders that are sparse coders, in natural order (layers.2 before layers.10)."""
        names = [child.name for child in folder.iterdir() if child.is_dir() and cls._is_coder(child)]
        return sorted(names, key=lambda n: [int(t) if t.isdigit() else t for t in re.split(r"(\d+)", n)])

    def detect(self, path: Path) -> bool:
        try:
            folder = loading.checkpoint_folder(path, WEIGHTS)
            if not folder.is_dir():
                return False
            return self._is_coder(folder) or (not (folder / CONFIG).exists() and bool(self._hook_points(folder)))
        except OSError:
            return False

    def load(self, path: Path, *, allow_pickle: bool = False) -> saebench.SAE:
        folder = loading.checkpoint_folder(path, WEIGHTS)
        if not folder.is_dir():
            raise saebench.CheckpointError(f"expected a sparsify folder with {CONFIG} and {WEIGHTS}", path)
        if not (folder / CONFIG).exists() and (hooks := self._hook_points(folder)):
            raise saebench.CheckpointError(
                f"holds sparsify SAEs for {len(hooks)} hook points ({', '.join(hooks)}); "
                "pick one by passing its subfolder",
                folder,
            )
        cfg_file, weights_file = folder / CONFIG, folder / WEIGHTS
        raw = loading.read_config(cfg_file)
        for flag, what in REFUSED.items():
            if raw.get(flag):
                problem = f"is {what} ({flag}: true); saebench reads sparse autoencoders"
                raise saebench.CheckpointError(problem, cfg_file)
        if raw.get("activation", "topk") != "topk":
            raise saebench.CheckpointError(
                f"activation {raw['activation']!r} is not supported (saebench reads sparsify's topk)", cfg_file
            )
        tensors = loading.read_safetensors(weights_file)
        if "W_skip" in tensors:
            problem = f"is {REFUSED['skip_connection']}; saebench reads sparse autoencoders"
            raise saebench.CheckpointError(problem, weights_file)

        config = {}
        d_in, n_latents, expansion = raw.get("d_in"), raw.get("num_latents"), raw.get("expansion_factor")
        if d_in is not None:
            config["d_in"] = d_in
        if n_latents:
            config["d_sae"] = n_latents
        elif isinstance(d_in, int) and isinstance(expansion, int):
            config["d_sae"] = d_in * expansion
        encoder = tensors.get("encoder.weight")
        provenance = {key: v for key, v in raw.items() if isinstance(v, (str, int, float, bool)) or v is None}
        return loading.build_checkpoint(
            "topk",
            tensors,
            weights_file,
            names=NAMES,
            cfg_where=cfg_file,
            **config,
            k=raw.get("k", SPARSIFY_DEFAULT_K),
            apply_b_dec_to_input=True,
            dtype=loading.dtype_name(getattr(encoder, "dtype", None)),
            hook_name=folder.resolve().name or None,
            metadata={"sparsify": provenance},
        )


@saebench.hookimpl
def register_loaders(register):
    register(SparsifyLoader)
