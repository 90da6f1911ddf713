"""Pieces shared by the models: the ``Positions`` leaf, normalisation pairs, config checks."""

from __future__ import annotations

import dataclasses
import typing

import torch
from typeguard import CollectionCheckStrategy, TypeCheckError, check_type

from .._core.checks import checks_enabled, expect_tensor, typechecked
from .._core.errors import ModifyValueError, describe
from .._core.module import Leaf
from ..combinators import Sequential
from ..primitives import BatchNorm2d, ElementwiseAffine, LayerNorm, RMSNorm
from ..traits import Linear, ParamFree, Unary


class Positions(Leaf, Unary, ParamFree, Linear):
    """Replace every element by its position along the last axis: ``x -> arange(T)`` broadcast.

    Feeds a learned position embedding from the token ids themselves, so that GPT's input
    stage is pure algebra: ``Fork(Embedding(vocab, C), Sequential(Positions(), Embedding(T_max, C)))``
    followed by ``Add()`` (Radford et al. 2019, GPT-2; nanoGPT's ``pos = torch.arange(0, t)``).
    The output depends on the input's shape only, never its values (a constant map, hence
    tagged ``Linear``).

    Args:
        limit: when given, the number of positions available (``block_size``): a longer
            sequence raises instead of indexing past the position table.

    Shape:
        ``(*, T)`` any dtype -> ``(*, T)`` int64 on the input's device (an expanded view of
        ``arange(T)``; no memory per batch element).

    Raises:
        ModifyValueError: ``T > limit``, or a 0-d input.

    Example:
        >>> import torch
        >>> from modify.models import Positions
        >>> Positions()(torch.tensor([[7, 3, 9], [1, 1, 1]])).tolist()
        [[0, 1, 2], [0, 1, 2]]
    """

    @typechecked
    def __init__(self, limit: int | None = None):
        super().__init__()
        if limit is not None and limit < 1:
            raise ValueError(f"Positions limit must be at least 1, got {limit}")
        self.limit = limit

    def forward(self, x):
        x = expect_tensor(self, x)
        if checks_enabled() and (x.dim() == 0 or (self.limit is not None and x.shape[-1] > self.limit)):
            raise ModifyValueError(self, f"expected (*, T) with T <= {self.limit}, got {describe(x)}")
        return torch.arange(x.shape[-1], device=x.device).expand(x.shape)

    def extra_repr(self) -> str:
        return f"limit={self.limit}" if self.limit is not None else ""


def layer_norm(features: int, bias: bool, eps: float = 1e-5) -> Sequential:
    """``torch.nn.LayerNorm(features, eps, bias=bias)`` as ``Sequential(norm=..., affine=...)``."""
    return Sequential(norm=LayerNorm(features, eps), affine=ElementwiseAffine(features, bias=bias))


def rms_norm(features: int, eps: float) -> Sequential:
    """``torch.nn.RMSNorm(features, eps)`` (Llama's ``LlamaRMSNorm``) as ``Sequential(norm=..., affine=...)``."""
    return Sequential(norm=RMSNorm(features, eps), affine=ElementwiseAffine(features, bias=False))


def batch_norm(channels: int) -> Sequential:
    """``torch.nn.BatchNorm2d(channels)`` as ``Sequential(norm=..., affine=ElementwiseAffine(C, dim=1))``."""
    return Sequential(norm=BatchNorm2d(channels), affine=ElementwiseAffine(channels, dim=1))


def check_fields(config: object) -> None:
    """Check a config dataclass's field values against their annotations.

    Raises:
        TypeError: naming the config class, the field, what it got and what it expects.
    """
    hints = typing.get_type_hints(type(config))
    for item in dataclasses.fields(config):  # type: ignore[arg-type]
        value, hint = getattr(config, item.name), hints[item.name]
        try:
            if isinstance(value, bool) and bool not in _members(hint):
                raise TypeCheckError("is a bool, not a number")
            check_type(value, hint, collection_check_strategy=CollectionCheckStrategy.ALL_ITEMS)
        except TypeCheckError as error:
            raise TypeError(f"{type(config).__name__}: field '{item.name}' got {value!r}, which {error}") from None


def check_positive(config: object, *names: str) -> None:
    """Raise ``ValueError`` naming the first of ``names`` whose value is not a positive number."""
    for name in names:
        value = getattr(config, name)
        if value is not None and value <= 0:
            raise ValueError(f"{type(config).__name__}: {name} must be positive, got {value}")


def _members(hint: object) -> tuple:
    return typing.get_args(hint) if typing.get_args(hint) else (hint,)
