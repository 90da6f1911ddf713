"""Pooling leaves over the last two (spatial) dimensions: each ``(H, W)`` plane on its own (``Matrix``)."""

from __future__ import annotations

import torch.nn.functional as F

from .._core.checks import expect_tensor, typechecked
from .._core.module import Leaf
from ..traits import Linear, Matrix, NonLinear, ParamFree, Reduction, Unary

Size2 = int | tuple[int, int]


class MaxPool2d(Leaf, Unary, ParamFree, NonLinear, Reduction, Matrix):
    """2-D max pooling, as ``torch.nn.MaxPool2d`` (same arguments; ``stride`` defaults to ``kernel_size``).

    Shape:
        ``(N, C, H, W) -> (N, C, H_out, W_out)`` (``N`` optional).

    Example:
        >>> import torch, modify
        >>> modify.MaxPool2d(3, stride=2, padding=1)(torch.zeros(1, 2, 8, 8)).shape
        torch.Size([1, 2, 4, 4])
    """

    @typechecked
    def __init__(
        self,
        kernel_size: Size2,
        stride: Size2 | None = None,
        padding: Size2 = 0,
        dilation: Size2 = 1,
        ceil_mode: bool = False,
    ):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride if stride is not None else kernel_size
        self.padding, self.dilation, self.ceil_mode = padding, dilation, ceil_mode

    def forward(self, x):
        x = expect_tensor(self, x)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AvgPool2d(Leaf, Unary, ParamFree, Linear, Reduction, Matrix):
    """2-D average pooling, as ``torch.nn.AvgPool2d`` (same arguments).

    Shape:
        ``(N, C, H, W) -> (N, C, H_out, W_out)`` (``N`` optional).

    Example:
        >>> import torch, modify
        >>> modify.AvgPool2d(2)(torch.ones(1, 1, 4, 4)).shape
        torch.Size([1, 1, 2, 2])
    """

    @typechecked
    def __init__(
        self,
        kernel_size: Size2,
        stride: Size2 | None = None,
        padding: Size2 = 0,
        ceil_mode: bool = False,
        count_include_pad: bool = True,
        divisor_override: int | None = None,
    ):
        super().__init__()
        self.kernel_size, self.stride = kernel_size, stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, ceil_mode
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, x):
        x = expect_tensor(self, x)
        pool = (self.kernel_size, self.stride, self.padding)
        return F.avg_pool2d(x, *pool, self.ceil_mode, self.count_include_pad, self.divisor_override)

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class AdaptiveAvgPool2d(Leaf, Unary, ParamFree, Linear, Reduction, Matrix):
    """Average-pool to a fixed ``output_size``, as ``torch.nn.AdaptiveAvgPool2d``.

    Shape:
        ``(N, C, H, W) -> (N, C, *output_size)`` (``N`` optional).

    Example:
        >>> import torch, modify
        >>> modify.AdaptiveAvgPool2d(1)(torch.ones(2, 3, 5, 5)).shape
        torch.Size([2, 3, 1, 1])
    """

    @typechecked
    def __init__(self, output_size: int | tuple[int | None, int | None]):
        super().__init__()
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(expect_tensor(self, x), self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"
