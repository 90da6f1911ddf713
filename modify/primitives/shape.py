"""Shape leaves: one tensor viewed or reordered, as ``reshape``, ``flatten``, ``transpose``, ``permute``, einops."""

from __future__ import annotations

import torch

from .._core.arguments import typechecked
from .._core.checks import is_compiling
from .._core.checks import expect_dims, expect_numel, expect_rank
from .._core.module import Leaf
from .rearrange_plan import RearrangePlan, check_pattern
from ..traits import Linear, ParamFree, Restructure, Unary


def _sizes(owner: str, args: tuple) -> tuple[int, ...]:
    """``(2, 3)`` from ``(2, 3)`` or ``((2, 3),)``, as ``torch.Tensor.reshape``/``permute`` take it."""
    if len(args) == 1 and isinstance(args[0], (tuple, list)):
        args = tuple(args[0])
    if not all(isinstance(a, int) and not isinstance(a, bool) for a in args):
        raise TypeError(f"{owner} takes ints or one tuple of ints, got {args!r}")
    return args


class Reshape(Leaf, Unary, ParamFree, Linear, Restructure):
    """``x.reshape(*shape)``, as ``torch.Tensor.reshape``; one entry may be ``-1`` (inferred).

    A view where torch can make one, else a copy (torch's rule).

    Args:
        *shape: the target shape, as ``torch.Tensor.reshape`` takes it: ``Reshape(2, 3)`` or
            ``Reshape((2, 3))``.

    Shape:
        ``(*) -> shape``, with as many elements, e.g. ``Reshape(-1, C)``: ``(B, T, C) -> (B * T, C)``.

    Raises:
        TypeError: entries that are not ints.
        ValueError: more than one ``-1``, or an entry below ``-1``.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: an input whose number of elements ``shape`` cannot hold.

    Example:
        >>> import torch, modify
        >>> modify.Reshape(2, -1)(torch.arange(6)).shape
        torch.Size([2, 3])
    """

    @typechecked
    def __init__(self, *shape: int | tuple[int, ...]):
        super().__init__()
        self.shape = _sizes("Reshape", shape)
        if self.shape.count(-1) > 1 or any(size < -1 for size in self.shape):
            raise ValueError(f"Reshape: at most one -1 and no other negative size, got {self.shape}")

    def forward(self, x):
        return expect_numel(self, x, self.shape).reshape(self.shape)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.shape))


class Flatten(Leaf, Unary, ParamFree, Linear, Restructure):
    """Flatten dimensions ``start_dim`` to ``end_dim`` into one: ``torch.flatten(x, start_dim, end_dim)``.

    As ``torch.flatten``, whose defaults (``0, -1``) it keeps; ``torch.nn.Flatten``'s are
    ``(1, -1)``: use ``Flatten(1)`` to keep the batch dimension. A view where torch can make one.

    Args:
        start_dim: the first dimension to flatten (default ``0``; negative counts from the end).
        end_dim: the last dimension to flatten, inclusive (default ``-1``).

    Shape:
        ``(d_0, ..., d_start, ..., d_end, ...) -> (d_0, ..., d_start * ... * d_end, ...)``,
        e.g. ``Flatten(1)``: ``(N, C, H, W) -> (N, C * H * W)``.

    Raises:
        TypeError: ``start_dim`` or ``end_dim`` not an int.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: an input without axis ``start_dim`` or ``end_dim``.

    Example:
        >>> import torch, modify
        >>> modify.Flatten(1)(torch.zeros(2, 3, 4)).shape
        torch.Size([2, 12])
    """

    @typechecked
    def __init__(self, start_dim: int = 0, end_dim: int = -1):
        super().__init__()
        self.start_dim, self.end_dim = start_dim, end_dim

    def forward(self, x):
        return torch.flatten(expect_dims(self, x, self.start_dim, self.end_dim), self.start_dim, self.end_dim)

    def extra_repr(self) -> str:
        return f"start_dim={self.start_dim}, end_dim={self.end_dim}"


