"""Batch normalisation without an affine part: ``BatchNorm1d``, ``BatchNorm2d``.

``BatchNorm2d(C)`` followed by ``ElementwiseAffine(C, dim=1)`` equals ``torch.nn.BatchNorm2d(C)``;
the running statistics are buffers with ``torch.nn``'s names.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._core.arguments import check_finite, check_floating_dtype, check_sizes, typechecked
from .._core.checks import checks_enabled, expect_tensor
from .._core.errors import ModifyValueError, describe
from .._core.module import Leaf
from ..traits import NonLinear, ParamFree, Unary
from .norms import no_affine


class _BatchNorm(Leaf, Unary, ParamFree, NonLinear):
    """Batch normalisation without affine: the family of ``BatchNorm1d`` and ``BatchNorm2d``.

    Ioffe & Szegedy 2015, "Batch Normalization"; runs ``F.batch_norm``. In training (or without
    running statistics) it normalises with the batch's statistics and updates the running ones;
    in eval mode it uses the running ones. Keeps ``running_mean``, ``running_var`` and
    ``num_batches_tracked`` as buffers with ``torch.nn``'s names, so its ``state_dict`` loads as
    is. The affine part is a separate ``ElementwiseAffine(C, dim=1)``.

    Args:
        num_features: channels ``C`` (axis 1).
        eps: added to the variance (default ``1e-5``).
        momentum: weight of the new batch in the running statistics (default ``0.1``); ``None``
            means a cumulative average over all batches seen, as ``torch.nn``.
        track_running_stats: keep running statistics as buffers (default ``True``); ``False``
            uses the batch's statistics in eval mode too and stores ``None`` buffers.
        affine: not accepted (keyword only): passing it raises ``TypeError``; follow the norm
            with ``ElementwiseAffine(C, dim=1)``.
        device: where the buffers are allocated (default: torch's default device).
        dtype: the running statistics' floating-point dtype (default: torch's default dtype).

    Attributes:
        running_mean: ``(C,)`` buffer, zeros at first.
        running_var: ``(C,)`` buffer, ones at first.
        num_batches_tracked: ``()`` int64 buffer, the training batches seen.

    Raises:
        TypeError: ``affine=`` given; an argument of the wrong type; a non-floating ``dtype``.
        ValueError: ``num_features`` below 1; ``eps`` not positive and finite; ``momentum``
            outside ``[0, 1]``.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: an input of another rank, or without ``C`` channels at axis 1.
    """

    input_dims: tuple[int, ...] = ()

    @typechecked
    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: float | None = 0.1,
        track_running_stats: bool = True,
        *,
        affine: object = None,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        no_affine(type(self).__name__, affine=affine)
        check_sizes(type(self).__name__, num_features=num_features)
        check_floating_dtype(type(self).__name__, dtype)
        check_finite(type(self).__name__, positive=True, eps=eps)
        if momentum is not None and not 0.0 <= momentum <= 1.0:
            raise ValueError(f"{type(self).__name__}: momentum must be in [0, 1] or None, got {momentum}")
        self.num_features, self.eps, self.momentum = num_features, float(eps), momentum
        self.track_running_stats = track_running_stats
        if track_running_stats:
            self.register_buffer("running_mean", torch.zeros(num_features, device=device, dtype=dtype))
            self.register_buffer("running_var", torch.ones(num_features, device=device, dtype=dtype))
            self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long, device=device))
        else:
            self.running_mean = self.running_var = self.num_batches_tracked = None

    def forward(self, x):
        x = expect_tensor(self, x)
        if checks_enabled() and (x.dim() not in self.input_dims or x.shape[1] != self.num_features):
            dims = " or ".join(f"{d}-d" for d in self.input_dims)
            detail = f"expected {dims} input with {self.num_features} channels at axis 1, got {describe(x)}"
            raise ModifyValueError(self, detail)
        use_batch_stats = self.training or not self.track_running_stats
        momentum = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:
                momentum = 1.0 / float(self.num_batches_tracked)
        return F.batch_norm(
            x,
            self.running_mean if not self.training or self.track_running_stats else None,
            self.running_var if not self.training or self.track_running_stats else None,
            None,
            None,
            use_batch_stats,
            momentum,
            self.eps,
        )

    def extra_repr(self) -> str:
        stats = f"track_running_stats={self.track_running_stats}"
        return f"{self.num_features}, eps={self.eps:g}, momentum={self.momentum}, {stats}"


class BatchNorm1d(_BatchNorm):
    """Batch normalisation over ``(N, C)`` or ``(N, C, L)``, as ``torch.nn.BatchNorm1d`` without affine.

    Shape:
        ``(N, C)`` or ``(N, C, L)`` -> the same shape, e.g. ``(B, C, T) -> (B, C, T)``; statistics per
        channel ``C`` over ``N`` (and ``L``).

    Example:
        >>> import torch, modify
        >>> modify.BatchNorm1d(3)(torch.randn(4, 3)).shape
        torch.Size([4, 3])
    """

    input_dims = (2, 3)


class BatchNorm2d(_BatchNorm):
    """Batch normalisation over ``(N, C, H, W)``, as ``torch.nn.BatchNorm2d`` without affine.

    Shape:
        ``(N, C, H, W) -> (N, C, H, W)``; statistics per channel ``C`` over ``N``, ``H`` and ``W``.

    Example:
        >>> import torch, modify
        >>> modify.BatchNorm2d(3)(torch.randn(2, 3, 4, 4)).shape
        torch.Size([2, 3, 4, 4])
    """

    input_dims = (4,)
