"""Parametrised layers: ``Linear``, ``Conv1d``, ``Conv2d``, ``Embedding``.

Parameter names (``weight``, ``bias``), layouts and default initialisation follow ``torch.nn``,
so a ``torch.nn`` ``state_dict`` loads as is.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._core.arguments import check_floating_dtype, check_sizes, typechecked
from .._core.checks import checks_enabled, expect_last_dim, expect_tensor
from .._core.errors import ModifyTypeError, ModifyValueError, describe
from .._core.module import Leaf
from ..traits import Linear as LinearTrait
from ..traits import NonLinear, Param, Unary, Vector
from .init import Init, apply_init


class Linear(Leaf, Unary, Param, LinearTrait, Vector):
    """Affine map ``y = x W^T + b`` of the last dimension, as ``torch.nn.Linear`` (``F.linear``).

    Same parameter names, layout and default init as ``torch.nn.Linear``, so its
    ``state_dict`` loads as is.

    Args:
        in_features: size of each input vector.
        out_features: size of each output vector.
        bias: learn an additive bias (default ``True``).
        weight_init: a ``torch.distributions.Distribution`` sampled to the weight's shape, or a
            callable ``init(tensor) -> None``; default ``torch.nn.Linear``'s
            ``kaiming_uniform_(a=sqrt(5))``.
        bias_init: likewise for the bias; default ``U(-1/sqrt(in_features), 1/sqrt(in_features))``.
        device: where the parameters are allocated (default: torch's default device).
        dtype: the parameters' floating-point dtype (default: torch's default dtype).

    Shape:
        ``(*, in_features) -> (*, out_features)``, e.g. ``(B, T, in_features) -> (B, T, out_features)``.

    Attributes:
        weight: ``(out_features, in_features)``.
        bias: ``(out_features,)``, or ``None`` with ``bias=False``.

    Raises:
        TypeError: an argument of the wrong type; a non-floating ``dtype``.
        ValueError: a size below 1; a weight or bias distribution that is not scalar (batch and
            event shape ``()``).
        ModifyTypeError: the input is not a tensor, or an integer or bool one.
        ModifyValueError: input whose last dimension is not ``in_features``.

    Example:
        >>> import torch, modify
        >>> lin = modify.Linear(3, 2, weight_init=torch.distributions.Normal(0.0, 0.02))
        >>> lin(torch.zeros(5, 3)).shape
        torch.Size([5, 2])
    """

    @typechecked
    def __init__(
        self,
        in_features: int,
        out_features: int,
        bias: bool = True,
        weight_init: Init = None,
        bias_init: Init = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        check_sizes(type(self).__name__, in_features=in_features, out_features=out_features)
        check_floating_dtype(type(self).__name__, dtype)
        self.in_features, self.out_features = in_features, out_features
        self.weight_init, self.bias_init = weight_init, bias_init
        self.weight = nn.Parameter(torch.empty(self.weight_shape(in_features, out_features), device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_features, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    @staticmethod
    def weight_shape(in_features: int, out_features: int) -> tuple[int, int]:
        """The weight's layout: ``(out_features, in_features)``, as ``torch.nn.Linear``."""
        return out_features, in_features

    def reset_parameters(self) -> None:
        """Initialise as ``torch.nn.Linear`` does, then apply ``weight_init``/``bias_init``."""
        reset_like_torch(self.weight, self.bias, self.weight_init, self.bias_init, type(self).__name__)

    def forward(self, x):
        return F.linear(expect_last_dim(self, x, self.in_features), self.weight, self.bias)

    def line_expression(self, writer, value: str) -> str:
        """``F.linear`` alone (see :mod:`modify._core.straight_line`): it refuses what the check refuses."""
        me = writer.name(self)
        return f"{writer.name(F.linear)}({value}, {me}.weight, {me}.bias)"

    def extra_repr(self) -> str:
        return f"in_features={self.in_features}, out_features={self.out_features}, bias={self.bias is not None}"


