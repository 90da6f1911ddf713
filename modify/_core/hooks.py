"""Who can observe a module call: the one registry of hooks on modify modules, and torch's globals.

A combinator may run a child's ``forward`` in place of calling the child (``child(x)``, which is
``torch.nn.Module.__call__``) only where the two are the same: no hooks on the child, none global,
no tracer watching module calls. Testing each child's hook dictionaries on every call adds up
over the ~90 modules of a small GPT, and under ``torch.compile`` it costs guards (dynamo inlines
each child's ``__call__`` and checks its six hook dictionaries before reusing the graph: 546 of the
tiny GPT's 1,268 guards). So the question is asked once per combinator call: has any modify module
ever had a hook?

Every way a hook reaches a modify module's own dictionaries is seen here:

- the public registering methods (``register_forward_hook``, ``register_forward_pre_hook``,
  ``register_full_backward_hook``, ``register_full_backward_pre_hook``, ``register_backward_hook``)
  and ``Module.compile`` (which sets ``_compiled_call_impl``) are overridden on ``ModifyModule``
  to call :func:`note_hooks` first; FSDP2's ``fully_shard``, ``torch.nn.utils.weight_norm`` and
  ``spectral_norm`` and user code all register through them;
- a sibling that keeps another module's hooks (a wrapped ``torch.nn`` module hooked before
  wrapping) notes them when it copies a non-empty dictionary;
- an unpickled or deep-copied module notes the hooks its state carries.

The flag is sticky: once set, combinators fall back to the per-child test
(:func:`unhooked`), which sees any hook however it got there. Writing into a module's private
``_forward_hooks`` dictionaries by hand is not a way in that torch supports, and is not seen
before the flag is set. A module that is not a modify module (a plain child, a wrapped
``torch.nn`` module, whose class may define its own ``__call__``) is always called.
"""

from __future__ import annotations

import functools
from typing import Callable

import torch
from torch import nn
from torch.nn.modules import module as torch_module

_PLAIN_CALL = nn.Module.__call__

# Whether a hook (or an in-place ``compile``) was ever put on a modify module in this process.
_hooked = False


def note_hooks() -> None:
    """Record that a modify module has (or is about to have) a hook; from then on every call is checked."""
    global _hooked
    _hooked = True


def noted(method: Callable) -> Callable:
    """``method`` of ``torch.nn.Module`` (a way to put a hook on a module) that first calls :func:`note_hooks`."""

    @functools.wraps(method)
    def noting(self: nn.Module, *args: object, **kwargs: object) -> object:
        note_hooks()
        return method(self, *args, **kwargs)

    noting.__doc__ = f"``torch.nn.Module.{method.__name__}``, noted in modify's hook registry."
    return noting


def hooks_seen() -> bool:
    """Whether a hook was ever put on a modify module in this process (see the module's text)."""
    return _hooked


def unobserved() -> bool:
    """Whether no one watches module calls globally: ``torch.nn.Module._call_impl``'s fast-path test.

    No global module hooks, no JIT tracing, and ``nn.Module.__call__`` not patched (``torch.fx``
    tracing and ``torch.export`` patch it to see each module call).
    """
    return not (
        torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
        or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks
        or torch._C._get_tracing_state() or nn.Module.__call__ is not _PLAIN_CALL
    )  # fmt: skip


def unwatched() -> bool:
    """:func:`unobserved`, and no hook was ever put on a modify module: no call of one can be observed.

    One test for a whole combinator call. Under ``torch.compile`` dynamo reads the same globals
    while it traces (the tracing state folds to ``None``) and guards the registry flag, so a hook
    put on any modify module after compiling fails that guard: the model is traced again, and the
    hooked module is called. Global module hooks are read at tracing time only, as dynamo does for
    every ``torch.nn`` module (``torch._dynamo.config.skip_nnmodule_hook_guards``).
    """
    return not (
        _hooked
        or torch_module._global_forward_hooks or torch_module._global_forward_pre_hooks
        or torch_module._global_backward_hooks or torch_module._global_backward_pre_hooks
        or torch._C._get_tracing_state() or nn.Module.__call__ is not _PLAIN_CALL
    )  # fmt: skip


def unhooked(module: nn.Module) -> bool:
    """Whether calling ``module.forward`` is what ``module(x)`` would do: no hooks, not compiled in place."""
    return not (
        module._forward_hooks or module._forward_pre_hooks or module._backward_hooks
        or module._backward_pre_hooks or module._compiled_call_impl is not None
    )  # fmt: skip


def carries_hooks(state: dict) -> bool:
    """Whether a module's ``__dict__`` holds a hook or an in-place compiled call (for siblings, unpickling)."""
    names = ("_forward_hooks", "_forward_pre_hooks", "_backward_hooks", "_backward_pre_hooks")
    return any(state.get(name) for name in names) or state.get("_compiled_call_impl") is not None
