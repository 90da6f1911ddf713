"""Trait inference: what :func:`modify.traits_of` answers for any module.

A leaf answers with the trait classes it inherits (:func:`class_traits`); a combinator combines
its children's answers (:func:`combine_sequence`, :func:`combine_parallel`); a plain
``torch.nn`` module gets the traits documented for its class in :data:`KNOWN`, refined for the
instance (``nn.Softmax(dim=0)`` is not ``Vector``, ``nn.LayerNorm((3, 4))`` is ``Matrix``) and
with ``Param``/``ParamFree`` read off its parameters (:func:`torch_traits`).

This module sits just above the trait markers: it imports nothing else from ``modify``, and
``ModifyModule`` derives from :class:`Traited` to answer for itself.
"""

from __future__ import annotations

from torch import nn

from ..traits import (
    ARITY,
    KIND,
    Binary,
    Elementwise,
    Linear,
    Matrix,
    NonLinear,
    Param,
    ParamFree,
    Reduction,
    Restructure,
    Ternary,
    Trait,
    Tuple,
    Unary,
    Vector,
)

_ELEMENTWISE_ACTIVATIONS = (
    nn.CELU, nn.ELU, nn.GELU, nn.Hardshrink, nn.Hardsigmoid, nn.Hardswish, nn.Hardtanh, nn.LeakyReLU,
    nn.LogSigmoid, nn.Mish, nn.PReLU, nn.ReLU, nn.ReLU6, nn.RReLU, nn.SELU, nn.SiLU, nn.Sigmoid,
    nn.Softplus, nn.Softshrink, nn.Softsign, nn.Tanh, nn.Tanhshrink, nn.Threshold,
)
_IDENTITY_LIKE = (nn.Identity, nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout,
                  nn.FeatureAlphaDropout)
# Along ``self.dim``: each vector of the last dimension when ``dim == -1``.
_ALONG_DIM = (nn.Softmax, nn.LogSoftmax, nn.Softmin, nn.GLU)
# Over ``self.normalized_shape``: the trailing axes.
_TRAILING = (nn.LayerNorm, nn.RMSNorm)
# Normalising across channels or over three axes: no kind (``Softmax2d`` normalises channels).
_ACROSS_CHANNELS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d, nn.SyncBatchNorm, nn.GroupNorm,
                    nn.InstanceNorm3d, nn.LocalResponseNorm, nn.CrossMapLRN2d, nn.Softmax2d)
# Pooling by dimensions pooled: 1 acts on each vector, 2 on each matrix, 3 on neither.
_SCOPE_OF_DIMS = {1: (Vector,), 2: (Matrix,), 3: ()}
_MAX_POOLS = {1: (nn.MaxPool1d, nn.AdaptiveMaxPool1d, nn.LPPool1d),
              2: (nn.MaxPool2d, nn.AdaptiveMaxPool2d, nn.LPPool2d, nn.FractionalMaxPool2d),
              3: (nn.MaxPool3d, nn.AdaptiveMaxPool3d, nn.LPPool3d, nn.FractionalMaxPool3d)}
_AVG_POOLS = {1: (nn.AvgPool1d, nn.AdaptiveAvgPool1d), 2: (nn.AvgPool2d, nn.AdaptiveAvgPool2d),
              3: (nn.AvgPool3d, nn.AdaptiveAvgPool3d)}
_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)

#: Documented traits of ``torch.nn`` classes: subclasses inherit them, a ``Lazy*`` layer takes
#: those of the class it turns into; ``Param``/``ParamFree`` are read off each instance.
KNOWN: dict[type, tuple[type, ...]] = {
    **{cls: (Unary, NonLinear, Elementwise) for cls in _ELEMENTWISE_ACTIVATIONS},
    **{cls: (Unary, Linear, Elementwise) for cls in _IDENTITY_LIKE},
    **{cls: (Unary, NonLinear, Vector) for cls in (*_ALONG_DIM, *_TRAILING)},
    **{cls: (Unary, NonLinear) for cls in _ACROSS_CHANNELS},
    nn.InstanceNorm1d: (Unary, NonLinear, Vector),
    nn.InstanceNorm2d: (Unary, NonLinear, Matrix),
    **{cls: (Unary, NonLinear, Reduction, *_SCOPE_OF_DIMS[d]) for d, group in _MAX_POOLS.items() for cls in group},
    **{cls: (Unary, Linear, Reduction, *_SCOPE_OF_DIMS[d]) for d, group in _AVG_POOLS.items() for cls in group},
    nn.Linear: (Unary, Linear, Vector),
    nn.Bilinear: (Binary, NonLinear, Vector),
    **{cls: (Unary, Linear) for cls in _CONVS},
    nn.Embedding: (Unary, NonLinear),
    nn.EmbeddingBag: (Unary, NonLinear, Reduction),
    nn.Flatten: (Unary, Linear, Restructure),
    nn.Unflatten: (Unary, Linear, Restructure),
}