def reset_like_torch(
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    weight_init: Init = None,
    bias_init: Init = None,
    owner: str = "",
) -> None:
    """``torch.nn.Linear``/``Conv*``'s init, then ``weight_init``/``bias_init`` if given.

    Kaiming-uniform weight (``a = sqrt(5)``) and a bias uniform in ``±1/sqrt(fan_in)``.
    """
    nn.init.kaiming_uniform_(weight, a=math.sqrt(5))
    if bias is not None:
        fan_in, _ = nn.init._calculate_fan_in_and_fan_out(weight)
        bound = 1 / math.sqrt(fan_in) if fan_in > 0 else 0
        nn.init.uniform_(bias, -bound, bound)
    apply_init(weight, weight_init, f"{owner}.weight")
    if bias is not None:
        apply_init(bias, bias_init, f"{owner}.bias")


def _tuple(value: int | tuple[int, ...], n: int, owner: str, name: str, least: int = 1) -> tuple[int, ...]:
    """``value`` as ``n`` ints of at least ``least``: an int is repeated, a tuple must have length ``n``."""
    values = (value,) * n if isinstance(value, int) else tuple(value)
    if len(values) != n or any(v < least for v in values):
        raise ValueError(f"{owner}: {name} needs 1 or {n} values of at least {least}, got {value}")
    return values


