"""ResNet's residual blocks: ``BasicBlock`` and ``Bottleneck``, each a renamed ``Sequential``.

He et al. 2016, "Deep Residual Learning for Image Recognition"; the layouts of torchvision's
``BasicBlock`` and ``Bottleneck`` ("v1.5": a bottleneck strides in its 3x3 convolution).
"""

from __future__ import annotations

import functools

from torch import nn

from .._core.arguments import typechecked
from ..combinators import Parallel, Sequential
from ..primitives import Add, Conv2d, Copy, Identity, ReLU
from .building import batch_norm

# Kaiming He's init for convolutions feeding a ReLU, as torchvision and transformers use.
_conv_init = functools.partial(nn.init.kaiming_normal_, mode="fan_out", nonlinearity="relu")


def conv(n_in: int, n_out: int, kernel_size: int, stride: int = 1) -> Conv2d:
    """A bias-free ``Conv2d`` padded by ``kernel_size // 2``, Kaiming-initialised (ResNet's every convolution)."""
    return Conv2d(n_in, n_out, kernel_size, stride, padding=kernel_size // 2, bias=False, weight_init=_conv_init)


def _shortcut(in_channels: int, out_channels: int, stride: int) -> nn.Module:
    """Identity, or a strided 1x1 projection with batch norm where the shape changes."""
    if in_channels == out_channels and stride == 1:
        return Identity()
    return Sequential(conv=conv(in_channels, out_channels, 1, stride), bn=batch_norm(out_channels))


def _residual_block(convs: list[tuple[int, int, int, int]], stride: int) -> dict[str, nn.Module]:
    """A block's children: ``copy``, ``branches`` (shortcut, residual) and ``add``, ``relu``.

    ``convs`` lists ``(in, out, kernel_size, stride)`` of the residual branch's convolutions,
    each followed by a batch norm (``bn<i>``) and, but the last, a ReLU (``relu<i>``).
    """
    layers: dict[str, nn.Module] = {}
    for i, (n_in, n_out, kernel_size, conv_stride) in enumerate(convs, 1):
        layers[f"conv{i}"], layers[f"bn{i}"] = conv(n_in, n_out, kernel_size, conv_stride), batch_norm(n_out)
        if i < len(convs):
            layers[f"relu{i}"] = ReLU()
    in_channels, out_channels = convs[0][0], convs[-1][1]
    branches = Parallel(shortcut=_shortcut(in_channels, out_channels, stride), residual=Sequential(**layers))
    return dict(copy=Copy(2), branches=branches, add=Add(), relu=ReLU())


class BasicBlock(Sequential):
    """ResNet's basic block: ``relu(shortcut(x) + bn2(conv2(relu(bn1(conv1(x))))))``.

    Exactly ``Sequential(copy=Copy(2), branches=Parallel(shortcut=..., residual=...), add=Add(),
    relu=ReLU())``: a residual connection whose shortcut is the identity, or a 1x1 convolution
    with batch norm (a projection) where the stride or the channel count changes. Batch norm is
    ``BatchNorm2d`` followed by ``ElementwiseAffine(C, dim=1)``, named ``bn*.norm``/``bn*.affine``.
    He et al. 2016; torchvision's ``BasicBlock``.

    Args:
        in_channels: channels in.
        out_channels: channels out.
        stride: of the first 3x3 convolution and of the projection (1 or 2).

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride)`` (rounded up).

    Raises:
        TypeError: an argument of the wrong type.
        ModifyValueError: at run time, images without ``in_channels`` channels at axis 1 (from
            the first convolution, named by its path).

    Example:
        >>> import torch
        >>> from modify.models import BasicBlock
        >>> block = BasicBlock(8, 16, stride=2)
        >>> block(torch.randn(2, 8, 10, 10)).shape
        torch.Size([2, 16, 5, 5])
        >>> list(dict(block.branches.named_children()))
        ['shortcut', 'residual']
    """

    @typechecked
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1):
        convs = [(in_channels, out_channels, 3, stride), (out_channels, out_channels, 3, 1)]
        super().__init__(**_residual_block(convs, stride))


class Bottleneck(Sequential):
    """ResNet's bottleneck block: 1x1 to ``out_channels / 4``, 3x3, 1x1 back up, plus a shortcut.

    Exactly ``Sequential(copy=Copy(2), branches=Parallel(shortcut=..., residual=Sequential(conv1,
    bn1, relu1, conv2, bn2, relu2, conv3, bn3)), add=Add(), relu=ReLU())``, the shortcut as in
    :class:`BasicBlock`. He et al. 2016; torchvision's ``Bottleneck`` (stride in the 3x3, "v1.5").

    Args:
        in_channels: channels in.
        out_channels: channels out (a multiple of 4).
        stride: of the 3x3 convolution (or of the first 1x1 with ``downsample_in_bottleneck``)
            and of the projection.
        downsample_in_bottleneck: stride in the first 1x1 convolution (original ResNet v1).

    Shape:
        ``(B, in_channels, H, W) -> (B, out_channels, H / stride, W / stride)`` (rounded up).

    Raises:
        TypeError: an argument of the wrong type.
        ValueError: ``out_channels`` not a multiple of 4.
        ModifyValueError: at run time, images without ``in_channels`` channels at axis 1 (from
            the first convolution, named by its path).

    Example:
        >>> import torch
        >>> from modify.models import Bottleneck
        >>> Bottleneck(16, 32, stride=2)(torch.randn(2, 16, 8, 8)).shape
        torch.Size([2, 32, 4, 4])
    """

    @typechecked
    def __init__(self, in_channels: int, out_channels: int, stride: int = 1, downsample_in_bottleneck: bool = False):
        if out_channels % 4:
            raise ValueError(f"Bottleneck: out_channels must be a multiple of 4, got {out_channels}")
        width = out_channels // 4
        first_stride, middle_stride = (stride, 1) if downsample_in_bottleneck else (1, stride)
        convs = [(in_channels, width, 1, first_stride), (width, width, 3, middle_stride), (width, out_channels, 1, 1)]
        super().__init__(**_residual_block(convs, stride))
