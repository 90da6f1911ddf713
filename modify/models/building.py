"""Pieces shared by the models: normalisation pairs and residuals over a carried stream.

(Config checks live in ``_core/arguments.py``.)
"""

from __future__ import annotations

from torch import nn

from ..combinators import Parallel, Sequential
from ..primitives import BatchNorm2d, ElementwiseAffine, Identity, LayerNorm, RMSNorm
from .padding import CarryAdd, Pick


def norm_with_affine(norm: nn.Module, affine: ElementwiseAffine) -> Sequential:
    """A ``torch.nn`` norm with an affine part, as modify writes it: ``Sequential(norm=..., affine=...)``.

    The one layout of the pair, for the models built here and for :func:`modify.convert`'s layers.
    """
    return Sequential(norm=norm, affine=affine)


def layer_norm(features: int, bias: bool, eps: float = 1e-5) -> Sequential:
    """``torch.nn.LayerNorm(features, eps, bias=bias)`` as ``Sequential(norm=..., affine=...)``."""
    return norm_with_affine(LayerNorm(features, eps), ElementwiseAffine(features, bias=bias))


def rms_norm(features: int, eps: float) -> Sequential:
    """``torch.nn.RMSNorm(features, eps)`` (Llama's ``LlamaRMSNorm``) as ``Sequential(norm=..., affine=...)``."""
    return norm_with_affine(RMSNorm(features, eps), ElementwiseAffine(features, bias=False))


def batch_norm(channels: int) -> Sequential:
    """``torch.nn.BatchNorm2d(channels)`` as ``Sequential(norm=..., affine=ElementwiseAffine(C, dim=1))``."""
    return norm_with_affine(BatchNorm2d(channels), ElementwiseAffine(channels, dim=1))


def carried_residual(branch: nn.Module, carried: int) -> Sequential:
    """``(x, *extra) -> (x + branch(x), *extra)`` for ``carried`` extra values (a padded batch's mask, positions).

    ``Residual`` over a stream that carries values past the branch: the branch sits at ``"1.1"``
    as in :class:`~modify.Residual` and sees the plain tensor ``x``.
    """
    rest = tuple(range(1, carried + 1))
    return Sequential(Pick(0, 0, *rest), Parallel(Identity(), branch, *(Identity() for _ in rest)), CarryAdd())
