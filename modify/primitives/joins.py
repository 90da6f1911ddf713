"""Split a tensor into a tuple and join a tuple into a tensor: ``Split``, ``Cat``, ``Stack``."""

from __future__ import annotations

import torch

from .._core.arguments import typechecked
from .._core.checks import expect_dims, expect_joinable
from .._core.module import Leaf
from ..traits import Linear, ParamFree, Restructure, Tuple, Unary


class Split(Leaf, Unary, ParamFree, Linear, Restructure):
    """Split a tensor into chunks along ``dim``: ``torch.split(x, split_size_or_sections, dim)`` as a tuple.

    As ``torch.split``: the chunks are views of the input.

    Args:
        split_size_or_sections: size of each chunk (the last may be smaller), or a list of chunk
            sizes that sum to the input's size along ``dim``.
        dim: dimension to split (default 0, as ``torch.split``).

    Shape:
        ``(*, D, *) -> ((*, D_1, *), ..., (*, D_k, *))``, ``D_1 + ... + D_k = D``; e.g.
        ``Split(C, dim=-1)``: ``(B, T, 3 C) -> ((B, T, C), (B, T, C), (B, T, C))``.

    Raises:
        TypeError: ``split_size_or_sections`` not an int or a list/tuple of ints; ``dim`` not an int.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: an input without axis ``dim``.

    Example:
        >>> import torch, modify
        >>> q, k, v = modify.Split(4, dim=-1)(torch.zeros(2, 12))
        >>> q.shape
        torch.Size([2, 4])
    """

    @typechecked
    def __init__(self, split_size_or_sections: int | list[int] | tuple[int, ...], dim: int = 0):
        super().__init__()
        sections = split_size_or_sections
        self.split_size_or_sections = sections if isinstance(sections, int) else list(sections)
        self.dim = dim

    def forward(self, x):
        return tuple(expect_dims(self, x, self.dim).split(self.split_size_or_sections, self.dim))

    def line_expression(self, writer, value: str) -> str:
        """``Tensor.split`` alone, a tuple (see :mod:`modify._core.straight_line`): it refuses a missing ``dim``."""
        me = writer.name(self)
        return f"tuple({value}.split({me}.split_size_or_sections, {me}.dim))"

    def extra_repr(self) -> str:
        return f"{self.split_size_or_sections}, dim={self.dim}"


class _Join(Leaf, Tuple, ParamFree, Linear, Restructure):
    """Join a tuple of tensors into one along ``dim``: the family of ``Cat`` and ``Stack``.

    As the torch function each is named after; ``dim`` defaults to ``0`` as there, and negative
    values count from the end (of the output's dimensions for ``Stack``).

    Args:
        dim: the dimension to join along (default ``0``).

    Raises:
        TypeError: ``dim`` not an int.
        ModifyTypeError: the input is not a non-empty tuple of tensors.
        ModifyValueError: tensors that do not join at ``dim`` (``Cat``: another rank or size
            outside ``dim``; ``Stack``: another shape), or no axis ``dim``.
    """

    @typechecked
    def __init__(self, dim: int = 0):
        super().__init__()
        self.dim = dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Cat(_Join):
    """Concatenate a tuple of tensors along ``dim``: ``torch.cat(xs, dim)``, the inverse of :class:`Split`.

    Shape:
        ``((*, D_1, *), ..., (*, D_k, *)) -> (*, D_1 + ... + D_k, *)``: the tensors agree except
        along ``dim``; e.g. ``Cat(dim=-1)``: ``((B, T, C_1), (B, T, C_2)) -> (B, T, C_1 + C_2)``.

    Example:
        >>> import torch, modify
        >>> modify.Cat(dim=-1)((torch.zeros(2, 3), torch.zeros(2, 1))).shape
        torch.Size([2, 4])
    """

    def forward(self, x):
        return torch.cat(expect_joinable(self, x, self.dim, stack=False), self.dim)


class Stack(_Join):
    """Stack a tuple of same-shaped tensors along a new dimension ``dim``: ``torch.stack(xs, dim)``.

    Shape:
        ``k`` tensors of one shape ``(*)`` -> the shape with ``k`` inserted at ``dim``; e.g.
        ``Stack(0)``: ``((B, C), ..., (B, C)) -> (k, B, C)``.

    Example:
        >>> import torch, modify
        >>> modify.Stack()((torch.zeros(3), torch.zeros(3))).shape
        torch.Size([2, 3])
    """

    def forward(self, x):
        return torch.stack(expect_joinable(self, x, self.dim, stack=True), self.dim)
