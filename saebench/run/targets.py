"""A transcoder's targets: the activations at the hook point it writes, which its output is compared with.

Before any work (:func:`check_transcoders`): a checkpoint that is a transcoder needs ``hookpoint_out``
(saebench.run.transcoders); its d_out must be the width of ``hookpoint_out``; every scorer of its cells
must declare ``handles_transcoders``. The evaluation cache of ``hookpoint_out`` holds the same tokens
as that of ``hookpoint``: the activations stage fills both in one forward pass, and a cache another
run built is checked by its tokens per context (:func:`target_cache`). A checkpoint in an SAE's
format given ``hookpoint_out`` is evaluated as a transcoder without skip (its d_out is its d_in).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from saebench.errors import ConfigError, ShapeError
from saebench.run.activations import ActivationCache

if TYPE_CHECKING:
    from saebench.run.context import RunContext
    from saebench.run.plan import Cell


def check_transcoders(ctx: RunContext, cells: list[Cell]) -> None:
    """The checks of the module docstring for the SAEs of ``cells``, loading each checkpoint once (kept for its cells)."""
    plan = ctx.plan
    for name in dict.fromkeys(c.sae for c in cells if plan.saes[c.sae].spec.path is not None):
        entry = plan.saes[name]
        spec, where = entry.spec, ctx.where(f"saes[{entry.index}]")
        sae = ctx.load_sae(name, keep=True)
        if spec.hookpoint_out is None:
            if sae.is_transcoder:
                writes = repr(sae.cfg.hook_name_out) if sae.cfg.hook_name_out else "a hook point it does not name"
                raise ConfigError(f"SAE {name!r} is a transcoder that writes {writes}: add 'hookpoint_out'", where)
            continue
        width = _width(ctx, spec.model, spec.hookpoint_out)
        if sae.d_out != width:
            raise ConfigError(
                f"SAE {name!r} has d_out {sae.d_out} but {spec.model} {spec.hookpoint_out} has width {width}",
                f"{where}.hookpoint_out",
            )
        scored = [c for c in cells if c.sae == name and c.kind not in ("explain", "compare")]
        refused = [c for c in scored if not getattr(ctx.component(c), "handles_transcoders", False)]
        if refused:
            index = next(i for i, s in enumerate(plan.matrix.scorers) if s.name == refused[0].plugin)
            raise ConfigError(
                f"scorer {refused[0].plugin!r} does not evaluate transcoders, and SAE {name!r} is one "
                f"({spec.hookpoint} -> {spec.hookpoint_out}): score it with other scorers",
                ctx.where(f"scorers[{index}]"),
            )


def _width(ctx: RunContext, model: str, hookpoint: str) -> int:
    cache = ctx.plan.eval_cache(model, hookpoint)
    return ActivationCache(cache).d if ActivationCache.exists(cache) else ctx.adapter(model).d_model(hookpoint)


def target_cache(ctx: RunContext, sae: str) -> ActivationCache | None:
    """The evaluation cache of a transcoder's ``hookpoint_out`` (None for an SAE), checked to hold the same
    tokens as its input's cache, context by context."""
    entry = ctx.plan.saes[sae]
    if entry.spec.hookpoint_out is None:
        return None
    source = ActivationCache(entry.eval_cache)
    target = ActivationCache(ctx.plan.eval_cache(entry.spec.model, entry.spec.hookpoint_out))
    counts = [c.manifest.get("context_tokens") for c in (source, target)]
    if source.n_tokens != target.n_tokens or counts[0] != counts[1]:
        raise ShapeError(
            f"the caches of {entry.spec.hookpoint} and {entry.spec.hookpoint_out} hold different tokens "
            f"({source.n_tokens} and {target.n_tokens} rows): delete {target.folder} to rebuild it"
        )
    return target
