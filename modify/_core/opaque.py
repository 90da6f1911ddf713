"""Plain ``torch.nn`` modules inside the algebra: wrapped as opaque leaves.

``wrap(nn.ReLU())`` returns a sibling of the module whose class derives from both the module's
own class and :class:`ModifyModule` (plus the traits documented for that class), sharing every
parameter, buffer and child with the given module by identity. So ``state_dict`` keys stay those
of ``torch.nn`` (``0.weight``, not ``0.module.weight``), ``isinstance(w, nn.Linear)`` still holds,
and the given module itself is left untouched. Rewriters treat the result as a leaf.
"""

from __future__ import annotations

from torch import nn

from ..traits import (
    Elementwise,
    Linear,
    Matrix,
    NonLinear,
    Param,
    ParamFree,
    Reduction,
    Restructure,
    Unary,
    Vector,
    class_traits,
)
from .module import ModifyModule
from .sibling import Derived, derived_class, sibling

# Documented traits of torch.nn classes (parameters are read off the instance).
_KNOWN: dict[type, tuple[type, ...]] = {
    nn.Identity: (Unary, Linear, Elementwise),
    nn.Dropout: (Unary, Linear, Elementwise),
    nn.ReLU: (Unary, NonLinear, Elementwise),
    nn.GELU: (Unary, NonLinear, Elementwise),
    nn.SiLU: (Unary, NonLinear, Elementwise),
    nn.Tanh: (Unary, NonLinear, Elementwise),
    nn.Sigmoid: (Unary, NonLinear, Elementwise),
    nn.LeakyReLU: (Unary, NonLinear, Elementwise),
    nn.Softmax: (Unary, NonLinear, Vector),
    nn.LogSoftmax: (Unary, NonLinear, Vector),
    nn.Linear: (Unary, Linear, Vector),
    nn.Conv1d: (Unary, Linear),
    nn.Conv2d: (Unary, Linear),
    nn.Embedding: (Unary, NonLinear),
    nn.LayerNorm: (Unary, NonLinear, Vector),
    nn.RMSNorm: (Unary, NonLinear, Vector),
    nn.GroupNorm: (Unary, NonLinear),
    nn.BatchNorm1d: (Unary, NonLinear),
    nn.BatchNorm2d: (Unary, NonLinear),
    nn.Flatten: (Unary, Linear, Restructure),
    nn.MaxPool2d: (Unary, NonLinear, Reduction, Matrix),
    nn.AvgPool2d: (Unary, Linear, Reduction, Matrix),
    nn.AdaptiveAvgPool2d: (Unary, Linear, Reduction, Matrix),
}


class Opaque(Derived, ModifyModule):
    """Marker base of wrapped ``torch.nn`` modules: a leaf whose inside the algebra does not see."""

    def _infer_traits(self) -> frozenset[type]:
        return torch_traits(self)

    @classmethod
    def _extra_bases(cls, base: type) -> tuple[type, ...]:
        return _documented(base)


def _documented(cls: type) -> tuple[type, ...]:
    for parent in cls.__mro__:
        if parent in _KNOWN:
            return _KNOWN[parent]
    return ()


def torch_traits(module: nn.Module) -> frozenset[type]:
    """Traits of a plain ``torch.nn`` module: its documented ones, ``Param`` from its parameters."""
    has_params = next(module.parameters(), None) is not None
    own = class_traits(type(module)) - {Param, ParamFree}
    return frozenset(own | set(_documented(type(module))) | {Param if has_params else ParamFree})


def wrap(module: nn.Module) -> ModifyModule:
    """Return ``module`` if it is a :class:`ModifyModule`, else an opaque sibling of it.

    The sibling shares parameters, buffers, children and the hooks registered so far with
    ``module`` (see :func:`~modify._core.sibling.sibling`); later hooks registered on either object
    are not seen by the other.

    Raises:
        TypeError: if ``module`` is not a ``torch.nn.Module``.
    """
    if isinstance(module, ModifyModule):
        return module
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected a torch.nn.Module, got {type(module).__name__}")
    return sibling(module, cls=derived_class(Opaque, type(module)), keep_hooks=True)
