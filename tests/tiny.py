"""SAEs for tests on the tiny model (conftest's tiny_llama, d_model 32): random weights scaled so that
most latents fire somewhere on its small activations."""

import saebench
from reference import random_weights


def firing_sae(arch: str = "relu", d_sae: int = 48, *, seed: int = 0, d_in: int = 32, **options) -> saebench.SAE:
    weights = random_weights(d_in, d_sae, arch=arch, seed=seed)
    weights["W_enc"] *= 8
    return saebench.build_sae(arch, weights, hook_name="layers.1", **options)
