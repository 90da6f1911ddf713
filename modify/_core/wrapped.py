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
from .sibling import Derived, derived_class, sibling

_TRAIT_ORDER = (*ARITY, *PARAMETERS, *LINEARITY, *KIND)


class Opaque(Derived, ModifyModule):
    """Marker base of wrapped ``torch.nn`` modules: a leaf whose inside the algebra does not see."""


def wrap(module: nn.Module) -> ModifyModule:
    """Return ``module`` if it is a :class:`ModifyModule`, else an opaque sibling of it.

    The sibling shares parameters, buffers, children and the hooks registered so far with
    ``module`` (see :func:`~modify._core.sibling.sibling`); later hooks registered on either object
    are not seen by the other. Its class is one per (``torch.nn`` class, traits of the instance).

    Raises:
        TypeError: if ``module`` is not a ``torch.nn.Module``, or is a ``Lazy*`` layer not yet
            initialised.
    """
    if isinstance(module, ModifyModule):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    base = type(module)
    if any(is_lazy(t) for t in (*module._parameters.values(), *module._buffers.values())):
        raise TypeError(
            f"cannot wrap {base.__name__} with uninitialized parameters: run one forward through it "
            f"first (it turns into {getattr(base, 'cls_to_become', base).__name__}), then compose it"
        )
    extra = tuple(t for t in _TRAIT_ORDER if t in torch_traits(module) - class_traits(base))
    return sibling(module, cls=derived_class(Opaque, base, extra), keep_hooks=True)
