"""Bring your own model: :func:`convert` turns a plain ``torch.nn`` model into the algebra.

How it works, in four steps (one file each):

1. :mod:`~modify.conversion.trace`: ``torch.fx`` traces ``forward``, keeping whole the modules that
   become one leaf and inlining every other submodule, and records which module call each node
   ran in. Where it cannot and example ``args`` are given, :mod:`~modify.conversion.export`
   captures ``forward`` with ``torch.export`` and rewrites the ATen graph into the same form
   (layer calls as ``call_module`` nodes by ``nn_module_stack``, ATen ops as their torch calls);
   a stack of identical blocks is captured through a stand-in keeping two of them, the second
   block's graph repeated for the others (:mod:`~modify.conversion.repeats`).
2. :mod:`~modify.conversion.units`: every node that makes a value becomes a leaf: a known
   ``torch.nn`` layer its modify leaf holding the same parameters (:mod:`~.known_layers`), a function,
   method or operator with a primitive that primitive (:mod:`~.functions`; views whose sizes come
   from ``x.size()`` through :mod:`~.shapes`), anything else an opaque :class:`~modify.Function`
   replaying the call (:mod:`~.replay`). Sizes and shapes are not values: they are recomputed
   inside the leaf that uses them; values computed from no input (a mask buffer's slice) are
   replayed inside one leaf holding their tensors.
3. :mod:`~modify.conversion.scopes`: the leaves of one submodule call are grouped under the
   submodule's attribute name, recursively, so the tree reads like the original.
4. :mod:`~modify.conversion.graph`: each group's dataflow becomes combinators. Chains are
   ``Sequential``; ``x + f(x)`` is ``Residual(f)``; values computed side by side from one value
   are a ``Fork``; any other dataflow carries its live values as a tuple (an *environment*) through
   steps ``Fork(Index(i), ..., Sequential(<gather inputs with Index/Copy>, leaf))``.
"""

from __future__ import annotations

import contextlib
import gc
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from .._core.arguments import typechecked
from .._core.module import ModifyModule
from .._core.wrapped import wrap
from .known_layers import convert_layer, known_layer
from ..combinators import Sequential
from ..primitives.function import Function
from .export import capture
from .repeats import repeated_blocks
from .scopes import Scopes
from .trace import trace
from .units import Units, pick
from .verify import FixedSizes, verify


@typechecked
def convert(
    module: nn.Module,
    args: torch.Tensor | tuple[torch.Tensor, ...] | None = None,
    kwargs: dict[str, Any] | None = None,
    *,
    leaf_modules: tuple[type, ...] | list[type] = (),
    output: str | tuple[str, ...] | None = None,
) -> nn.Module:
    """A tree of leaves joined by ``Sequential``/``Parallel`` computing what ``module`` computes.

    ``module.forward`` is traced with ``torch.fx`` (Reed et al. 2022, "torch.fx: Practical
    Program Capture and Transformation for Deep Learning in Python"); it takes one tensor, or
    several (the result then takes them as one tuple), and returns a tensor or a (nested) tuple
    of tensors. Arguments with defaults are fixed to them; Python branches on
    ``self.training`` and on other settings are fixed as they run at conversion time.

    The result holds ``module``'s own parameter and buffer objects (zero bytes copied; ``module``
    is left untouched, its ``state_dict`` included) and shares them from then on: an optimizer
    step on either is seen by both, as for any sibling. Known ``torch.nn`` layers become modify
    leaves (a norm with an affine part the norm plus ``ElementwiseAffine`` in a ``Sequential``
    named after the layer), so :func:`modify.select`, :func:`modify.lora` and the other rewriters
    reach them; each keeps its attribute name, so ``"*.c_attn"`` or ``"layer1.*"`` finds it. A
    module used twice is one object in the result. Parameters ``forward`` never uses are not in
    the result.

    With example ``args``, a ``forward`` that ``torch.fx`` cannot trace (decorated, ``**kwargs``,
    a ``ModelOutput``, Python control flow on sizes: ``transformers``' and ``timm``'s models) is
    captured with ``torch.export`` instead, and the result is checked on the example against
    ``module`` before it is returned. Every leaf made from a module of ``module`` has that
    module's path as its ``reference_name`` (``transformer.h.0.attn.c_attn``), which
    :func:`modify.save_adapters` writes, so PEFT loads the adapters onto ``module``.

    Args:
        module: the model, any ``torch.nn.Module`` (a modify module is returned as it is).
        args: example inputs, a tensor or a tuple of tensors, as ``torch.export.export`` takes
            them (a batch of 2 or more: export fixes axes of size 1).
        kwargs: keyword arguments fixed for every call (``{"use_cache": False}``).
        leaf_modules: ``torch.nn.Module`` classes to keep whole as opaque leaves (their inside
            is not converted; use it for code ``torch.fx`` cannot trace).
        output: for a ``forward`` returning a dict or ``ModelOutput``: the field to return
            (default ``"logits"`` if present, else the first field), or a tuple of field names
            to return a tuple.

    Returns:
        A ``ModifyModule`` in ``module``'s training mode (each leaf in its layer's mode).

    Shape:
        As ``module``: e.g. token ids ``(B, T)`` -> logits ``(B, T, V)`` for a GPT; several
        inputs ``(x_1, ..., x_n)`` as one tuple.

    Raises:
        TypeError: ``forward`` takes ``*args`` (or ``**kwargs`` without example ``args``) or
            returns something other than tensors; an ``output`` field it does not return; code
            neither capture can read (Python control flow on a tensor's values, say), naming the
            module path and the construct, with the ``leaf_modules`` hint (and, for a
            ``transformers`` model, ``convert(model, args)`` and ``modify.models``); a tree
            whose output on the example differs from ``module``'s.
        ValueError: (when called) an input size other than the example's on an axis that
            ``torch.export`` fixed, naming the input and axis.

    Example:
        >>> import torch, modify
        >>> from torch import nn
        >>> class Block(nn.Module):
        ...     def __init__(self):
        ...         super().__init__()
        ...         self.norm, self.fc = nn.LayerNorm(8), nn.Linear(8, 8)
        ...     def forward(self, x):
        ...         return x + self.fc(torch.relu(self.norm(x)))
        >>> block = Block()
        >>> converted = modify.convert(block)
        >>> converted
        Residual(
          (0): Copy(n=2)
          (1): Parallel(
            (0): Identity()
            (1): Sequential(
              (norm): Sequential(
                (norm): LayerNorm((8,), eps=1e-05)
                (affine): ElementwiseAffine((8,), bias=True, dim=-1)
              )
              (relu): ReLU()
              (fc): Linear(in_features=8, out_features=8, bias=True)
            )
          )
          (2): Add()
        )
        >>> x = torch.randn(2, 8)
        >>> torch.allclose(converted(x), block(x), atol=1e-6), converted[1][1].fc.weight is block.fc.weight
        (True, True)
        >>> [path for path, _ in modify.select(converted, "*.fc")]
        ['1.1.fc']
    """
    if isinstance(module, ModifyModule):
        return module
    keep_whole = tuple(leaf_modules)
    if isinstance(module, keep_whole):
        return wrap(module)
    if known_layer(module):
        leaf = convert_layer(module)
        if leaf is not None:
            leaf.reference_name = ""
            return leaf
    args = (args,) if isinstance(args, torch.Tensor) else args
    kwargs = dict(kwargs or {})

    def keep(m: nn.Module) -> bool:
        return known_layer(m) or isinstance(m, keep_whole)

    with _older_heap_frozen():
        try:
            graph, inputs = trace(module, keep, kwargs)
            tree, layers = _build(module, graph, inputs, output)
        except TypeError as error:
            if args is None:
                raise TypeError(f"{error}{_hint(module)}") from error
            return _exported(module, args, kwargs, output, keep)
        _set_mode(tree, module.training, layers)
        if args is not None:
            verify(module, tree, args, kwargs, output)
        return tree


