"""Normalisation leaves without an affine part, and the separate ``ElementwiseAffine``.

``LayerNorm(n)`` followed by ``ElementwiseAffine(n)`` equals ``torch.nn.LayerNorm(n)`` with the
same weights; batch normalisation, likewise, is in ``modify.primitives.batchnorm``. Passing
``affine=``/``elementwise_affine=`` to a norm is a ``TypeError`` that says so.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._core.arguments import check_finite, check_floating_dtype, check_sizes, typechecked
from .._core.checks import checks_enabled, expect_channels, expect_tensor, expect_trailing
from .._core.errors import ModifyValueError, describe
from .._core.module import Leaf
from ..traits import Elementwise, Linear, Matrix, NonLinear, Param, ParamFree, Unary, Vector


def no_affine(cls_name: str, **given: object) -> None:
    """Raise ``TypeError`` if an affine argument was given to the norm ``cls_name``."""
    for name, value in given.items():
        if value is not None:
            raise TypeError(
                f"{cls_name} has no affine part, so '{name}=' is not accepted; follow it with "
                f"modify.ElementwiseAffine(...) (see its docstring)"
            )


@torch.no_grad()
def reset_affine(weight: torch.Tensor, bias: torch.Tensor | None) -> None:
    """Weight to ones, bias (if any) to zeros: ``torch.nn`` norms' affine init."""
    weight.fill_(1.0)
    if bias is not None:
        bias.zero_()


def as_shape(value: int | tuple[int, ...] | list[int], owner: str) -> tuple[int, ...]:
    """``n`` as ``(n,)``; a tuple or list of ints as a tuple.

    Raises:
        ValueError: naming ``owner``: an empty shape or a size below 1.
    """
    shape = (value,) if isinstance(value, int) else tuple(value)
    if not shape or any(size < 1 for size in shape):
        raise ValueError(f"{owner}: shape must be non-empty sizes of at least 1, got {value}")
    return shape


def trailing_scope(traits: frozenset[type], normalized_shape: tuple[int, ...]) -> frozenset[type]:
    """The instance's scope: ``Vector`` over one trailing axis, ``Matrix`` over two, else none."""
    scope = {1: {Vector}, 2: {Matrix}}.get(len(normalized_shape), set())
    return (traits - {Vector, Matrix}) | scope


class ElementwiseAffine(Leaf, Unary, Param, Linear, Elementwise):
    """``x * weight + bias`` with parameters of shape ``shape`` placed at dimension ``dim``.

    The affine part of ``torch.nn.LayerNorm``, ``RMSNorm``, ``GroupNorm`` and ``BatchNorm*``
    (their ``weight`` and ``bias``, with the same names, shapes and init), as a leaf of its own.
    For ``dim >= 0`` the parameters' first axis lines up with input axis ``dim``; for ``dim < 0``
    their last axis lines up with input axis ``dim`` (so the default ``dim=-1`` is trailing,
    like broadcasting). BatchNorm2d's affine is ``ElementwiseAffine(C, dim=1)``.

    Args:
        shape: the parameters' shape (int or tuple).
        bias: learn a bias (default ``True``).
        dim: where the parameters sit (default ``-1``).
        device: where the parameters are allocated (default: torch's default device).
        dtype: the parameters' floating-point dtype (default: torch's default dtype).

    Shape:
        ``(*) -> (*)``; the input's axes at ``dim`` must equal ``shape`` exactly, e.g.
        ``ElementwiseAffine(C)``: ``(B, T, C) -> (B, T, C)``; ``ElementwiseAffine(C, dim=1)``:
        ``(N, C, H, W) -> (N, C, H, W)``.

    Attributes:
        weight: ``shape``, initialised to ones.
        bias: ``shape``, initialised to zeros, or ``None`` with ``bias=False``.

    Raises:
        TypeError: an argument of the wrong type.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: the input's axes at ``dim`` differ from ``shape`` (never broadcast).

    Example:
        >>> import torch, modify
        >>> affine = modify.ElementwiseAffine(3, dim=1)
        >>> affine(torch.ones(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    @typechecked
    def __init__(
        self,
        shape: int | tuple[int, ...] | list[int],
        bias: bool = True,
        dim: int = -1,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        check_floating_dtype("ElementwiseAffine", dtype)
        self.shape, self.dim = as_shape(shape, "ElementwiseAffine"), dim
        self.weight = nn.Parameter(torch.empty(self.shape, device=device, dtype=dtype))
        self.bias = nn.Parameter(torch.empty(self.shape, device=device, dtype=dtype)) if bias else None
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weight to ones, bias to zeros (``torch.nn`` norms' affine init)."""
        reset_affine(self.weight, self.bias)

    def span(self, ndim: int) -> tuple[int, int]:
        """The input axes ``[start, stop)`` the parameters cover for an input of ``ndim`` dims.

        Args:
            ndim: the input's number of dimensions.

        Returns:
            ``(start, stop)``; ``start`` is negative when ``ndim`` is too small for ``shape``.

        Example:
            >>> import modify
            >>> modify.ElementwiseAffine(3, dim=1).span(4), modify.ElementwiseAffine((4, 5)).span(3)
            ((1, 2), (1, 3))
        """
        k = len(self.shape)
        start = self.dim if self.dim >= 0 else ndim + self.dim - k + 1
        return start, start + k

    def forward(self, x):
        x = expect_tensor(self, x)
        start, stop = self.span(x.dim())
        if checks_enabled() and (start < 0 or x.shape[start:stop] != self.shape):
            raise ModifyValueError(self, f"expected axes {start}..{stop - 1} of size {self.shape}, got {describe(x)}")
        trailing = (1,) * (x.dim() - stop)
        weight = self.weight.view(self.shape + trailing) if trailing else self.weight
        if self.bias is None:
            return x * weight
        bias = self.bias.view(self.shape + trailing) if trailing else self.bias
        return torch.addcmul(bias, x, weight)

    def extra_repr(self) -> str:
        return f"{self.shape}, bias={self.bias is not None}, dim={self.dim}"


