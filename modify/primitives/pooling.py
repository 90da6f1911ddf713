"""Pooling leaves over the last two (spatial) dimensions: each ``(H, W)`` plane on its own (``Matrix``)."""

from __future__ import annotations

import torch.nn.functional as F

from .._core.arguments import typechecked
from .._core.checks import expect_tensor
from .._core.module import Leaf
from ..traits import Linear, Matrix, NonLinear, ParamFree, Reduction, Unary

Size2 = int | tuple[int, int]


class _Pool2d(Leaf):
    """Sliding-window pooling over each ``(H, W)`` plane: the family of ``MaxPool2d`` and ``AvgPool2d``.

    Takes ``torch.nn``'s arguments: ``stride`` defaults to ``kernel_size``, and an int stands
    for the same value along ``H`` and ``W``.

    Args:
        kernel_size: the window size, an int or ``(kH, kW)``.
        stride: the window step, an int or ``(sH, sW)``; ``None`` (default) means ``kernel_size``.
        padding: implicit padding on both sides (``-inf`` for the maximum, zeros for the
            average), an int or ``(pH, pW)``, at most half the kernel size (default ``0``).
        ceil_mode: round the output size up instead of down (default ``False``).

    Raises:
        TypeError: an argument that is not an int or a pair of ints (flags: not a bool).
        ValueError: a size, stride or dilation below 1, a negative padding (naming the class).
        ModifyTypeError: the input is not a tensor.
    """

    def _window(self, kernel_size: Size2, stride: Size2 | None, padding: Size2, ceil_mode: bool) -> None:
        owner = type(self).__name__
        _pair(owner, "kernel_size", kernel_size, 1)
        _pair(owner, "stride", kernel_size if stride is None else stride, 1)
        _pair(owner, "padding", padding, 0)
        self.kernel_size, self.stride = kernel_size, stride if stride is not None else kernel_size
        self.padding, self.ceil_mode = padding, ceil_mode

    def extra_repr(self) -> str:
        return f"kernel_size={self.kernel_size}, stride={self.stride}, padding={self.padding}"


class MaxPool2d(_Pool2d, Unary, ParamFree, NonLinear, Reduction, Matrix):
    """2-D max pooling, as ``torch.nn.MaxPool2d`` (``F.max_pool2d``; no ``return_indices``).

    Args:
        dilation: the spacing between window elements, an int or ``(dH, dW)`` (default ``1``).

    Shape:
        ``(N, C, H, W) -> (N, C, H_out, W_out)`` (``N`` optional), with
        ``H_out = floor((H + 2 pH - dH (kH - 1) - 1) / sH + 1)`` (``ceil`` with ``ceil_mode``) and
        ``W_out`` likewise; e.g. ResNet's stem ``MaxPool2d(3, stride=2, padding=1)``:
        ``(B, 64, 112, 112) -> (B, 64, 56, 56)``.

    Example:
        >>> import torch, modify
        >>> modify.MaxPool2d(3, stride=2, padding=1)(torch.zeros(1, 2, 8, 8)).shape
        torch.Size([1, 2, 4, 4])
    """

    @typechecked
    def __init__(self, kernel_size: Size2, stride: Size2 | None = None, padding: Size2 = 0, dilation: Size2 = 1,
                 ceil_mode: bool = False):  # fmt: skip
        super().__init__()
        self._window(kernel_size, stride, padding, ceil_mode)
        _pair("MaxPool2d", "dilation", dilation, 1)
        self.dilation = dilation

    def forward(self, x):
        x = expect_tensor(self, x)
        return F.max_pool2d(x, self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode)


class AvgPool2d(_Pool2d, Unary, ParamFree, Linear, Reduction, Matrix):
    """2-D average pooling, as ``torch.nn.AvgPool2d`` (``F.avg_pool2d``).

    Args:
        count_include_pad: count the zero padding in the average's divisor (default ``True``).
        divisor_override: divide every window's sum by this number instead (default ``None``).

    Shape:
        ``(N, C, H, W) -> (N, C, H_out, W_out)`` (``N`` optional), with
        ``H_out = floor((H + 2 pH - kH) / sH + 1)`` (``ceil`` with ``ceil_mode``) and ``W_out``
        likewise; e.g. ``AvgPool2d(2)``: ``(B, C, 32, 32) -> (B, C, 16, 16)``.

    Example:
        >>> import torch, modify
        >>> modify.AvgPool2d(2)(torch.ones(1, 1, 4, 4)).shape
        torch.Size([1, 1, 2, 2])
    """

    @typechecked
    def __init__(self, kernel_size: Size2, stride: Size2 | None = None, padding: Size2 = 0, ceil_mode: bool = False,
                 count_include_pad: bool = True, divisor_override: int | None = None):  # fmt: skip
        super().__init__()
        self._window(kernel_size, stride, padding, ceil_mode)
        self.count_include_pad, self.divisor_override = count_include_pad, divisor_override

    def forward(self, x):
        x = expect_tensor(self, x)
        pool = (self.kernel_size, self.stride, self.padding)
        return F.avg_pool2d(x, *pool, self.ceil_mode, self.count_include_pad, self.divisor_override)


class AdaptiveAvgPool2d(Leaf, Unary, ParamFree, Linear, Reduction, Matrix):
    """Average-pool each ``(H, W)`` plane to a fixed ``output_size``, as ``torch.nn.AdaptiveAvgPool2d``.

    Runs ``F.adaptive_avg_pool2d``: the windows are chosen to fit any input size. ResNet's head
    uses ``AdaptiveAvgPool2d(1)`` (global average pooling; He et al. 2016).

    Args:
        output_size: the target ``(H_out, W_out)``; an int means a square, and ``None`` in the
            pair keeps the input's size along that axis.

    Shape:
        ``(N, C, H, W) -> (N, C, H_out, W_out)`` (``N`` optional), e.g. ``AdaptiveAvgPool2d(1)``:
        ``(B, 512, 7, 7) -> (B, 512, 1, 1)``.

    Raises:
        TypeError: ``output_size`` not an int or a pair of ints/``None``.
        ValueError: an ``output_size`` below 1.
        ModifyTypeError: the input is not a tensor.

    Example:
        >>> import torch, modify
        >>> modify.AdaptiveAvgPool2d(1)(torch.ones(2, 3, 5, 5)).shape
        torch.Size([2, 3, 1, 1])
    """

    @typechecked
    def __init__(self, output_size: int | tuple[int | None, int | None]):
        super().__init__()
        sizes = output_size if isinstance(output_size, tuple) else (output_size,)
        if any(s is not None and s < 1 for s in sizes):
            raise ValueError(f"AdaptiveAvgPool2d: output_size must be at least 1 (or None), got {output_size}")
        self.output_size = output_size

    def forward(self, x):
        return F.adaptive_avg_pool2d(expect_tensor(self, x), self.output_size)

    def extra_repr(self) -> str:
        return f"output_size={self.output_size}"


def _pair(owner: str, name: str, value: Size2, least: int) -> tuple[int, int]:
    """``value`` as ``(h, w)``, each at least ``least``; a ``ValueError`` naming ``owner`` otherwise."""
    pair = (value, value) if isinstance(value, int) else value
    if len(pair) != 2 or min(pair) < least:
        raise ValueError(f"{owner}: {name} needs 1 or 2 values of at least {least}, got {value}")
    return pair
