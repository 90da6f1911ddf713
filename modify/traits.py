"""Traits: marker classes that say what a module does, and their inference for combinators.

A leaf class inherits its traits as mixins (``class ReLU(Leaf, Unary, ParamFree, NonLinear,
Elementwise)``), so ``isinstance(m, modify.traits.Elementwise)`` works. Every public leaf class
has exactly one trait of each exclusive group (arity, parameters, linearity) and any number of
kinds. :func:`traits_of` answers for every module, combinators included, by inference.

| group | traits |
|---|---|
| arity (exactly one) | ``Unary`` (one tensor), ``Binary`` (tuple of 2), ``Ternary`` (tuple of 3), ``Tuple`` (any) |
| parameters (exactly one) | ``Param``, ``ParamFree`` |
| linearity (exactly one) | ``Linear`` (``f(x) = A x + b``), ``NonLinear`` |
| kind (any) | ``Restructure``, ``Elementwise``, ``Vector``, ``Matrix``, ``Reduction`` |

Example:
    >>> import modify
    >>> from modify import traits
    >>> isinstance(modify.Softmax(), traits.Vector)
    True
    >>> sorted(t.__name__ for t in traits.traits_of(modify.Sequential(modify.Linear(4, 4), modify.ReLU())))
    ['NonLinear', 'Param', 'Unary', 'Vector']
"""

from __future__ import annotations

import torch


class Trait:
    """Base of every trait. Traits carry no behaviour; they only mark classes.

    A leaf class lists its traits as mixins; ask with ``isinstance`` for a leaf, or with
    :func:`traits_of` for any module (combinators and plain ``torch.nn`` modules included).

    Example:
        >>> import modify
        >>> from modify import traits
        >>> isinstance(modify.ReLU(), traits.Elementwise), traits.Param in traits_of(modify.Linear(2, 2))
        (True, True)
    """


class Unary(Trait):
    """Takes one tensor (``ReLU``, ``Linear``); the identity-like leaves pass any value."""


class Binary(Trait):
    """Takes a tuple of two values (``Add``, ``MatMul``; a ``Parallel`` of two branches)."""


class Ternary(Trait):
    """Takes a tuple of three values (``ScaledDotProductAttention``'s ``(q, k, v)``)."""


class Tuple(Trait):
    """Takes a tuple of any length (``Cat``, ``Stack``, ``Index``)."""


class Param(Trait):
    """Holds trainable parameters (``Linear``, ``Embedding``, ``ElementwiseAffine``)."""


class ParamFree(Trait):
    """Holds no parameters; buffers allowed (``ReLU``; ``BatchNorm2d``'s running statistics)."""


class Linear(Trait):
    """Affine in its input: ``f(x) = A x + b`` (``modify.Linear``, ``Conv2d``, ``Add``, ``Transpose``).

    The trait, not the layer: ``modify.traits.Linear`` marks every affine module, combinators
    included, while ``modify.Linear`` is the ``torch.nn.Linear``-like layer.
    """


class NonLinear(Trait):
    """Not affine in its input (``ReLU``, ``LayerNorm``, ``Mul``, ``Embedding``)."""


class Restructure(Trait):
    """Moves values around without arithmetic: view, reshape, permute, split, cat, copy."""


class Elementwise(Trait):
    """Acts on each element independently (``ReLU``, ``Scale``, ``Add``)."""


class Vector(Trait):
    """Acts on each vector of the last dimension independently (softmax, layer norm, ``Linear``)."""


class Matrix(Trait):
    """Acts on each matrix of the last two dimensions independently (``MatMul``, attention, pooling)."""


class Reduction(Trait):
    """Reduces dimensions (sum, mean, max, pooling)."""


ARITY = (Unary, Binary, Ternary, Tuple)
PARAMETERS = (Param, ParamFree)
LINEARITY = (Linear, NonLinear)
KIND = (Restructure, Elementwise, Vector, Matrix, Reduction)
EXCLUSIVE_GROUPS = (ARITY, PARAMETERS, LINEARITY)

_class_cache: dict[type, frozenset[type]] = {}