class LayerNorm(Leaf, Unary, ParamFree, NonLinear, Vector):
    """Normalise over the trailing ``normalized_shape`` axes, as ``torch.nn.LayerNorm`` without affine.

    Ba et al. 2016, "Layer Normalization"; runs ``F.layer_norm`` with no weight or bias.
    ``LayerNorm(n)`` followed by ``ElementwiseAffine(n)`` equals ``torch.nn.LayerNorm(n)``.

    Args:
        normalized_shape: the trailing shape normalised over (int or tuple). The class is
            tagged ``Vector``; ``modify.traits_of`` says ``Matrix`` for two trailing axes.
        eps: added to the variance (default ``1e-5``).
        elementwise_affine: not accepted (keyword only): passing it raises ``TypeError``; follow
            the norm with :class:`ElementwiseAffine`.
        bias: not accepted either (keyword only): passing it raises ``TypeError``.

    Shape:
        ``(*, *normalized_shape) -> same``, e.g. ``LayerNorm(C)``: ``(B, T, C) -> (B, T, C)``.

    Raises:
        TypeError: ``elementwise_affine=`` or ``bias=`` given (use :class:`ElementwiseAffine`);
            an argument of the wrong type.
        ValueError: a size below 1; ``eps`` not positive and finite.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: trailing shape differs from ``normalized_shape``.

    Example:
        >>> import torch, modify
        >>> modify.LayerNorm(4)(torch.arange(8.0).reshape(2, 4)).mean(-1).abs().max() < 1e-6
        tensor(True)
    """

    @typechecked
    def __init__(
        self,
        normalized_shape: int | tuple[int, ...] | list[int],
        eps: float = 1e-5,
        *,
        elementwise_affine: object = None,
        bias: object = None,
    ):
        super().__init__()
        no_affine("LayerNorm", elementwise_affine=elementwise_affine, bias=bias)
        check_finite("LayerNorm", positive=True, eps=eps)
        self.normalized_shape, self.eps = as_shape(normalized_shape, "LayerNorm"), float(eps)

    def forward(self, x):
        x = expect_trailing(self, x, self.normalized_shape)
        return F.layer_norm(x, self.normalized_shape, None, None, self.eps)

    def _infer_traits(self) -> frozenset[type]:
        return trailing_scope(super()._infer_traits(), self.normalized_shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps:g}"


