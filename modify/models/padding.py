"""Padded batches as a value: the leaves that carry an attention mask beside the hidden states.

A padded batch enters a language model as ``(ids, attention_mask)``. :class:`TokenInput` turns
either input form into ``(ids, positions, mask)``; from there the mask (and, for rotary models,
the positions) travel beside the hidden states as elements of the tuples that ``Sequential`` and
``Parallel`` pass: :class:`Pick` fans a stream out and regroups it, ``Parallel(Identity(), ...)``
carries the extra elements past a branch, and :class:`CarryAdd` closes a residual connection.
No module holds the mask and no global does, so ``select`` and every rewriter see a plain tree
whose ``Linear`` leaves still receive plain tensors. Positions follow transformers' ``generate``:
``p = cumsum(mask) - 1``, clamped at 0 on padding.
"""

from __future__ import annotations

from operator import itemgetter

import torch

from .._core.arguments import typechecked
from .._core.checks import checks_enabled, expect_tensors, expect_tuple, is_dynamo_compiling
from .._core.errors import ModifyTypeError, ModifyValueError, describe
from .._core.module import Leaf
from ..traits import Linear, ParamFree, Restructure, Tuple, Unary

# The mask element of an unpadded batch: no key is padding (attention stays plainly causal).
NO_PADDING_SHAPE = (0,)


def no_padding(like: torch.Tensor) -> torch.Tensor:
    """The empty bool tensor that stands for "no padding" in the mask slot of a stream."""
    return torch.ones(NO_PADDING_SHAPE, dtype=torch.bool, device=like.device)


def positions_from_mask(mask: torch.Tensor, start: torch.Tensor | int = 0) -> torch.Tensor:
    """``(B, T)`` bool mask -> ``(B, T)`` int64 positions ``start + cumsum(mask) - 1``, at least ``start``."""
    counts = mask.long().cumsum(-1)
    start = start[:, None] if isinstance(start, torch.Tensor) else start
    return (counts - 1).clamp(min=0) + start


class TokenInput(Leaf, Unary, ParamFree, Linear, Restructure):
    """The entry of a language model: ``ids`` or ``(ids, attention_mask)`` -> ``(ids, positions, mask)``.

    Checks the input's form at the model's door (a 1-d tensor of ids fails here, by name, not
    deep inside) and derives each row's positions from its mask as transformers' ``generate``
    derives ``position_ids``: ``p = cumsum(mask) - 1``, clamped at 0 (padding on the left or the
    right). Plain ``ids`` get positions ``0 .. T-1`` (a view, no memory) and an empty mask that
    means "no padding", so an unpadded batch runs exactly as before.

    Args:
        limit: the number of positions the model has (``block_size``); a longer ``T`` raises.

    Shape:
        ``(B, T)`` integer ids, or ``((B, T) ids, (B, T) mask)`` with a bool or integer mask (1: a
        token, 0: padding) -> ``((B, T) ids, (B, T) int64 positions, mask)``, the mask ``(B, T)``
        bool or, for plain ids, empty ``(0,)``.

    Raises:
        TypeError: ``limit`` not an int.
        ModifyTypeError: (at call) neither a tensor nor a pair of tensors; ids that are not
            integers; a mask that is neither bool nor integer.
        ModifyValueError: (at call) ids that are not ``(B, T)``; a mask of another shape;
            ``T > limit``.

    Example:
        >>> import torch
        >>> from modify.models import TokenInput
        >>> ids, mask = torch.tensor([[0, 0, 7, 8], [5, 6, 7, 8]]), torch.tensor([[0, 0, 1, 1], [1, 1, 1, 1]])
        >>> _, positions, padded = TokenInput()((ids, mask))
        >>> positions.tolist(), padded.dtype
        ([[0, 0, 0, 1], [0, 1, 2, 3]], torch.bool)
        >>> TokenInput()(ids)[2].shape  # plain ids: no padding
        torch.Size([0])
    """

    @typechecked
    def __init__(self, limit: int | None = None):
        super().__init__()
        if limit is not None and limit < 1:
            raise ValueError(f"TokenInput limit must be at least 1, got {limit}")
        self.limit = limit

    def forward(self, x):
        if isinstance(x, torch.Tensor):
            ids = self.check_ids(x, x)
            positions = torch.arange(ids.shape[-1], device=ids.device).expand(ids.shape)
            return ids, positions, no_padding(ids)
        ids, mask = expect_tensors(self, x, 2)
        ids = self.check_ids(ids, x)
        return ids, positions_from_mask(self.check_mask(ids, mask, x)), mask.bool()

    def check_ids(self, ids: torch.Tensor, x: object) -> torch.Tensor:
        """``ids`` after checking it is ``(B, T)`` integers with ``T <= limit``."""
        if is_dynamo_compiling():
            return ids
        integers = not (ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool)
        if integers and ids.dim() == 2 and (self.limit is None or ids.shape[1] <= self.limit) or not checks_enabled():
            return ids
        x = x if isinstance(x, torch.Tensor) else ids  # name the ids themselves
        if ids.is_floating_point() or ids.is_complex() or ids.dtype == torch.bool:
            raise ModifyTypeError(self, f"expected integer token ids (B, T), got {describe(x)}")
        if ids.dim() != 2 or (self.limit is not None and ids.shape[1] > self.limit):
            limit = "" if self.limit is None else f" with T <= {self.limit}"
            raise ModifyValueError(self, f"expected token ids of shape (B, T){limit} or (ids, attention_mask), "
                                   f"got {describe(x)}")
        return ids

    def check_mask(self, ids: torch.Tensor, mask: torch.Tensor, x: object) -> torch.Tensor:
        """``mask`` as bool after checking it is a ``(B, T)`` bool or integer mask of the ids' shape."""
        if checks_enabled():
            got = f"got ids {describe(ids)} and attention_mask {describe(mask)}"
            if mask.is_floating_point() or mask.is_complex():
                raise ModifyTypeError(self, f"expected a bool or integer attention_mask, {got}")
            if mask.shape != ids.shape:
                raise ModifyValueError(self, f"expected an attention_mask of the ids' shape (B, T), {got}")
        return mask.bool()

    def extra_repr(self) -> str:
        return f"limit={self.limit}" if self.limit is not None else ""


