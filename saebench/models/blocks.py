"""Hook points on a stack of decoder blocks (torch modules), and rerunning the stack from one block.

Any adapter whose model is a list of blocks, each reading the previous one's output, can use these:
:func:`block_hookpoints` names the sites of one block, :func:`register` hooks a site (an output, or
for an input site a forward pre-hook), and :func:`resume_state` / :func:`skipping` let a forward
start at block i from a saved input of that block. The downstream scorer relies on the last two:
several SAEs at one hook point rerun only the blocks from theirs on, not the whole model.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

_ATTN_NAMES = ("self_attn", "attn", "attention", "self_attention")
_MLP_NAMES = ("mlp", "feed_forward", "ffn")
# The MLP's output projection, whose input is the ``mlp.hidden`` hook point (GPT-2's Conv1D is c_proj).
_MLP_OUT_NAMES = ("down_proj", "c_proj", "fc2", "dense_4h_to_h", "fc_out", "w2")
# The attention's output projection, whose input is the ``attn.z`` hook point.
_ATTN_OUT_NAMES = ("o_proj", "c_proj", "out_proj", "dense", "wo")
HIDDEN = ".mlp.hidden"
Z = ".attn.z"
#: hook points that are a module's input (read and replaced with forward pre-hooks)
INPUTS = (HIDDEN, Z, ".mlp_in")


class StopForward(Exception):
    """Raised by a hook to end a forward pass once everything wanted from it is captured."""


def _child(parent: nn.Module | None, names: Sequence[str]) -> nn.Module | None:
    return next((getattr(parent, n) for n in names if isinstance(getattr(parent, n, None), nn.Module)), None)


def block_hookpoints(prefix: str, block: nn.Module) -> dict[str, nn.Module]:
    """The hook points of one decoder block, each with the module it reads (see the adapter's docstring)."""
    attn, mlp = _child(block, _ATTN_NAMES), _child(block, _MLP_NAMES)
    # post_attention_layernorm norms the attention's output only where a post-feedforward norm exists too:
    # in Llama and Qwen it is the norm before the MLP
    post_mlp = _child(block, ("post_feedforward_layernorm",))
    post_attn = _child(block, ("post_attention_layernorm",)) if post_mlp is not None else None
    found = {
        prefix: block,
        f"{prefix}.attn": attn,
        f"{prefix}{Z}": _child(attn, _ATTN_OUT_NAMES),
        f"{prefix}.attn_out": post_attn or attn,
        f"{prefix}.mlp_in": mlp,
        f"{prefix}.mlp": mlp,
        f"{prefix}{HIDDEN}": _child(mlp, _MLP_OUT_NAMES),
        f"{prefix}.mlp_out": post_mlp or mlp,
    }
    return {hp: m for hp, m in found.items() if m is not None}


def register(module: nn.Module, hookpoint: str, hook: Callable) -> torch.utils.hooks.RemovableHandle:
    """A forward hook (module output), or for an input hook point (``.mlp.hidden``, ``.attn.z``, ``.mlp_in``) a
    forward pre-hook: the hook sees the module's input as its output (its return value, when not None,
    replaces that input)."""
    if not hookpoint.endswith(INPUTS):
        return module.register_forward_hook(hook)

    def pre_hook(mod: nn.Module, args: tuple) -> tuple | None:
        new = hook(mod, args[1:], args[0])
        return None if new is None else (new, *args[1:])

    return module.register_forward_pre_hook(pre_hook)


@dataclass
class ResumeState:
    """The output of block ``block − 1`` for one batch of tokens, as the model produced it (its device
    and dtype, and its tuple form if the block returns one): what block ``block`` reads."""

    block: int
    output: Any
    shape: tuple[int, int]


def block_index(hookpoint: str) -> int:
    """i of a hook point ``layers.{i}[.site]``."""
    return int(hookpoint.split(".")[1])


def resume_state(blocks: nn.ModuleList, block: int, run: Callable[[], object], shape: tuple[int, int]) -> ResumeState:
    """The input of ``blocks[block]`` (block >= 1) from ``run()``, a forward of the model on tokens of
    ``shape``, which stops right after ``blocks[block − 1]``."""
    saved: list[Any] = []

    def hook(module: nn.Module, args: tuple, output: Any) -> None:
        if isinstance(output, tuple):
            saved.append((output[0].detach().clone(), *output[1:]))
        else:
            saved.append(output.detach().clone())
        raise StopForward

    handle = blocks[block - 1].register_forward_hook(hook)
    try:
        run()
    except StopForward:
        pass
    finally:
        handle.remove()
    if not saved:
        raise RuntimeError(f"block {block - 1} did not run during the forward")
    return ResumeState(block, saved[0], shape)


@contextlib.contextmanager
def skipping(blocks: nn.ModuleList, state: ResumeState) -> Iterator[None]:
    """Within the block, a forward of the model skips ``blocks[:state.block]``: each returns the saved
    output, so the blocks from ``state.block`` on see exactly what the full forward gave them."""
    patched = list(blocks[: state.block])

    def skip(*args: Any, **kwargs: Any) -> Any:
        return state.output

    for b in patched:
        b.forward = skip  # an instance attribute: nn.Module.__call__ calls it instead of the class's forward
    try:
        yield
    finally:
        for b in patched:
            del b.forward