class RMSNorm(Leaf, Unary, ParamFree, NonLinear, Vector):
    """``x / sqrt(mean(x^2) + eps)`` over the trailing axes, as ``torch.nn.RMSNorm`` without weight.

    Zhang & Sennrich 2019, "Root Mean Square Layer Normalization"; used by Llama. Runs
    ``F.rms_norm`` with no weight; ``RMSNorm(n)`` followed by ``ElementwiseAffine(n, bias=False)``
    equals ``torch.nn.RMSNorm(n)``.

    Args:
        normalized_shape: the trailing shape normalised over (int or tuple).
        eps: added to the mean square; ``None`` (default) uses ``torch.finfo(x.dtype).eps``.
        elementwise_affine: not accepted (keyword only): passing it raises ``TypeError``; follow
            the norm with ``ElementwiseAffine(n, bias=False)``.

    Shape:
        ``(*, *normalized_shape) -> same``, e.g. ``RMSNorm(C)``: ``(B, T, C) -> (B, T, C)``.

    Raises:
        TypeError: ``elementwise_affine=`` given (use :class:`ElementwiseAffine` with
            ``bias=False``); an argument of the wrong type.
        ValueError: a size below 1; ``eps`` (when given) not positive and finite.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: trailing shape differs from ``normalized_shape``.

    Example:
        >>> import torch, modify
        >>> modify.RMSNorm(2)(torch.tensor([[3.0, 4.0]])).pow(2).mean().round()
        tensor(1.)
    """

    @typechecked
    def __init__(
        self,
        normalized_shape: int | tuple[int, ...] | list[int],
        eps: float | None = None,
        *,
        elementwise_affine: object = None,
    ):
        super().__init__()
        no_affine("RMSNorm", elementwise_affine=elementwise_affine)
        check_finite("RMSNorm", positive=True, eps=eps)
        self.normalized_shape, self.eps = as_shape(normalized_shape, "RMSNorm"), eps

    def forward(self, x):
        x = expect_trailing(self, x, self.normalized_shape)
        return F.rms_norm(x, self.normalized_shape, None, self.eps)

    def _infer_traits(self) -> frozenset[type]:
        return trailing_scope(super()._infer_traits(), self.normalized_shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}"


class GroupNorm(Leaf, Unary, ParamFree, NonLinear):
    """Normalise over groups of channels, as ``torch.nn.GroupNorm`` without affine.

    Wu & He 2018, "Group Normalization"; runs ``F.group_norm`` with no weight or bias.
    ``GroupNorm(G, C)`` followed by ``ElementwiseAffine(C, dim=1)`` equals
    ``torch.nn.GroupNorm(G, C)``.

    Args:
        num_groups: groups the channels are split into.
        num_channels: channels ``C`` (axis 1), divisible by ``num_groups``.
        eps: added to the variance (default ``1e-5``).
        affine: not accepted (keyword only): passing it raises ``TypeError``; follow the norm
            with ``ElementwiseAffine(C, dim=1)``.

    Shape:
        ``(N, C, *) -> same``, e.g. ``(B, C, H, W) -> (B, C, H, W)``; statistics per sample and
        group of ``C / num_groups`` channels.

    Raises:
        TypeError: ``affine=`` given; an argument of the wrong type.
        ValueError: a size below 1; ``num_channels % num_groups != 0``; ``eps`` not positive and
            finite.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: input whose axis 1 is not ``num_channels``.

    Example:
        >>> import torch, modify
        >>> modify.GroupNorm(2, 4)(torch.randn(3, 4, 5)).shape
        torch.Size([3, 4, 5])
    """

    @typechecked
    def __init__(self, num_groups: int, num_channels: int, eps: float = 1e-5, *, affine: object = None):
        super().__init__()
        no_affine("GroupNorm", affine=affine)
        check_sizes("GroupNorm", num_groups=num_groups, num_channels=num_channels)
        if num_channels % num_groups:
            raise ValueError(f"GroupNorm: num_channels {num_channels} not divisible by num_groups {num_groups}")
        check_finite("GroupNorm", positive=True, eps=eps)
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, float(eps)

    def forward(self, x):
        return F.group_norm(expect_channels(self, x, self.num_channels), self.num_groups, None, None, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps:g}"
