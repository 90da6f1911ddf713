"""``einops.rearrange`` as a reshape/permute/reshape plan worked out once per input shape.

``einops.rearrange`` parses its pattern (cached) and rebuilds the reshapes from the input's shape
on every call, which costs more than the view ops themselves on small tensors. The plan here does
that work once per shape, with einops' own parser, then runs the same three torch ops einops runs
(each skipped where einops skips it); an unbracketed ellipsis (``"... (a b) -> ... a b"``, as
``modify.convert`` writes ``view``) stands for the leading axes the shape leaves over. Patterns with
a bracketed ellipsis, and any input that does not fit the pattern, go to ``einops.rearrange``
itself, so its errors are unchanged.
"""

from __future__ import annotations

import math

import einops
import torch
from einops.parsing import ParsedExpression

_ELLIPSIS = "…"  # how einops' parser writes "..." (unbracketed) in a composition

Plan = tuple[list[int] | None, list[int] | None, list[int] | None]


class RearrangePlan:
    """Callable ``x -> einops.rearrange(x, pattern, **axes_lengths)`` with plans cached per shape."""

    def __init__(self, pattern: str, axes_lengths: dict[str, int]):
        self.pattern, self.axes_lengths = pattern, axes_lengths
        self.plans: dict[torch.Size, Plan] = {}
        # (left, right, lengths), where the plan can be worked out: one tuple of constants, which
        # torch.compile guards as one value. rank: the input's, where the pattern fixes it.
        self.layout: tuple | None = None
        self.rank: int | None = None
        left, arrow, right = pattern.partition("->")
        try:
            parsed = ParsedExpression(left), ParsedExpression(right)
        except einops.EinopsError:
            return  # einops.rearrange raises its own error at the first call
        plain = not any(p.has_ellipsis_parenthesized for p in parsed) and parsed[0].has_ellipsis == parsed[1].has_ellipsis
        if arrow and plain:
            names = [axis for group in parsed[0].composition if group != _ELLIPSIS for axis in group]
            out = [axis for group in parsed[1].composition if group != _ELLIPSIS for axis in group]
            if sorted(names) == sorted(out) == sorted(set(names)) and set(axes_lengths) <= set(names):
                compositions = _frozen(parsed[0].composition), _frozen(parsed[1].composition)
                self.layout = (*compositions, tuple(axes_lengths.items()))
        if self.layout is not None and _ELLIPSIS not in self.layout[0]:
            self.rank = len(self.layout[0])

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        plan = self.plans.get(x.shape)
        if plan is None:
            plan = _plan(self.layout, x.shape)
            if plan is None:
                return einops.rearrange(x, self.pattern, **self.axes_lengths)
            if len(self.plans) < 32:
                self.plans[x.shape] = plan
        return _run(plan, x)

    def uncached(self, x: torch.Tensor) -> torch.Tensor:
        """The same, working the plan out afresh: what ``torch.compile`` traces.

        Dynamo then guards only the plan's few settings, not a cache, and none of einops' parsing
        (which costs some 90 guards per call site); the plan is built from the traced shape.
        """
        plan = _plan(self.layout, x.shape)
        return einops.rearrange(x, self.pattern, **self.axes_lengths) if plan is None else _run(plan, x)


def _plan(layout: tuple | None, shape: torch.Size) -> Plan | None:
    """The reshape, permutation and reshape for ``shape`` (``None`` if the layout does not fit it)."""
    if layout is None:
        return None
    left, right, lengths = layout
    spread = len(shape) - len(left) + 1  # axes that "..." stands for, when the pattern has it
    left, right = _expand(left, spread), _expand(right, spread)
    if left is None or right is None or len(shape) != len(left):
        return None
    lengths = dict(lengths)
    for group, size in zip(left, shape):
        unknown = [axis for axis in group if axis not in lengths]
        known = math.prod([lengths[axis] for axis in group if axis in lengths])
        if len(unknown) > 1 or (not unknown and known != size) or (unknown and (known == 0 or size % known)):
            return None
        if unknown:
            lengths[unknown[0]] = size // known
    elementary = [axis for group in left for axis in group]
    permutation = [elementary.index(axis) for group in right for axis in group]
    init = [lengths[axis] for axis in elementary]
    final = [math.prod([lengths[axis] for axis in group]) for group in right]
    return (
        None if all(len(group) == 1 for group in left) else init,
        None if permutation == sorted(permutation) else permutation,
        None if all(len(group) == 1 for group in right) else final,
    )


def _frozen(composition: list) -> tuple:
    return tuple(group if group == _ELLIPSIS else tuple(group) for group in composition)


def _run(plan: Plan, x: torch.Tensor) -> torch.Tensor:
    init, permutation, final = plan
    if init is not None:
        x = x.reshape(init)
    if permutation is not None:
        x = x.permute(permutation)
    return x if final is None else x.reshape(final)


def _expand(composition: tuple, spread: int) -> tuple | list | None:
    """``composition`` with einops' ellipsis marker replaced by ``spread`` one-axis groups (``None`` if negative)."""
    if _ELLIPSIS not in composition:
        return composition
    if spread < 0:
        return None
    at = composition.index(_ELLIPSIS)
    return [*composition[:at], *([f"{_ELLIPSIS}{i}"] for i in range(spread)), *composition[at + 1 :]]


def check_pattern(pattern: str, axes_lengths: dict[str, int]) -> None:
    """Refuse, naming ``Rearrange``, a pattern that ``einops.rearrange`` would refuse at its first call.

    Raises:
        ValueError: unparsable, no ``->``, an axis named on one side only, a length for an unnamed axis.
    """
    left, arrow, right = pattern.partition("->")
    try:
        sides = ParsedExpression(left), ParsedExpression(right)
    except einops.EinopsError as error:
        raise ValueError(f"Rearrange: pattern {pattern!r} is not an einops pattern ({error})") from None
    names = [{axis for axis in side.identifiers if isinstance(axis, str)} for side in sides]
    if not arrow or names[0] != names[1]:
        one_side = sorted(names[0] ^ names[1])
        raise ValueError(f"Rearrange: pattern {pattern!r} must name the same axes on both sides of '->': {one_side}")
    unknown = sorted(set(axes_lengths) - names[0])
    if unknown:
        raise ValueError(f"Rearrange: axis lengths {unknown} name no axis of pattern {pattern!r}")
