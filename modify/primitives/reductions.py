"""Reductions: ``Sum``, ``Mean``, ``Max`` over dimensions."""

from __future__ import annotations

import torch

from .._core.arguments import typechecked
from .._core.checks import expect_dims
from .._core.module import Leaf
from ..traits import Linear, NonLinear, ParamFree, Reduction, Unary


class _Reduce(Leaf):
    """Base of the reductions: ``torch.<op>(x, dim, keepdim)`` over ``dim`` (``None``: every dimension).

    Args:
        dim: a dimension, a tuple of them, or ``None`` for all (default).
        keepdim: keep the reduced dimensions with size 1 (default ``False``).

    Raises:
        TypeError: ``dim`` not an int, a tuple of ints or ``None``; ``keepdim`` not a bool.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: an input without an axis in ``dim``.
    """

    @typechecked
    def __init__(self, dim: int | tuple[int, ...] | None = None, keepdim: bool = False):
        super().__init__()
        self.dim, self.keepdim = dim, keepdim

    def _dims(self, x: torch.Tensor):
        return tuple(range(x.dim())) if self.dim is None else self.dim

    def extra_repr(self) -> str:
        return f"dim={self.dim}, keepdim={self.keepdim}"


class Sum(_Reduce, Unary, ParamFree, Linear, Reduction):
    """Sum over dimensions: ``torch.sum(x, dim, keepdim)``; ``dim=None`` sums everything.

    As ``torch.sum``.

    Shape:
        ``(*)`` -> the input's shape without the dimensions in ``dim`` (size 1 with ``keepdim``),
        e.g. ``Sum(dim=1)``: ``(B, T, C) -> (B, C)``; with ``dim=None``: ``(*) -> ()``.

    Example:
        >>> import torch, modify
        >>> modify.Sum(dim=1)(torch.ones(2, 3)).tolist()
        [3.0, 3.0]
    """

    def forward(self, x):
        x = expect_dims(self, x, self.dim)
        return x.sum() if self.dim is None and not self.keepdim else torch.sum(x, self._dims(x), self.keepdim)


class Mean(_Reduce, Unary, ParamFree, Linear, Reduction):
    """Average over dimensions: ``torch.mean(x, dim, keepdim)``; ``dim=None`` averages everything.

    As ``torch.mean``; the input must be floating point (or complex), as for ``torch.mean``.

    Shape:
        ``(*)`` -> the input's shape without the dimensions in ``dim`` (size 1 with ``keepdim``),
        e.g. ``Mean(dim=1)``: ``(B, T, C) -> (B, C)`` (mean over the sequence); with ``dim=None``:
        ``(*) -> ()``.

    Example:
        >>> import torch, modify
        >>> modify.Mean(dim=-1)(torch.tensor([[1.0, 3.0]])).tolist()
        [2.0]
    """

    def forward(self, x):
        x = expect_dims(self, x, self.dim)
        return x.mean() if self.dim is None and not self.keepdim else torch.mean(x, self._dims(x), self.keepdim)


class Max(_Reduce, Unary, ParamFree, NonLinear, Reduction):
    """Maximum values (not indices) over dimensions: ``torch.amax(x, dim, keepdim)``.

    As ``torch.amax``; ``dim=None`` takes the maximum over everything. Gradients go to the
    maximal elements, split evenly among ties (``torch.amax``'s rule).

    Shape:
        ``(*)`` -> the input's shape without the dimensions in ``dim`` (size 1 with ``keepdim``),
        e.g. ``Max(dim=1)``: ``(B, T, C) -> (B, C)`` (max-pooling over the sequence); with
        ``dim=None``: ``(*) -> ()``.

    Example:
        >>> import torch, modify
        >>> modify.Max(dim=0)(torch.tensor([[1.0, 5.0], [3.0, 2.0]])).tolist()
        [3.0, 5.0]
    """

    def forward(self, x):
        x = expect_dims(self, x, self.dim)
        dims = () if self.dim is None else self.dim
        return torch.amax(x, dims, self.keepdim)
