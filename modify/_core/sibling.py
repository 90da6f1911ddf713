"""Siblings: new module objects that share another module's state by identity.

Every rewriter and view in modify builds its models out of siblings (a combinator rebuilt around a
new child, a wrapped ``torch.nn`` module, a mutable or parameter-free copy of a leaf, a leaf with a
merged weight). The rules live here once:

- **state**: the sibling's ``__dict__`` starts as the module's (every attribute, tensor and child
  is the same object), but it has its own ``_parameters``, ``_buffers``, ``_modules`` and
  ``_non_persistent_buffers_set`` containers, so registering, assigning or deleting on one object
  never shows on the other;
- **hooks**: its hook dictionaries are its own, empty (a rewritten model does not inherit hooks
  registered on the original's combinators) or, with ``keep_hooks=True``, holding the same hooks
  (a wrapped ``torch.nn`` module still fires the hooks registered before wrapping);
- **classes**: :func:`derived_class` makes (once per pair) the class of a sibling that adds a mixin
  to a module's class (``Opaque`` over ``nn.Linear``, the mutable mixin over ``modify.Linear``);
  such objects pickle by naming the mixins and the importable class under them.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from .hooks import carries_hooks, note_hooks
from .module import ModifyModule

_CONTAINERS = ("_parameters", "_buffers", "_modules")
_HOOKS = tuple(attr for attr, value in vars(nn.Module()).items() if "hooks" in attr and isinstance(value, dict))
_derived: dict[tuple[type, type, tuple[type, ...]], type] = {}


def sibling(
    module: nn.Module,
    *,
    cls: type | None = None,
    parameters: Mapping[str, torch.Tensor | None] | None = None,
    buffers: Mapping[str, torch.Tensor | None] | None = None,
    children: Mapping[str, nn.Module | None] | None = None,
    keep_hooks: bool = False,
) -> nn.Module:
    """A new module of ``module``'s class (or ``cls``) sharing every attribute, tensor and child.

    No ``__init__`` runs: nothing is allocated or re-initialised. ``module`` is left unchanged.

    Args:
        module: the module to share state with.
        cls: the new object's class (default ``type(module)``), e.g. a :func:`derived_class`.
        parameters: the sibling's parameters, in order (default: ``module``'s); a name left out
            is not registered on the sibling.
        buffers: likewise for buffers (non-persistent names stay non-persistent).
        children: likewise for submodules.
        keep_hooks: keep the hooks registered on ``module`` (in the sibling's own dictionaries);
            by default the sibling starts without hooks.

    Returns:
        The sibling.

    Example:
        >>> import torch, modify
        >>> from modify._core.sibling import sibling
        >>> lin = modify.Linear(3, 2)
        >>> twin = sibling(lin, parameters={"weight": torch.nn.Parameter(torch.zeros(2, 3)), "bias": lin.bias})
        >>> twin.bias is lin.bias, twin.weight is lin.weight, lin.weight.abs().sum().item() > 0
        (True, False, True)
    """
    new = object.__new__(cls or type(module))
    state = new.__dict__
    state.update(module.__dict__)
    for attr, given in zip(_CONTAINERS, (parameters, buffers, children)):
        state[attr] = dict(module.__dict__[attr] if given is None else given)
    state["_non_persistent_buffers_set"] = set(module.__dict__["_non_persistent_buffers_set"])
    for attr in _HOOKS:  # torch.nn.Module's hook dictionaries
        value = state.get(attr)
        if value is not None:
            state[attr] = type(value)(value) if keep_hooks else type(value)()
    if keep_hooks and carries_hooks(state):
        note_hooks()  # combinators must see them (modify._core.hooks)
    if children is not None and isinstance(new, ModifyModule):
        new._children_set()
    return new


def holding(module: nn.Module, source: nn.Module, *names: str) -> nn.Module:
    """A sibling of ``module`` whose tensors ``names`` are ``source``'s own objects.

    How a leaf of another class comes to hold a layer's tensors with zero bytes copied: build it
    on the ``meta`` device from the layer's configuration, then take this sibling (a fused leaf
    from its pair, a converted ``torch.nn`` layer). Each name is a parameter or buffer of
    ``module`` and takes ``source``'s parameter or buffer of that name (``None`` where
    ``source`` has none).

    Example:
        >>> import torch, modify
        >>> from modify._core.sibling import holding
        >>> layer = torch.nn.Linear(3, 2)
        >>> leaf = holding(modify.Linear(3, 2, device="meta"), layer, "weight", "bias")
        >>> leaf.weight is layer.weight, leaf.bias is layer.bias
        (True, True)
    """
    parameters, buffers = dict(module._parameters), dict(module._buffers)
    for name in names:
        value = source._parameters.get(name, source._buffers.get(name))
        (parameters if name in parameters else buffers)[name] = value
    return sibling(module, parameters=parameters, buffers=buffers)


class Derived:
    """Mixin of the classes :func:`derived_class` makes: pickled as (mixins, importable class)."""

    _derived_base: type
    _derived_extra: tuple[type, ...] = ()

    def __reduce_ex__(self, protocol: object) -> tuple:
        chain, cls = [], type(self)
        while issubclass(cls, Derived) and cls.__dict__.get("_derived_base") is not None:
            chain.append((cls.__bases__[0], cls._derived_extra))
            cls = cls._derived_base
        return (_new_derived, (tuple(chain), cls), self.__dict__)


def derived_class(mixin: type, base: type, extra: tuple[type, ...] = ()) -> type:
    """The class ``mixin`` + ``base`` + ``extra`` (named as ``base``), made once per combination.

    Args:
        mixin: a subclass of :class:`Derived`, first in the method resolution order.
        base: the module's own class (itself possibly derived).
        extra: more bases after ``base`` (an opaque leaf's traits that ``base`` lacks).

    Returns:
        The class; its instances pickle and deep-copy like ``base``'s.
    """
    key = (mixin, base, extra)
    cls = _derived.get(key)
    if cls is None:
        namespace = {
            "__module__": base.__module__, "__qualname__": base.__qualname__, "__doc__": base.__doc__,
            "_derived_base": base, "_derived_extra": extra,
        }
        cls = type(base.__name__, (mixin, base, *extra), namespace)
        _derived[key] = cls
    return cls


def _new_derived(chain: tuple[tuple[type, tuple[type, ...]], ...], base: type) -> nn.Module:
    """Unpickling: an empty object of the class ``chain`` (outermost mixin first) over ``base``."""
    for mixin, extra in reversed(chain):
        base = derived_class(mixin, base, extra)
    return object.__new__(base)
