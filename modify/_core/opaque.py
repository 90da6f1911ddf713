"""Plain ``torch.nn`` modules inside the algebra: wrapped as opaque leaves.

``wrap(nn.ReLU())`` returns a sibling of the module whose class derives from both the module's
own class and :class:`ModifyModule`, plus the traits :func:`~modify.traits_of` gives the
module (documented for its class, refined for the instance, ``Param``/``ParamFree`` read off
its parameters), so ``isinstance(w, trait)`` and ``traits_of(w)`` agree. It shares every
parameter, buffer and child with the given module by identity. So ``state_dict`` keys stay
those of ``torch.nn`` (``0.weight``, not ``0.module.weight``), ``isinstance(w, nn.Linear)``
still holds, and the given module itself is left untouched. Rewriters treat the result as a leaf.
A ``Lazy*`` layer is wrapped once initialised (its first forward turns it into its plain class);
before that wrapping it raises ``TypeError``.
"""

from __future__ import annotations

from torch import nn
from torch.nn.parameter import is_lazy

from ..traits import ARITY, KIND, LINEARITY, PARAMETERS
from .inference import class_traits, torch_traits
from .module import ModifyModule

_TRAIT_ORDER = (*ARITY, *PARAMETERS, *LINEARITY, *KIND)

# One wrapper class per (torch.nn class, traits of the instance).
_wrapper_classes: dict[tuple[type, frozenset[type]], type] = {}


class Opaque(ModifyModule):
    """Marker base of wrapped ``torch.nn`` modules: a leaf whose inside the algebra does not see."""

    _opaque_base: type = nn.Module
    _opaque_traits: frozenset[type] = frozenset()

    def __reduce_ex__(self, protocol: object) -> tuple:
        return (_rebuild, (self._opaque_base, self.__dict__))


def _wrapper_class(base: type, traits: frozenset[type]) -> type:
    """``base`` with :class:`Opaque` and the ``traits`` it does not inherit yet as bases."""
    cls = _wrapper_classes.get((base, traits))
    if cls is None:
        extra = [t for t in _TRAIT_ORDER if t in traits - class_traits(base)]
        namespace = {"__module__": base.__module__, "__doc__": base.__doc__, "_opaque_base": base,
                     "_opaque_traits": traits}
        cls = type(base.__name__, (Opaque, base, *extra), namespace)
        _wrapper_classes[(base, traits)] = cls
    return cls


def _rebuild(base: type, state: dict) -> nn.Module:
    if any(is_lazy(t) for t in (*state["_parameters"].values(), *state["_buffers"].values())):
        raise TypeError(
            f"cannot wrap {base.__name__} with uninitialized parameters: run one forward through it "
            f"first (it turns into {getattr(base, 'cls_to_become', base).__name__}), then compose it"
        )
    module = object.__new__(base)
    module.__dict__.update(state)
    module.__class__ = _wrapper_class(base, torch_traits(module))
    return module


_DICT_ATTRS = ("_parameters", "_buffers", "_modules", "_non_persistent_buffers_set")


def wrap(module: nn.Module) -> ModifyModule:
    """Return ``module`` if it is a :class:`ModifyModule`, else an opaque sibling of it.

    The sibling shares parameters, buffers, children and hooks' targets with ``module``; later
    hooks registered on either object are not seen by the other.

    Raises:
        TypeError: if ``module`` is not a ``torch.nn.Module``.
    """
    if isinstance(module, ModifyModule):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    state = dict(module.__dict__)
    for attr in _DICT_ATTRS:
        if attr in state:
            state[attr] = type(state[attr])(state[attr])
    for attr, value in state.items():
        if attr.endswith("hooks") and isinstance(value, dict):
            state[attr] = type(value)(value)
    return _rebuild(type(module), state)