_class_cache: dict[type, frozenset[type]] = {}


def class_traits(cls: type) -> frozenset[type]:
    """The trait classes ``cls`` inherits (cached per class)."""
    found = _class_cache.get(cls)
    if found is None:
        found = frozenset(
            t for t in cls.__mro__ if issubclass(t, Trait) and t is not Trait and not issubclass(t, nn.Module)
        )
        _class_cache[cls] = found
    return found


class Traited:
    """Mixin of the modules that answer :func:`traits_of` themselves (every ``ModifyModule``).

    The answer is the trait classes the class inherits; a subclass whose answer depends on the
    instance (a combinator, ``Softmax(dim=0)``) overrides ``_infer_traits``.
    """

    def _infer_traits(self) -> frozenset[type]:
        return class_traits(type(self))


def traits_of(module: nn.Module) -> frozenset[type]:
    """The traits of any module: inherited for leaves, inferred for combinators.

    A ``Sequential`` takes the arity of its first child, is ``Param`` iff any child is,
    ``Linear`` iff every child is, ``NonLinear`` iff some child is (neither when a child is an
    undocumented ``torch.nn`` module), and has the kinds all its children share. Scopes nest
    (``Elementwise`` implies acting per vector, ``Vector`` per matrix), so children that all
    have a scope give the coarsest one: ``Linear``, ``ReLU``, ``Linear`` is ``Vector``. A
    ``Parallel`` of 2 (3) branches is ``Binary`` (``Ternary``), of any other count ``Tuple``.

    A leaf whose scope depends on its arguments answers for the instance: ``Softmax(dim=0)`` is
    not ``Vector`` and ``LayerNorm((4, 5))`` is ``Matrix``, although both classes are ``Vector``.
    A plain ``torch.nn`` module gets the traits documented for its class where known (every
    activation, normalisation, pooling, dropout, linear, convolution and embedding class:
    ``nn.ReLU`` is ``Unary``/``ParamFree``/``NonLinear``/``Elementwise``), else only
    ``Param``/``ParamFree``. Wrapped in a combinator, it answers the same to ``isinstance``.

    Args:
        module: any ``torch.nn.Module``.

    Returns:
        ``frozenset`` of trait classes from :mod:`modify.traits`.

    Raises:
        TypeError: if ``module`` is not a ``torch.nn.Module``.

    Example:
        >>> import modify
        >>> from modify import traits
        >>> m = modify.Sequential(modify.Linear(4, 4), modify.Scale(2.0))
        >>> sorted(t.__name__ for t in modify.traits_of(m))
        ['Linear', 'Param', 'Unary', 'Vector']
        >>> traits.Binary in modify.traits_of(modify.Parallel(modify.ReLU(), modify.Exp()))
        True
    """
    if isinstance(module, Traited):
        return module._infer_traits()
    if not isinstance(module, nn.Module):
        raise TypeError(f"traits_of expects a torch.nn.Module, got {type(module).__name__}")
    return torch_traits(module)


def torch_traits(module: nn.Module) -> frozenset[type]:
    """Traits of a plain ``torch.nn`` module: documented for its class, refined for the instance.

    ``Param``/``ParamFree`` come from the instance's parameters unless its class declares one.
    """
    own = class_traits(type(module))
    documented = next((KNOWN[c] for c in _documented_as(type(module)).__mro__ if c in KNOWN), ())
    found = set(own) | set(_for_instance(module, documented))
    if not own & {Param, ParamFree}:
        found.add(Param if next(module.parameters(), None) is not None else ParamFree)
    return frozenset(found)


def _documented_as(cls: type) -> type:
    """The class whose documented traits apply: a ``Lazy*`` layer's future class, else ``cls``."""
    return getattr(cls, "cls_to_become", None) or cls


def _for_instance(module: nn.Module, documented: tuple[type, ...]) -> tuple[type, ...]:
    if isinstance(module, _ALONG_DIM) and module.dim != -1:
        return tuple(t for t in documented if t is not Vector)
    if isinstance(module, _TRAILING):
        scope = _SCOPE_OF_DIMS.get(len(module.normalized_shape), ())
        return (*(t for t in documented if t is not Vector), *scope)
    return documented


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