class Pick(Leaf, Tuple, ParamFree, Linear, Restructure):
    """Build a tuple from the elements of a tuple value: fan out, drop and regroup.

    Each item of ``spec`` says what goes in that slot of the output: an ``int`` is element ``i``
    of the input, a dotted ``str`` ``"i.j"`` is element ``j`` of element ``i``, and a ``tuple`` of
    items is a nested tuple built the same way. Values are passed as they are (no copies).

    Args:
        *spec: the items, as above.

    Shape:
        ``(x_0, ..., x_{n-1})`` -> the tuple ``spec`` describes, e.g. ``Pick(0, 0, 1)``:
        ``(h, mask) -> (h, h, mask)``; ``Pick(0, ("1.0", 2), 2)``: ``(h, (q, k), m) -> (h, (q, m), m)``.

    Raises:
        TypeError: an item that is not an int, a dotted str of ints or a tuple of items.
        ModifyTypeError: (at call) an input that is not a tuple where an item indexes it.
        ModifyValueError: (at call) an index the input does not have.

    Example:
        >>> import torch
        >>> from modify.models import Pick
        >>> h, q, m = torch.zeros(1), torch.ones(1), torch.full((1,), 2.0)
        >>> out = Pick(0, ("1.0", 2), 2)((h, (q,), m))
        >>> out[0] is h, out[1][0] is q, out[1][1] is m, out[2] is m
        (True, True, True, True)
    """

    def __init__(self, *spec: int | str | tuple):
        super().__init__()
        self.spec = tuple(_parse(item) for item in spec)
        self._text = ", ".join(map(repr, spec))
        # A flat spec of two or more ints is one C call (``operator.itemgetter``) on a long enough tuple
        # (in eager mode: dynamo does not trace an itemgetter).
        flat = all(isinstance(item, int) for item in spec) and len(spec) > 1
        self._flat = itemgetter(*spec) if flat else None
        self._needs = max((i + 1 if i >= 0 else -i for i in spec), default=0) if flat else 0

    def forward(self, x):
        expect_tuple(self, x)
        if not is_dynamo_compiling() and self._flat is not None and isinstance(x, tuple) and len(x) >= self._needs:
            return self._flat(x)
        return self._build(self.spec, x)

    def line_expression(self, writer, value: str) -> str:
        """A flat spec's ``itemgetter`` on a tuple, else ``forward`` (see :mod:`modify._core.straight_line`)."""
        me = writer.name(self)
        if self._flat is not None:
            return f"({me}._flat({value}) if {value}.__class__ is tuple else {me}.forward({value}))"
        indexed: set[tuple[int, ...]] = set()  # the paths indexed into: each must be a tuple

        def build(spec: tuple) -> str:
            parts = []
            for kind, item in spec:
                if kind == "group":
                    parts.append(build(item))
                    continue
                indexed.update(item[:depth] for depth in range(len(item)))
                parts.append(value + "".join(f"[{index}]" for index in item))
            return f"({', '.join(parts)},)" if parts else "()"

        picked = build(self.spec)
        tuples = " and ".join(f"{value}{''.join(f'[{i}]' for i in path)}.__class__ is tuple" for path in sorted(indexed))
        return f"({picked} if {tuples or 'True'} else {me}.forward({value}))"

    def _build(self, spec: tuple, x: tuple) -> tuple:
        return tuple(self._build(item[1], x) if item[0] == "group" else self._take(item[1], x) for item in spec)

    def _take(self, path: tuple[int, ...], x: object) -> object:
        for index in path:
            if (not isinstance(x, tuple) or not -len(x) <= index < len(x)) and checks_enabled():
                raise ModifyValueError(self, f"has no element {'.'.join(map(str, path))} in {describe(x)}")
            x = x[index]
        return x

    def extra_repr(self) -> str:
        return self._text


