"""Pieces shared by the models: normalisation pairs, residuals over a carried stream, config checks."""

from __future__ import annotations

import dataclasses
import typing

from torch import nn
from typeguard import CollectionCheckStrategy, TypeCheckError, check_type

from .._core.arguments import refuse_bool
from ..combinators import Parallel, Sequential
from ..primitives import BatchNorm2d, ElementwiseAffine, Identity, LayerNorm, RMSNorm
from .padding import CarryAdd, Pick


def layer_norm(features: int, bias: bool, eps: float = 1e-5) -> Sequential:
    """``torch.nn.LayerNorm(features, eps, bias=bias)`` as ``Sequential(norm=..., affine=...)``."""
    return Sequential(norm=LayerNorm(features, eps), affine=ElementwiseAffine(features, bias=bias))


def rms_norm(features: int, eps: float) -> Sequential:
    """``torch.nn.RMSNorm(features, eps)`` (Llama's ``LlamaRMSNorm``) as ``Sequential(norm=..., affine=...)``."""
    return Sequential(norm=RMSNorm(features, eps), affine=ElementwiseAffine(features, bias=False))


def batch_norm(channels: int) -> Sequential:
    """``torch.nn.BatchNorm2d(channels)`` as ``Sequential(norm=..., affine=ElementwiseAffine(C, dim=1))``."""
    return Sequential(norm=BatchNorm2d(channels), affine=ElementwiseAffine(channels, dim=1))


def carried_residual(branch: nn.Module, carried: int) -> Sequential:
    """``(x, *extra) -> (x + branch(x), *extra)`` for ``carried`` extra values (a padded batch's mask, positions).

    ``Residual`` over a stream that carries values past the branch: the branch sits at ``"1.1"``
    as in :class:`~modify.Residual` and sees the plain tensor ``x``.
    """
    rest = tuple(range(1, carried + 1))
    return Sequential(Pick(0, 0, *rest), Parallel(Identity(), branch, *(Identity() for _ in rest)), CarryAdd())


def check_fields(config: object) -> None:
    """Check a config dataclass's field values against their annotations.

    Raises:
        TypeError: naming the config class, the field, what it got and what it expects.
    """
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):  # type: ignore[arg-type]
        value, hint = getattr(config, item.name), hints[item.name]
        try:
            refuse_bool(value, hint)
            check_type(value, hint, collection_check_strategy=CollectionCheckStrategy.ALL_ITEMS)
        except TypeCheckError as error:
            raise TypeError(f"{type(config).__name__}: field '{item.name}' got {value!r}, which {error}") from None


def check_positive(config: object, *names: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` whose value is not a positive number."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ValueError(f"{type(config).__name__}: {name} must be positive, got {value}")
