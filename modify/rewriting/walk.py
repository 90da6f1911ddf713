"""The one tree walk: :func:`positions` lists a model's modules, :func:`rebuild` rebuilds it.

Two views of one tree. :func:`positions` lists every ``(path, module)`` of a model in
``named_modules`` order, and says which lie inside a leaf (a plain ``torch.nn`` module wrapped as
an opaque leaf keeps its children); ``select`` and the functional views read it. :func:`rebuild`
builds a new tree from replacements, visiting the ``Sequential``/``Parallel`` combinators and their
leaves (not the inside of leaves) and rebuilding (with :meth:`~modify.Combinator.rebuilt`) only the
combinators on the way to a change. Every rewriter in modify (LoRA, merge, strip, mutable, fuse)
is a small "find this, replace with that" on top of it. Everything else is shared by identity, so
the input model, its ``state_dict``, its outputs and its parameter objects are never touched.

:func:`rebuild` also owns the rule for modules a rewrite creates (DESIGN §4): every module placed
that was not in the model (an adapter branch, a fused or cached leaf, a wrapper) takes the training
mode of the module it replaces, so an adapted eval model is an eval model; the module placed at a
position takes the replaced module's ``reference_name`` unless it has its own.

Paths are the dotted names of ``named_modules``; the root's path is ``""``. A module reachable by
two paths (the same object placed twice) is visited at each path: criteria are evaluated per path,
and a replacement function is called once per distinct matched module, its result placed at every
matched path, so sharing in the input stays sharing in the output. A selected module inside a leaf
(which :func:`rebuild` does not open) makes ``apply``/``insert_*`` raise instead of silently doing
nothing, unless a selected module enclosing it is replaced as a whole.
"""

from __future__ import annotations

import gc
from typing import Callable, Union

from torch import nn

from .._core.module import ModifyModule
from ..combinators import Combinator

Pre = Callable[[str, nn.Module], Union[nn.Module, None]]
Post = Callable[[str, nn.Module, nn.Module], nn.Module]


def positions(root: nn.Module) -> list[tuple[str, nn.Module, str | None]]:
    """Every ``(path, module, leaf)`` of ``root``, in ``root.named_modules(remove_duplicate=False)`` order.

    ``leaf`` is the path of the outermost leaf (non-combinator) strictly enclosing the position,
    or ``None`` where :func:`rebuild` reaches it.

    Example:
        >>> import torch, modify
        >>> from modify.rewriting.walk import positions
        >>> net = modify.Sequential(torch.nn.Sequential(torch.nn.ReLU()), modify.ReLU())
        >>> [(path, leaf) for path, _, leaf in positions(net)]
        [('', None), ('0', None), ('0.0', '0'), ('1', None)]
    """
    found: list[tuple[str, nn.Module, str | None]] = []

    def visit(path: str, module: nn.Module, leaf: str | None) -> None:
        found.append((path, module, leaf))
        children = module._modules
        if children:
            inner = leaf if leaf is not None or isinstance(module, Combinator) else path
            prefix = f"{path}." if path else ""
            for name, child in children.items():
                if child is not None:
                    visit(prefix + name, child, inner)

    visit("", root, None)
    return found


def rebuild(root: nn.Module, pre: Pre | None = None, post: Post | None = None) -> nn.Module:
    """Build a new tree from ``root``: the single walk every rewriter uses.

    ``pre(path, module)`` runs first at every position (outermost first). A module it returns
    replaces the whole subtree, which is not descended; ``None`` means "keep going": a combinator's
    children are rebuilt and the combinator is rebuilt if any child changed. Then
    ``post(path, original, new)`` may return something else for the position, given the original
    module and its possibly rebuilt version (whose children are already rebuilt); this is
    where a rewriter that restructures a ``Sequential``'s children (fusing adjacent pairs, say)
    does its work. Leaves, opaque ``torch.nn`` modules included, have no children to visit.

    A module that ``pre`` or ``post`` puts in place of another, and every module inside it that was
    not in ``root``, takes the replaced module's training mode; the placed module takes its
    ``reference_name`` unless it has one (rewriters never set these themselves). A combinator
    placed at several paths and given identical new children is rebuilt once, so shared structure
    stays shared. If nothing changes, ``root`` itself is returned. Python's cyclic
    garbage collector is paused meanwhile: a rewrite makes many long-lived objects and little
    garbage, and each collection would rescan the growing model (half of ``lora``'s time on
    5,000 layers).

    Args:
        root: the model to walk; left unchanged.
        pre: ``(path, module) -> module | None``.
        post: ``(path, original, new) -> module``.

    Returns:
        The new root.

    Example:
        >>> import modify
        >>> from modify.rewriting.walk import rebuild
        >>> net = modify.Sequential(modify.Scale(2.0), modify.Scale(3.0), modify.Residual(modify.ReLU()))
        >>> def fold_scales(path, original, new):   # post: rebuild a Sequential's children
        ...     children = list(new) if type(new) is modify.Sequential else []
        ...     if len(children) < 2 or not all(isinstance(m, modify.Scale) for m in children[:2]):
        ...         return new
        ...     return modify.Sequential(modify.Scale(children[0].c * children[1].c), *children[2:])
        >>> folded = rebuild(net, post=fold_scales)
        >>> folded[0].c, folded[1] is net[2]
        (6.0, True)
    """
    memo: dict[tuple[int, ...], nn.Module] = {}
    known: set[int] = set()  # ids of the model's modules and of what the walk already placed

    def placed(original: nn.Module, new: nn.Module) -> nn.Module:
        if new is not original:
            if not known:
                known.update(map(id, root.modules()))
            _adopt(new, original, known)
        return new

    def visit(path: str, module: nn.Module) -> nn.Module:
        if pre is not None:
            replacement = pre(path, module)
            if replacement is not None:
                return placed(module, replacement)
        new = module
        if isinstance(module, Combinator):
            prefix, children, changed = f"{path}." if path else "", {}, False
            for name, child in module._modules.items():
                children[name] = rebuilt = visit(prefix + name, child)
                changed = changed or rebuilt is not child
            if changed:
                key = (id(module), *map(id, children.values()))
                new = memo.get(key)
                if new is None:
                    new = memo[key] = module.rebuilt(children)
                    known.add(id(new))  # a sibling: the combinator's own mode and name
        return new if post is None else placed(module, post(path, module, new))

    enabled = gc.isenabled()
    gc.disable()
    try:
        return visit("", root)
    finally:
        if enabled:
            gc.enable()


def _adopt(new: nn.Module, original: nn.Module, known: set[int]) -> None:
    """``new`` and the modules inside it not in ``known`` take ``original``'s mode; ``new`` its name."""
    if id(new) not in known and isinstance(new, ModifyModule) and new.reference_name is None:
        name = original.reference_name if isinstance(original, ModifyModule) else None
        if name is not None:
            new.reference_name = name
    stack = [new]
    while stack:
        module = stack.pop()
        if id(module) in known:
            continue
        known.add(id(module))
        module.training = original.training
        stack.extend(child for child in module._modules.values() if child is not None)
