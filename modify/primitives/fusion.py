"""The fusion rules: which two neighbouring leaves compute as one, in one table.

Two readers share it. :func:`modify.fuse` replaces each fitting pair inside a plain ``Sequential``
by the rule's fused leaf (``build``); ``Sequential.forward`` runs a two-child ``Sequential`` whose
children fit a rule with a call-time form (``run``) in one call, keeping the two leaves in the
tree, wherever nothing could observe the difference (the combinator decides that): looping
(:func:`run_fused`) or written into a tree's straight-line function (:func:`write_fused`). A leaf
joins a rule by its class, never by a special case in either reader.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from dataclasses import dataclass

from torch import nn

from .._core.errors import annotate
from .._core.hooks import unhooked
from .._core.straight_line import LineWriter
from .arithmetic import Scale
from .fused import AffineGroupNorm, AffineLayerNorm, AffineRMSNorm, ScaledLinear
from .linear import Linear
from .norms import ElementwiseAffine, GroupNorm, LayerNorm, RMSNorm

FIRST, SECOND = 0, 1


@dataclass(frozen=True)
class Fusion:
    """One rule: the classes of a pair, when it fits, and what it becomes.

    Args:
        pairs: the exact ``(type(first), type(second))`` pairs the rule looks at.
        fits: ``fits(first, second)``: whether this pair (its settings, not only its classes) fuses.
        build: ``build(first, second)``: the fused leaf, holding the pair's parameter objects.
        named_as: ``FIRST`` or ``SECOND``: whose name the fused leaf takes (the one with parameters).
        run: ``run(first, second, x)``: the pair's output in one call, or ``None`` where this input
            needs the two leaves (another dtype); ``None`` for a rule only :func:`modify.fuse` applies.
        line: ``line(writer, first, second, value)``: ``run`` without its checks, as one expression
            for a straight-line function (:mod:`modify._core.straight_line`), or ``None``.
    """

    pairs: tuple[tuple[type, type], ...]
    fits: Callable[[nn.Module, nn.Module], bool]
    build: Callable[[nn.Module, nn.Module], nn.Module]
    named_as: int
    run: Callable[[nn.Module, nn.Module, object], object] | None = None
    line: Callable[[LineWriter, nn.Module, nn.Module, str], str] | None = None


def _scales(first: Scale, second: Scale) -> bool:
    return True


RULES: tuple[Fusion, ...] = (
    Fusion(((LayerNorm, ElementwiseAffine),), AffineLayerNorm.fits, AffineLayerNorm.from_pair, SECOND,
           AffineLayerNorm.run_pair, AffineLayerNorm.pair_expression),
    Fusion(((RMSNorm, ElementwiseAffine),), AffineRMSNorm.fits, AffineRMSNorm.from_pair, SECOND,
           AffineRMSNorm.run_pair, AffineRMSNorm.pair_expression),
    Fusion(((GroupNorm, ElementwiseAffine),), AffineGroupNorm.fits, AffineGroupNorm.from_pair, SECOND),
    Fusion(((Linear, Scale), (ScaledLinear, Scale)), ScaledLinear.fits, ScaledLinear.from_pair, FIRST),
    Fusion(((Scale, Scale),), _scales, lambda a, b: Scale(a.c * b.c), FIRST),
)

_BY_CLASSES = {pair: rule for rule in RULES for pair in rule.pairs}
#: The rules with a call-time form, by the classes of the pair (read by :func:`run_fused` and :func:`write_fused`).
CALL_TIME = {pair: rule for pair, rule in _BY_CLASSES.items() if rule.run is not None}


def rule_for(first: nn.Module, second: nn.Module) -> Fusion | None:
    """The rule that fuses ``first`` then ``second``, or ``None``.

    Args:
        first, second: neighbouring children of a ``Sequential``, in order.

    Returns:
        The :class:`Fusion` whose classes and ``fits`` accept the pair, else ``None``.

    Example:
        >>> import modify
        >>> from modify.primitives.fusion import rule_for
        >>> rule_for(modify.LayerNorm(4), modify.ElementwiseAffine(4)).build.__self__.__name__
        'AffineLayerNorm'
        >>> rule_for(modify.LayerNorm(4), modify.ElementwiseAffine(3)) is None
        True
    """
    rule = _BY_CLASSES.get((type(first), type(second)))
    return rule if rule is not None and rule.fits(first, second) else None


def call_time_rule(first: nn.Module, second: nn.Module) -> Fusion | None:
    """The rule with a call-time form that fits ``first`` then ``second``, or ``None``.

    The one lookup of the call-time readers: a looping ``Sequential`` (:func:`run_fused`), a
    straight-line function (:func:`write_fused`) and a flat program (:mod:`modify.flat_program`).
    """
    rule = CALL_TIME.get((type(first), type(second)))
    return rule if rule is not None and rule.fits(first, second) else None


def run_fused(children: dict[str, nn.Module], x: object) -> object | None:
    """Two children's output in one call by their call-time rule, or ``None`` (no rule, hooks, another dtype).

    The call-time reader of the table for a looping ``Sequential`` where nothing global observes
    calls; an error names the first child, as the ``Sequential`` would.
    """
    (name, first), (_, second) = children.items()
    rule = call_time_rule(first, second)
    if rule is None or not (unhooked(first) and unhooked(second)):
        return None
    try:
        return rule.run(first, second, x)
    except Exception as error:
        annotate(error, name, first)
        raise


def write_fused(writer: LineWriter, children: dict[str, nn.Module], value: str, path: tuple[str, ...]) -> str | None:
    """:func:`run_fused` written into a straight-line function (both leaves where the rule declines).

    Returns the variable holding the output, or ``None`` where no rule fits the two children.
    """
    (name, first), (second_name, second) = children.items()
    rule = call_time_rule(first, second)
    if rule is None:
        return None
    if rule.line is None:
        run = f"{writer.name(rule.run)}({writer.name(first)}, {writer.name(second)}, {value})"
        out = writer.call(run, (*path, name), first)
    else:
        checked = writer.name(functools.partial(rule.run, first, second))
        out = writer.call(rule.line(writer, first, second, value), (*path, name), first, checked=checked, value=value)
    writer.line(f"if {out} is None:")
    with writer.indented():
        middle = writer.write(first, value, (*path, name))
        last = writer.write(second, middle, (*path, second_name))
        writer.line(f"{out} = {last}")
        writer.line(f"del {', '.join(sorted({middle, last} - {value}))}")
    return out
