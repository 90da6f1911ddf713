"""Restructuring leaves: move values around without arithmetic."""

from __future__ import annotations

import einops
import torch

from .._core.checks import checks_enabled, expect_tensor, expect_tuple, typechecked
from .._core.errors import ModifyValueError, describe
from .._core.module import Leaf
from .rearrange_plan import RearrangePlan
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

    def forward(self, x):
        return x


class Copy(Leaf, Unary, ParamFree, Linear, Restructure):
    """Copy one value into a tuple of ``n`` references to it: ``x -> (x, ..., x)``.

    No memory is copied: every element is the input object itself. Any value (a tensor or a
    tuple) may be copied. The first step of :class:`~modify.Fork` and :class:`~modify.Residual`.

    Args:
        n: number of copies, at least 1.

    Shape:
        ``(*) -> ((*), ..., (*))`` with ``n`` elements, e.g. ``Copy(3)``:
        ``(B, T, C) -> ((B, T, C), (B, T, C), (B, T, C))``.

    Raises:
        TypeError: ``n`` not an int.
        ValueError: if ``n < 1``.

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
        return (x,) * self.n

    def extra_repr(self) -> str:
        return f"n={self.n}"


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
        RuntimeError: at run time, from torch (with this module's path), if the element count
            differs.

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
        return expect_tensor(self, x).reshape(self.shape)

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
        IndexError: at run time, from torch (with this module's path), a dimension out of range
            for the input.
        RuntimeError: at run time, from torch, ``start_dim`` after ``end_dim``.

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
        return torch.flatten(expect_tensor(self, x), self.start_dim, self.end_dim)

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
        IndexError: at run time, from torch (with this module's path), ``dim0`` or ``dim1`` out of
            range for the input.

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
        return expect_tensor(self, x).transpose(self.dim0, self.dim1)

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
        RuntimeError: at run time, from torch (with this module's path), if ``dims`` is not a
            permutation of the input's axes.

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
        return expect_tensor(self, x).permute(self.dims)

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
        ModifyTypeError: the input is not a tensor.
        einops.EinopsError: (a ``RuntimeError``, at run time, with this module's path) if the
            input does not fit the pattern.

    Example:
        >>> import torch, modify
        >>> modify.Rearrange("b t (h d) -> b h t d", h=2)(torch.zeros(1, 5, 8)).shape
        torch.Size([1, 2, 5, 4])
    """

    @typechecked
    def __init__(self, pattern: str, **axes_lengths: int):
        super().__init__()
        self.pattern, self.axes_lengths = pattern, axes_lengths
        self._plan = RearrangePlan(pattern, axes_lengths)

    def forward(self, x):
        x = expect_tensor(self, x)
        if torch.compiler.is_compiling():
            return einops.rearrange(x, self.pattern, **self.axes_lengths)
        return self._plan(x)

    def extra_repr(self) -> str:
        lengths = "".join(f", {k}={v}" for k, v in self.axes_lengths.items())
        return f"{self.pattern!r}{lengths}"


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
        RuntimeError: at run time, from torch (with this module's path), sections that do not
            sum to the size of ``dim``, or a chunk size of 0.
        IndexError: at run time, from torch, ``dim`` out of range for the input.

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
        return tuple(torch.split(expect_tensor(self, x), self.split_size_or_sections, self.dim))

    def extra_repr(self) -> str:
        return f"{self.split_size_or_sections}, dim={self.dim}"


class Cat(Leaf, Tuple, ParamFree, Linear, Restructure):
    """Concatenate a tuple of tensors along ``dim``: ``torch.cat(xs, dim)``.

    As ``torch.cat``; the inverse of :class:`Split`.

    Args:
        dim: the dimension to concatenate along (default ``0``, as ``torch.cat``; negative counts
            from the end).

    Shape:
        ``((*, D_1, *), ..., (*, D_k, *)) -> (*, D_1 + ... + D_k, *)``: the tensors agree except
        along ``dim``; e.g. ``Cat(dim=-1)``: ``((B, T, C_1), (B, T, C_2)) -> (B, T, C_1 + C_2)``.

    Raises:
        TypeError: ``dim`` not an int; at run time, from torch, an element that is not a tensor.
        ModifyTypeError: the input is not a tuple.
        ValueError: at run time, from torch, an empty tuple.
        RuntimeError: at run time, from torch (with this module's path), shapes that differ
            outside ``dim``.
        IndexError: at run time, from torch, ``dim`` out of range for the tensors.

    Example:
        >>> import torch, modify
        >>> modify.Cat(dim=-1)((torch.zeros(2, 3), torch.zeros(2, 1))).shape
        torch.Size([2, 4])
    """

    @typechecked
    def __init__(self, dim: int = 0):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return torch.cat(expect_tuple(self, x), self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Stack(Leaf, Tuple, ParamFree, Linear, Restructure):
    """Stack a tuple of same-shaped tensors along a new dimension ``dim``: ``torch.stack(xs, dim)``.

    As ``torch.stack``.

    Args:
        dim: where the new dimension goes in the output (default ``0``, as ``torch.stack``;
            negative counts from the end of the output's dimensions).

    Shape:
        ``k`` tensors of one shape ``(*)`` -> the shape with ``k`` inserted at ``dim``; e.g.
        ``Stack(0)``: ``((B, C), ..., (B, C)) -> (k, B, C)``.

    Raises:
        TypeError: ``dim`` not an int; at run time, from torch, an element that is not a tensor.
        ModifyTypeError: the input is not a tuple.
        RuntimeError: at run time, from torch (with this module's path), tensors of different
            shapes, or an empty tuple.
        IndexError: at run time, from torch, ``dim`` out of range.

    Example:
        >>> import torch, modify
        >>> modify.Stack()((torch.zeros(3), torch.zeros(3))).shape
        torch.Size([2, 3])
    """

    @typechecked
    def __init__(self, dim: int = 0):
        super().__init__()
        self.dim = dim

    def forward(self, x):
        return torch.stack(expect_tuple(self, x), self.dim)

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


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
        if checks_enabled() and not -len(values) <= self.index < len(values):
            raise ModifyValueError(self, f"has no element {self.index} in {describe(x)}")
        return values[self.index]

    def extra_repr(self) -> str:
        return str(self.index)
