"""Pieces shared by the models: normalisation pairs (config checks live in ``_core/arguments.py``)."""

from __future__ import annotations

from ..combinators import Sequential
from ..primitives import BatchNorm2d, ElementwiseAffine, LayerNorm, RMSNorm


def layer_norm(features: int, bias: bool, eps: float = 1e-5) -> Sequential:
    """``torch.nn.LayerNorm(features, eps, bias=bias)`` as ``Sequential(norm=..., affine=...)``."""
    return Sequential(norm=LayerNorm(features, eps), affine=ElementwiseAffine(features, bias=bias))


def rms_norm(features: int, eps: float) -> Sequential:
    """``torch.nn.RMSNorm(features, eps)`` (Llama's ``LlamaRMSNorm``) as ``Sequential(norm=..., affine=...)``."""
    return Sequential(norm=RMSNorm(features, eps), affine=ElementwiseAffine(features, bias=False))


def batch_norm(channels: int) -> Sequential:
    """``torch.nn.BatchNorm2d(channels)`` as ``Sequential(norm=..., affine=ElementwiseAffine(C, dim=1))``."""
    return Sequential(norm=BatchNorm2d(channels), affine=ElementwiseAffine(channels, dim=1))
