"""Restructuring leaves: move values around without arithmetic."""

from __future__ import annotations

import einops
import torch

from .._core.checks import checks_enabled, expect_tensor, expect_tuple, typechecked
from .._core.errors import ModifyValueError, describe
from .._core.module import Leaf
from ..traits import Elementwise, Linear, ParamFree, Restructure, Tuple, Unary


class Identity(Leaf, Unary, ParamFree, Linear, Elementwise):
    """Return the input unchanged; passes any value (tensor or tuple) through.

    Example:
        >>> import torch, modify
        >>> modify.Identity()(torch.ones(2)).tolist()
        [1.0, 1.0]
    """

    def forward(self, x):
        return x


class Copy(Leaf, Unary, ParamFree, Linear, Restructure):
    """Copy one value into a tuple of ``n`` references to it: ``x -> (x, ..., x)``.

    No memory is copied: every element is the input object itself.

    Args:
        n: number of copies, at least 1.

    Shape:
        ``(*) -> ((*), ..., (*))`` with ``n`` elements.

    Raises:
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
    """``x.reshape(*shape)``; one entry may be ``-1`` (inferred).

    Args:
        *shape: the target shape, as ``torch.Tensor.reshape`` takes it: ``Reshape(2, 3)`` or
            ``Reshape((2, 3))``.

    Shape:
        ``(*) -> shape``, with as many elements.

    Raises:
        TypeError: entries that are not ints.
        ValueError: more than one ``-1``, or an entry below ``-1``.
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
    """``torch.flatten(x, start_dim, end_dim)``.

    The defaults are ``torch.flatten``'s (``0, -1``), not ``nn.Flatten``'s (``1, -1``): use
    ``Flatten(1)`` to keep the batch dimension.

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
    """``x.transpose(dim0, dim1)``.

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
    """``x.permute(*dims)``.

    Args:
        *dims: the new order of the input's axes, ``Permute(2, 0, 1)`` or ``Permute((2, 0, 1))``.

    Shape:
        ``(d_0, ..., d_n) -> (d_dims[0], ..., d_dims[n])``.

    Raises:
        TypeError: entries that are not ints.
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
    """``einops.rearrange(x, pattern, **axes_lengths)``.

    Args:
        pattern: an einops pattern, e.g. ``"b t (h d) -> b h t d"``.
        **axes_lengths: sizes of axes the pattern cannot infer, e.g. ``h=12``.

    Raises:
        ValueError: (from einops, with this module's path) if the input does not fit the pattern.

    Reference: Rogozhnikov 2022, "Einops: Clear and Reliable Tensor Manipulations".

    Example:
        >>> import torch, modify
        >>> modify.Rearrange("b t (h d) -> b h t d", h=2)(torch.zeros(1, 5, 8)).shape
        torch.Size([1, 2, 5, 4])
    """

    @typechecked
    def __init__(self, pattern: str, **axes_lengths: int):
        super().__init__()
        self.pattern, self.axes_lengths = pattern, axes_lengths

    def forward(self, x):
        return einops.rearrange(expect_tensor(self, x), self.pattern, **self.axes_lengths)

    def extra_repr(self) -> str:
        lengths = "".join(f", {k}={v}" for k, v in self.axes_lengths.items())
        return f"{self.pattern!r}{lengths}"


class Split(Leaf, Unary, ParamFree, Linear, Restructure):
    """``torch.split(x, split_size_or_sections, dim)`` returned as a tuple.

    Args:
        split_size_or_sections: size of each chunk, or a list of chunk sizes.
        dim: dimension to split (default 0, as ``torch.split``).

    Shape:
        ``(*) -> ((*), ..., (*))``.

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
    """``torch.cat(xs, dim)`` of a tuple of tensors.

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
    """``torch.stack(xs, dim)`` of a tuple of tensors.

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
    """Pick element ``index`` of a tuple value: ``x -> x[index]``.

    Args:
        index: position in the tuple (negative counts from the end).

    Raises:
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