class Transpose(Leaf, Unary, ParamFree, Linear, Restructure):
    """Swap two dimensions: ``x.transpose(dim0, dim1)``, as ``torch.transpose``.

    A view, as in torch: no memory is copied.

    Args:
        dim0: the first dimension to swap (negative counts from the end).
        dim1: the second dimension to swap.

    Shape:
        The input's shape with sizes ``dim0`` and ``dim1`` exchanged, e.g. ``Transpose(1, 2)``:
        ``(B, T, C) -> (B, C, T)``.

    Raises:
        TypeError: ``dim0`` or ``dim1`` not an int.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: an input without axis ``dim0`` or ``dim1``.

    Example:
        >>> import torch, modify
        >>> modify.Transpose(0, 1)(torch.zeros(2, 3)).shape
        torch.Size([3, 2])
    """

    @typechecked
    def __init__(self, dim0: int, dim1: int):
        super().__init__()
        self.dim0, self.dim1 = dim0, dim1

    def forward(self, x):
        return expect_dims(self, x, self.dim0, self.dim1).transpose(self.dim0, self.dim1)

    def extra_repr(self) -> str:
        return f"{self.dim0}, {self.dim1}"


class Permute(Leaf, Unary, ParamFree, Linear, Restructure):
    """Reorder all dimensions: ``x.permute(*dims)``, as ``torch.permute``.

    A view, as in torch: no memory is copied.

    Args:
        *dims: the new order of the input's axes, ``Permute(2, 0, 1)`` or ``Permute((2, 0, 1))``.

    Shape:
        ``(d_0, ..., d_n) -> (d_dims[0], ..., d_dims[n])``, e.g. ``Permute(0, 2, 3, 1)``:
        ``(N, C, H, W) -> (N, H, W, C)``.

    Raises:
        TypeError: entries that are not ints.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: an input whose number of dimensions is not ``len(dims)``.

    Example:
        >>> import torch, modify
        >>> modify.Permute(2, 0, 1)(torch.zeros(2, 3, 4)).shape
        torch.Size([4, 2, 3])
    """

    @typechecked
    def __init__(self, *dims: int | tuple[int, ...]):
        super().__init__()
        self.dims = _sizes("Permute", dims)

    def forward(self, x):
        return expect_rank(self, x, len(self.dims)).permute(self.dims)

    def extra_repr(self) -> str:
        return ", ".join(map(str, self.dims))


class Rearrange(Leaf, Unary, ParamFree, Linear, Restructure):
    """Reshape and permute by a readable pattern: ``einops.rearrange(x, pattern, **axes_lengths)``.

    As ``einops.layers.torch.Rearrange`` (Rogozhnikov 2022, "Einops: Clear and Reliable Tensor
    Manipulations with Einstein-like Notation").

    Args:
        pattern: an einops pattern, e.g. ``"b t (h d) -> b h t d"``.
        **axes_lengths: sizes of axes the pattern cannot infer, e.g. ``h=12``.

    Shape:
        The left side of ``pattern`` -> its right side, e.g. ``"b t (h d) -> b h t d"`` with
        ``h=H``: ``(B, T, H * D) -> (B, H, T, D)``.

    Raises:
        TypeError: ``pattern`` not a str, or an axis length not an int.
        ValueError: a ``pattern`` einops cannot parse, without ``->``, naming an axis on one side
            only, or an axis length for an axis it does not name.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: (a pattern without ``...``) an input of another number of dimensions.

    Example:
        >>> import torch, modify
        >>> modify.Rearrange("b t (h d) -> b h t d", h=2)(torch.zeros(1, 5, 8)).shape
        torch.Size([1, 2, 5, 4])
    """

    @typechecked
    def __init__(self, pattern: str, **axes_lengths: int):
        super().__init__()
        check_pattern(pattern, axes_lengths)
        self.pattern, self.axes_lengths = pattern, axes_lengths
        self._plan = RearrangePlan(pattern, axes_lengths)

    def forward(self, x):
        x = expect_rank(self, x, self._plan.rank)
        return self._plan.uncached(x) if is_compiling() else self._plan(x)

    def line_expression(self, writer, value: str) -> str:
        """The plan alone (see :mod:`modify._core.straight_line`): einops refuses another rank itself."""
        plan = f"{writer.name(self)}._plan"
        return f"({plan}.uncached({value}) if {writer.name(is_compiling)}() else {plan}({value}))"

    def extra_repr(self) -> str:
        lengths = "".join(f", {k}={v}" for k, v in self.axes_lengths.items())
        return f"{self.pattern!r}{lengths}"