def class_traits(cls: type) -> frozenset[type]:
    """The traits a class inherits (cached per class)."""
    found = _class_cache.get(cls)
    if found is None:
        found = frozenset(
            t for t in cls.__mro__ if issubclass(t, Trait) and t is not Trait and not issubclass(t, torch.nn.Module)
        )
        _class_cache[cls] = found
    return found


def traits_of(module: torch.nn.Module) -> frozenset[type]:
    """The traits of any module: inherited for leaves, inferred for combinators.

    A ``Sequential`` takes the arity of its first child, is ``Param`` iff any child is,
    ``Linear`` iff every child is, ``NonLinear`` iff some child is (neither when a child is an
    undocumented ``torch.nn`` module), and has the kinds all its children share. Scopes nest
    (``Elementwise`` implies acting per vector, ``Vector`` per matrix), so children that all
    have a scope give the coarsest one: ``Linear``, ``ReLU``, ``Linear`` is ``Vector``. A
    ``Parallel`` of 2 (3) branches is ``Binary`` (``Ternary``), of any other count ``Tuple``.

    A leaf whose scope depends on its arguments answers for the instance: ``Softmax(dim=0)`` is
    not ``Vector`` and ``LayerNorm((4, 5))`` is ``Matrix``, although both classes are ``Vector``.
    A plain ``torch.nn`` module gets the traits documented for its class where known
    (``nn.ReLU`` is ``Unary``/``ParamFree``/``NonLinear``/``Elementwise``), else only
    ``Param``/``ParamFree``.

    Args:
        module: any ``torch.nn.Module``.

    Returns:
        ``frozenset`` of trait classes from this module.

    Raises:
        TypeError: if ``module`` is not a ``torch.nn.Module``.

    Example:
        >>> import modify
        >>> from modify import traits
        >>> m = modify.Sequential(modify.Linear(4, 4), modify.Scale(2.0))
        >>> sorted(t.__name__ for t in traits_of(m))
        ['Linear', 'Param', 'Unary', 'Vector']
        >>> traits.Binary in traits_of(modify.Parallel(modify.ReLU(), modify.Exp()))
        True
    """
    if not isinstance(module, torch.nn.Module):
        raise TypeError(f"traits_of expects a torch.nn.Module, got {type(module).__name__}")
    from ._core.module import ModifyModule
    from ._core.opaque import torch_traits

    if isinstance(module, ModifyModule):
        return module._infer_traits()
    return torch_traits(module)


def combine_sequence(children: list[frozenset[type]], has_own_params: bool = False) -> frozenset[type]:
    """Traits of a composition: arity of the first, Linear iff all, Param iff any, shared kinds."""
    if not children:
        return frozenset({Unary, ParamFree, Linear})
    found: set[type] = set(a for a in ARITY if a in children[0])
    found |= _shared(children, has_own_params)
    return frozenset(found)


def combine_parallel(children: list[frozenset[type]], has_own_params: bool = False) -> frozenset[type]:
    """Traits of side-by-side branches: arity from the branch count, Linear iff all, shared kinds."""
    arity = {2: Binary, 3: Ternary}.get(len(children), Tuple)
    return frozenset({arity} | _shared(children, has_own_params))


def _shared(children: list[frozenset[type]], has_own_params: bool) -> set[type]:
    found: set[type] = set()
    found.add(Param if has_own_params or any(Param in c for c in children) else ParamFree)
    if children and all(Linear in c for c in children):
        found.add(Linear)
    elif children and any(NonLinear in c for c in children):
        found.add(NonLinear)
    elif not children:
        found.add(Linear)
    found |= {k for k in KIND if children and all(k in c for c in children)}
    found |= _coarsest_scope(children)
    return found


# Each scope implies the next: an op on each element acts on each vector, and on each matrix.
_SCOPES = (Elementwise, Vector, Matrix)


def _coarsest_scope(children: list[frozenset[type]]) -> set[type]:
    """``{Vector}`` for ``ReLU`` then ``Linear`` (both act per vector), and so on up to ``Matrix``."""
    levels = [max((i for i, t in enumerate(_SCOPES) if t in c), default=None) for c in children]
    if not levels or None in levels:
        return set()
    return {_SCOPES[max(levels)]}
