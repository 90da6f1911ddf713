"""Values as they flow: ``Identity``, ``Copy``, ``Index`` into a tuple, and ``Positions``."""

from __future__ import annotations

import torch

from .._core.arguments import typechecked
from .._core.checks import checks_enabled, expect_tensor, expect_tuple, expect_value, is_dynamo_compiling
from .._core.errors import ModifyValueError, describe
from .._core.module import Leaf
from ..traits import Elementwise, Linear, ParamFree, Restructure, Tuple, Unary


class Identity(Leaf, Unary, ParamFree, Linear, Elementwise):
    """Return the input unchanged: ``x -> x``, as ``torch.nn.Identity``.

    Passes any value through as the very same object, a tensor or a (nested) tuple: it is tagged
    ``Unary`` like the other identity-like leaves (``Dropout``, ``Print``, ``PrintShape``,
    ``Breakpoint``) but checks nothing. Takes no arguments and never raises.

    Shape:
        Any value -> the same value; for a tensor ``(*) -> (*)``, e.g. ``(B, T, C) -> (B, T, C)``.

    Example:
        >>> import torch, modify
        >>> modify.Identity()(torch.ones(2)).tolist()
        [1.0, 1.0]
        >>> pair = (torch.zeros(1), torch.ones(1))
        >>> modify.Identity()(pair) is pair
        True
    """

    passes_through = True

    def forward(self, x):
        return x


class Copy(Leaf, Unary, ParamFree, Linear, Restructure):
    """Copy one value into a tuple of ``n`` references to it: ``x -> (x, ..., x)``.

    No memory is copied: every element is the input object itself. Any value (a tensor or a
    nested tuple of tensors) may be copied; anything else (``None``, a list, a dict) is refused.
    The first step of :class:`~modify.Fork` and :class:`~modify.Residual`.

    Args:
        n: number of copies, at least 1.

    Shape:
        ``(*) -> ((*), ..., (*))`` with ``n`` elements, e.g. ``Copy(3)``:
        ``(B, T, C) -> ((B, T, C), (B, T, C), (B, T, C))``.

    Raises:
        TypeError: ``n`` not an int.
        ValueError: if ``n < 1``.
        ModifyTypeError: the input is not a value (a tensor or nested tuple of tensors).

    Example:
        >>> import torch, modify
        >>> a, b = modify.Copy(2)(torch.ones(3))
        >>> a is b
        True
    """

    @typechecked
    def __init__(self, n: int):
        super().__init__()
        if n < 1:
            raise ValueError(f"Copy needs n >= 1, got {n}")
        self.n = n

    def forward(self, x):
        if not isinstance(x, torch.Tensor):  # a tuple: checked whole (a tensor needs no check)
            x = expect_value(self, x)
        return (x,) * self.n

    def extra_repr(self) -> str:
        return f"n={self.n}"


class Positions(Leaf, Unary, ParamFree, Linear):
    """Replace every element by its position along the last axis: ``x -> arange(T)`` broadcast.

    Feeds a learned position embedding from the token ids themselves, so that GPT's input
    stage is pure algebra: ``Fork(Embedding(vocab, C), Sequential(Positions(), Embedding(T_max, C)))``
    followed by ``Add()`` (Radford et al. 2019, GPT-2; nanoGPT's ``pos = torch.arange(0, t)``).
    The output depends on the input's shape only, never its values (a constant map, hence
    tagged ``Linear``).

    Args:
        limit: when given, the number of positions available (``block_size``): a longer
            sequence raises instead of indexing past the position table.

    Shape:
        ``(*, T)`` any dtype -> ``(*, T)`` int64 on the input's device (an expanded view of
        ``arange(T)``; no memory per batch element).

    Raises:
        ModifyValueError: ``T > limit``, or a 0-d input.

    Example:
        >>> import torch
        >>> import modify
        >>> modify.Positions()(torch.tensor([[7, 3, 9], [1, 1, 1]])).tolist()
        [[0, 1, 2], [0, 1, 2]]
    """

    @typechecked
    def __init__(self, limit: int | None = None):
        super().__init__()
        if limit is not None and limit < 1:
            raise ValueError(f"Positions limit must be at least 1, got {limit}")
        self.limit = limit

    def forward(self, x):
        x = expect_tensor(self, x)
        if checks_enabled() and (x.dim() == 0 or (self.limit is not None and x.shape[-1] > self.limit)):
            raise ModifyValueError(self, f"expected (*, T) with T <= {self.limit}, got {describe(x)}")
        return torch.arange(x.shape[-1], device=x.device).expand(x.shape)

    def extra_repr(self) -> str:
        return f"limit={self.limit}" if self.limit is not None else ""


class Index(Leaf, Tuple, ParamFree, Linear, Restructure):
    """Pick element ``index`` of a tuple value: ``x -> x[index]``, as Python indexing.

    The element is returned as is (a tensor or a nested tuple); the others are dropped.

    Args:
        index: position in the tuple (negative counts from the end).

    Shape:
        ``(x_0, ..., x_{n-1}) -> x_index``, e.g. ``Index(0)``: ``((B, T, C), (B, T)) -> (B, T, C)``.

    Raises:
        TypeError: ``index`` not an int.
        ModifyTypeError: if the input is not a tuple.
        ModifyValueError: if the tuple has no element ``index``.

    Example:
        >>> import torch, modify
        >>> modify.Index(1)((torch.zeros(1), torch.ones(1))).tolist()
        [1.0]
    """

    @typechecked
    def __init__(self, index: int):
        super().__init__()
        self.index = index

    def forward(self, x):
        values = expect_tuple(self, x)
        present = is_dynamo_compiling() or isinstance(values, tuple) and -len(values) <= self.index < len(values)
        if not present and checks_enabled():
            raise ModifyValueError(self, f"has no element {self.index} in {describe(x)}")
        return values[self.index]

    def extra_repr(self) -> str:
        return str(self.index)