def _parse(item: object) -> tuple[str, tuple]:
    """A spec item as ``("take", path)`` or ``("group", items)``."""
    if isinstance(item, int) and not isinstance(item, bool):
        return "take", (item,)
    if isinstance(item, str) and all(part.lstrip("-").isdigit() for part in item.split(".")):
        return "take", tuple(int(part) for part in item.split("."))
    if isinstance(item, tuple):
        return "group", tuple(_parse(inner) for inner in item)
    raise TypeError(f"Pick: an item must be an int, a dotted str of ints or a tuple of items, got {item!r}")


class CarryAdd(Leaf, Tuple, ParamFree, Linear):
    """Add the first two elements and carry the rest: ``(x, y, *rest) -> (x + y, *rest)``.

    Closes a residual connection whose stream carries extra values (a padded batch's mask and
    positions) past the branch.

    Shape:
        ``((*), (*), ...) -> ((*), ...)``: ``x`` and ``y`` of one shape.

    Raises:
        ModifyTypeError: (at call) not a tuple, or its first two elements are not tensors.
        ModifyValueError: (at call) fewer than two elements, or ``x`` and ``y`` of different shapes.

    Example:
        >>> import torch
        >>> from modify.models import CarryAdd
        >>> h, mask = torch.ones(2, 3), torch.ones(2, dtype=torch.bool)
        >>> out = CarryAdd()((h, h, mask))
        >>> out[0].tolist()[0], out[1] is mask
        ([2.0, 2.0, 2.0], True)
    """

    def forward(self, x):
        values = expect_tuple(self, x)
        addable = (
            isinstance(values, tuple) and len(values) >= 2 and isinstance(values[0], torch.Tensor)
            and isinstance(values[1], torch.Tensor) and values[0].shape == values[1].shape
        )  # fmt: skip
        if not addable and checks_enabled():
            if len(values) < 2:
                raise ModifyValueError(self, f"expected (x, y, *rest), got {describe(x)}")
            expect_tensors(self, values[:2], 2)
            raise ModifyValueError(self, f"got x and y of different shapes, {describe(x)}")
        return (values[0] + values[1], *values[2:])

    def line_expression(self, writer, value: str) -> str:
        """The sum on a tuple whose first two elements have one shape, else ``forward`` (see
        :mod:`modify._core.straight_line`): nothing is broadcast."""
        v, me = value, writer.name(self)
        fits = f"{v}.__class__ is tuple and {v}[0].shape == {v}[1].shape"
        return f"(({v}[0] + {v}[1], *{v}[2:]) if {fits} else {me}.forward({v}))"