@contextlib.contextmanager
def _older_heap_frozen() -> Iterator[None]:
    """Garbage collection scans only the objects made inside: every object alive before (the
    model, torch, ``transformers``: a full collection of them cost 0.4 s in half the conversions
    of a GPT-2) is frozen (``gc.freeze``) and unfrozen after; a caller's own frozen objects are
    left as they are (then nothing is frozen here)."""
    if gc.get_freeze_count():
        yield
        return
    gc.freeze()
    try:
        yield
    finally:
        gc.unfreeze()


def _build(module: nn.Module, graph, inputs, output) -> tuple[nn.Module, set[int]]:
    """The tree of a captured graph, and the ids of its leaves made from layers (in their own mode)."""
    units = Units(module, graph, inputs, output)
    scopes = Scopes(units.units, units.chains, units.targets, units.output)
    tree = scopes.region(units.units, list(units.inputs), units.output)
    return tree, {id(m) for m in units.leaves.values()}


def _exported(module: nn.Module, args: tuple, kwargs: dict, output, keep) -> nn.Module:
    """The checked tree of ``torch.export``'s capture: first through a stand-in whose stack of
    identical blocks is cut to two (:mod:`~.repeats`), else, or where that tree fails the check on
    the example, of the whole model."""
    repeated = repeated_blocks(module)
    if repeated is not None:
        try:
            return _checked_capture(module, args, kwargs, output, keep, repeated)
        except TypeError:
            pass  # the whole model's capture decides
    return _checked_capture(module, args, kwargs, output, keep, None)


def _checked_capture(module: nn.Module, args: tuple, kwargs: dict, output, keep, repeated) -> nn.Module:
    """The tree of one capture, in ``module``'s mode, checked first on the axes it fixed."""
    graph, inputs, fixed = capture(module, args, kwargs, lambda out: _fields(out, output, module), keep, repeated)
    tree, layers = _build(module, graph, inputs, output)
    if fixed:
        guard = Function(FixedSizes(fixed, len(inputs), type(module).__name__), name="fixed_sizes")
        children = dict(tree.named_children()) if type(tree) is Sequential else {"model": tree}
        tree = Sequential(fixed_sizes=guard, **children)
    _set_mode(tree, module.training, layers)
    verify(module, tree, args, kwargs, output)
    return tree


def _fields(result: object, output, module: nn.Module) -> object:
    return pick(result, output, type(module).__name__) if isinstance(result, dict) else result


def _hint(module: nn.Module) -> str:
    if not type(module).__module__.startswith("transformers."):
        return ""
    return (
        " For a transformers model, pass example inputs so that torch.export captures it: "
        "modify.convert(model, (input_ids,), {'use_cache': False}); for GPT-2 and Llama checkpoints "
        "modify.models.GPT.from_pretrained / modify.models.Llama.from_pretrained build them from primitives."
    )


def _set_mode(tree: nn.Module, training: bool, kept: set[int]) -> None:
    """The root's mode on every module made here; kept layers and modules keep their own."""
    if id(tree) in kept:
        return
    tree.training = training
    for child in tree.children():
        _set_mode(child, training, kept)
