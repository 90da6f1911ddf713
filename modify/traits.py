"""Traits: marker classes that say what a module does.

A leaf class inherits its traits as mixins (``class ReLU(Leaf, Unary, ParamFree, NonLinear,
Elementwise)``), so ``isinstance(m, modify.traits.Elementwise)`` works. Every public leaf class
has exactly one trait of each exclusive group (arity, parameters, linearity) and any number of
kinds. :func:`modify.traits_of` answers for every module, combinators included, by inference.

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
    >>> sorted(t.__name__ for t in modify.traits_of(modify.Sequential(modify.Linear(4, 4), modify.ReLU())))
    ['NonLinear', 'Param', 'Unary', 'Vector']
"""

from __future__ import annotations


class Trait:
    """Base of every trait. Traits carry no behaviour; they only mark classes.

    A leaf class lists its traits as mixins; ask with ``isinstance`` for a leaf, or with
    :func:`modify.traits_of` for any module (combinators and plain ``torch.nn`` modules included).

    Example:
        >>> import modify
        >>> from modify import traits
        >>> isinstance(modify.ReLU(), traits.Elementwise), traits.Param in modify.traits_of(modify.Linear(2, 2))
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