class _ConvNd(Leaf, Unary, Param, LinearTrait):
    """Convolution over ``spatial_dims`` axes: the family of ``Conv1d`` and ``Conv2d``.

    Same arguments, parameter names, layout and init as ``torch.nn.Conv*``, so its ``state_dict``
    loads as is. Runs ``F.conv1d``/``F.conv2d``; a ``padding_mode`` other than ``"zeros"`` pads
    with ``F.pad`` first, as ``torch.nn.Conv*`` does. Sizes below take an int (repeated over the
    spatial axes) or a tuple of one int per spatial axis.

    Args:
        in_channels: channels ``C_in`` of the input.
        out_channels: channels ``C_out`` of the output.
        kernel_size: size of the kernel.
        stride: step of the kernel (default ``1``).
        padding: added on both sides of each spatial axis, or ``"valid"`` (none) or ``"same"``
            (output as long as the input; stride 1 only) (default ``0``).
        dilation: spacing between kernel elements (default ``1``).
        groups: blocked connections from input to output channels; ``in_channels`` and
            ``out_channels`` must be divisible by it (default ``1``).
        bias: learn an additive bias (default ``True``).
        padding_mode: ``"zeros"`` (default), ``"reflect"``, ``"replicate"`` or ``"circular"``.
        weight_init: a ``torch.distributions.Distribution`` sampled to the weight's shape, or a
            callable ``init(tensor) -> None``; default ``kaiming_uniform_(a=sqrt(5))``.
        bias_init: likewise for the bias; default ``U(-1/sqrt(fan_in), 1/sqrt(fan_in))``,
            ``fan_in = C_in / groups * prod(kernel_size)``.
        device: where the parameters are allocated (default: torch's default device).
        dtype: the parameters' floating-point dtype (default: torch's default dtype).

    Attributes:
        weight: ``(C_out, C_in / groups, *kernel_size)``.
        bias: ``(C_out,)``, or ``None`` with ``bias=False``.

    Raises:
        TypeError: an argument of the wrong type; a non-floating ``dtype``.
        ValueError: channels or ``groups`` below 1; channels not divisible by ``groups``; a size
            tuple of the wrong length or a size below 1 (padding below 0); an unknown padding or
            ``padding_mode``; ``padding="same"`` with a stride; a non-scalar init distribution.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: an input without ``in_channels`` channels before its spatial axes.
    """

    spatial_dims = 0

    @typechecked
    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int | tuple[int, ...],
        stride: int | tuple[int, ...] = 1,
        padding: int | tuple[int, ...] | str = 0,
        dilation: int | tuple[int, ...] = 1,
        groups: int = 1,
        bias: bool = True,
        padding_mode: str = "zeros",
        weight_init: Init = None,
        bias_init: Init = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        n, owner = self.spatial_dims, type(self).__name__
        check_sizes(owner, in_channels=in_channels, out_channels=out_channels, groups=groups)
        check_floating_dtype(owner, dtype)
        if in_channels % groups or out_channels % groups:
            raise ValueError(f"{owner}: channels {in_channels}, {out_channels} not divisible by groups {groups}")
        if padding_mode not in ("zeros", "reflect", "replicate", "circular"):
            raise ValueError(f"{owner}: unknown padding_mode {padding_mode!r}")
        if isinstance(padding, str) and padding not in ("same", "valid"):
            raise ValueError(f"{owner}: padding must be 'same', 'valid' or ints, got {padding!r}")
        self.in_channels, self.out_channels, self.groups = in_channels, out_channels, groups
        self.kernel_size = _tuple(kernel_size, n, owner, "kernel_size")
        self.stride = _tuple(stride, n, owner, "stride")
        self.padding = padding if isinstance(padding, str) else _tuple(padding, n, owner, "padding", 0)
        self.dilation, self.padding_mode = _tuple(dilation, n, owner, "dilation"), padding_mode
        if padding == "same" and any(s != 1 for s in self.stride):
            raise ValueError(f"{owner}: padding='same' is not supported for strided convolutions")
        self.weight_init, self.bias_init = weight_init, bias_init
        shape = (out_channels, in_channels // groups, *self.kernel_size)
        self.weight = nn.Parameter(torch.empty(shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(out_channels, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """Initialise as ``torch.nn.Conv*`` does, then apply ``weight_init``/``bias_init``."""
        reset_like_torch(self.weight, self.bias, self.weight_init, self.bias_init, type(self).__name__)

    def _conv(self, x: torch.Tensor) -> torch.Tensor:
        x = expect_tensor(self, x)
        channel_axis = -self.spatial_dims - 1
        if checks_enabled() and (x.dim() < self.spatial_dims + 1 or x.shape[channel_axis] != self.in_channels):
            raise ModifyValueError(
                self, f"expected (N, {self.in_channels}, ...) with {self.spatial_dims} spatial dims, got {describe(x)}"
            )
        conv = F.conv1d if self.spatial_dims == 1 else F.conv2d
        if self.padding_mode == "zeros":
            return conv(x, self.weight, self.bias, self.stride, self.padding, self.dilation, self.groups)
        x = F.pad(x, self._explicit_padding(), mode=self.padding_mode)
        return conv(x, self.weight, self.bias, self.stride, 0, self.dilation, self.groups)

    def _explicit_padding(self) -> list[int]:
        """``F.pad``'s argument (last axis first, left then right), as ``torch.nn.Conv*`` computes it."""
        if self.padding == "valid":
            pairs = [(0, 0)] * self.spatial_dims
        elif self.padding == "same":
            totals = [d * (k - 1) for d, k in zip(self.dilation, self.kernel_size)]
            pairs = [(t // 2, t - t // 2) for t in totals]
        else:
            pairs = [(p, p) for p in self.padding]
        return [side for pair in reversed(pairs) for side in pair]

    def forward(self, x):
        return self._conv(x)

    def extra_repr(self) -> str:
        return (
            f"{self.in_channels}, {self.out_channels}, kernel_size={self.kernel_size}, stride={self.stride}, "
            f"padding={self.padding}, bias={self.bias is not None}"
        )


class Conv1d(_ConvNd):
    """1-D convolution, as ``torch.nn.Conv1d``: sizes are ints or 1-tuples.

    Shape:
        ``(N, C_in, L_in) -> (N, C_out, L_out)`` (``N`` optional), with
        ``L_out = floor((L_in + 2 padding - dilation (kernel_size - 1) - 1) / stride + 1)``;
        e.g. ``Conv1d(C, C, 3, padding=1)``: ``(B, C, T) -> (B, C, T)``.

    Example:
        >>> import torch, modify
        >>> modify.Conv1d(2, 4, 3, padding=1)(torch.zeros(1, 2, 7)).shape
        torch.Size([1, 4, 7])
    """

    spatial_dims = 1


class Conv2d(_ConvNd):
    """2-D convolution, as ``torch.nn.Conv2d``: sizes are ints or pairs ``(height, width)``.

    Shape:
        ``(N, C_in, H_in, W_in) -> (N, C_out, H_out, W_out)`` (``N`` optional), with
        ``H_out = floor((H_in + 2 pH - dH (kH - 1) - 1) / sH + 1)`` and ``W_out`` likewise;
        e.g. ``Conv2d(3, 64, 7, stride=2, padding=3)``: ``(B, 3, 224, 224) -> (B, 64, 112, 112)``.

    Example:
        >>> import torch, modify
        >>> modify.Conv2d(3, 8, 3, stride=2, padding=1)(torch.zeros(1, 3, 8, 8)).shape
        torch.Size([1, 8, 4, 4])
    """

    spatial_dims = 2


class Embedding(Leaf, Unary, Param, NonLinear):
    """Look up rows of a table by integer index, as ``torch.nn.Embedding`` (``F.embedding``).

    Same parameter name, layout and default init (``N(0, 1)``) as ``torch.nn.Embedding``, so its
    ``state_dict`` loads as is.

    Args:
        num_embeddings: rows in the table (the vocabulary size).
        embedding_dim: size of each row.
        padding_idx: a row kept at zero and given no gradient, as ``torch.nn.Embedding``;
            negative counts from the end (default ``None``: no such row).
        weight_init: a ``torch.distributions.Distribution`` sampled to the weight's shape, or a
            callable ``init(tensor) -> None``; default ``N(0, 1)`` (the padding row is then zeroed).
        device: where the weight is allocated (default: torch's default device).
        dtype: the weight's floating-point dtype (default: torch's default dtype).

    Shape:
        ``(*)`` integer ids -> ``(*, embedding_dim)``, e.g. token ids ``(B, T) -> (B, T, embedding_dim)``.

    Attributes:
        weight: ``(num_embeddings, embedding_dim)``.

    Raises:
        TypeError: an argument of the wrong type; a non-floating ``dtype``.
        ValueError: a size below 1; ``padding_idx`` out of range; a weight distribution that is
            not scalar.
        ModifyTypeError: an input that is not a tensor, or a floating-point one.

    Example:
        >>> import torch, modify
        >>> modify.Embedding(10, 4)(torch.tensor([[1, 2, 3]])).shape
        torch.Size([1, 3, 4])
    """

    @typechecked
    def __init__(
        self,
        num_embeddings: int,
        embedding_dim: int,
        padding_idx: int | None = None,
        weight_init: Init = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        check_sizes("Embedding", num_embeddings=num_embeddings, embedding_dim=embedding_dim)
        check_floating_dtype("Embedding", dtype)
        if padding_idx is not None and not -num_embeddings <= padding_idx < num_embeddings:
            raise ValueError(f"Embedding padding_idx {padding_idx} out of range for {num_embeddings} rows")
        self.num_embeddings, self.embedding_dim = num_embeddings, embedding_dim
        self.padding_idx = padding_idx % num_embeddings if padding_idx is not None else None
        self.weight_init = weight_init
        self.weight = nn.Parameter(torch.empty(num_embeddings, embedding_dim, device=device, dtype=dtype))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """``N(0, 1)`` as ``torch.nn.Embedding``, then ``weight_init``, then the padding row to 0."""
        nn.init.normal_(self.weight)
        apply_init(self.weight, self.weight_init, "Embedding.weight")
        if self.padding_idx is not None:
            self.weight[self.padding_idx].fill_(0)

    def forward(self, x):
        x = expect_tensor(self, x)
        if isinstance(x, torch.Tensor) and (x.is_floating_point() or x.is_complex()) and checks_enabled():
            raise ModifyTypeError(self, f"expected integer indices, got {describe(x)}")
        return F.embedding(x, self.weight, self.padding_idx)

    def line_expression(self, writer, value: str) -> str:
        """``F.embedding`` alone (see :mod:`modify._core.straight_line`): it refuses floating indices itself."""
        me = writer.name(self)
        return f"{writer.name(F.embedding)}({value}, {me}.weight, {me}.padding_idx)"

    def extra_repr(self) -> str:
        pad = f", padding_idx={self.padding_idx}" if self.padding_idx is not None else ""
        return f"{self.num_embeddings}, {self.embedding_dim}{pad}"
