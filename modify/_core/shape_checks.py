"""Shape checks at call beyond arity: axes a tensor must have, ranks, joins, products, reshapes.

Each is O(1) for a fixed module (``expect_joinable``: O(number of tensors)), runs only while
:func:`~modify._core.checks.checks_enabled`, and raises naming the module's path and what arrived.
"""

from __future__ import annotations

import math

import torch

from .checks import checks_enabled, expect_tensor, expect_tensors, expect_tuple
from .errors import ModifyTypeError, ModifyValueError, describe


def expect_dims(module: torch.nn.Module, x: object, *dims: int | tuple[int, ...] | None) -> torch.Tensor:
    """Check that ``module`` got a tensor that has every axis in ``dims`` (negative from the end); return it.

    Each of ``dims`` is an axis, a tuple of axes or ``None`` (none); O(1) for a fixed module.

    Raises:
        ModifyTypeError: not a tensor. ModifyValueError: an axis the tensor does not have.
    """
    x = expect_tensor(module, x)
    if checks_enabled():
        rank = max(x.dim(), 1)  # torch lets a 0-d tensor take dim 0 or -1
        for dim in dims:
            for axis in dim if isinstance(dim, tuple) else () if dim is None else (dim,):
                if not -rank <= axis < rank:
                    raise ModifyValueError(module, f"has no axis {axis} in {describe(x)}")
    return x


def expect_rank(module: torch.nn.Module, x: object, rank: int | None) -> torch.Tensor:
    """Check that ``module`` got a tensor of ``rank`` dimensions (any, for ``None``); return it.

    Raises:
        ModifyTypeError: not a tensor. ModifyValueError: another number of dimensions.
    """
    x = expect_tensor(module, x)
    if checks_enabled() and rank is not None and x.dim() != rank:
        raise ModifyValueError(module, f"expected a {rank}-d tensor, got {describe(x)}")
    return x


def expect_joinable(module: torch.nn.Module, x: object, dim: int, stack: bool) -> tuple:
    """Check that ``module`` got a non-empty tuple of tensors ``torch.cat`` (or ``stack``) joins at ``dim``.

    For ``torch.cat``: one rank, equal sizes except at ``dim``; for ``torch.stack``: one shape.
    O(number of tensors).

    Raises:
        ModifyTypeError: not a tuple of tensors. ModifyValueError: empty, or shapes that do not join.
    """
    values = expect_tuple(module, x)
    if checks_enabled():
        if not values or not all(isinstance(v, torch.Tensor) for v in values):
            raise ModifyTypeError(module, f"expected a non-empty tuple of tensors, got {describe(x)}")
        if not stack and any(v.shape == (0,) for v in values):
            return values  # torch.cat skips 1-d empty tensors whatever the others' shapes
        first = values[0].shape
        rank = max(len(first) + stack, 1)
        if not -rank <= dim < rank:
            raise ModifyValueError(module, f"has no axis {dim} to join {describe(x)} at")
        axis = None if stack else dim % rank
        for v in values[1:]:
            if v.dim() != len(first) or any(a != b for i, (a, b) in enumerate(zip(v.shape, first)) if i != axis):
                joined = "stack tensors of one shape" if stack else f"join tensors equal in all axes but {dim}"
                raise ModifyValueError(module, f"can only {joined}, got {describe(x)}")
    return values


def expect_matmul(module: torch.nn.Module, x: object) -> tuple:
    """Check that ``module`` got ``(a, b)`` whose inner sizes agree for ``torch.matmul``; return it.

    Raises:
        ModifyTypeError: not a pair of tensors. ModifyValueError: 0-d operands or inner sizes that differ.
    """
    a, b = expect_tensors(module, x, 2)
    if checks_enabled() and (a.dim() == 0 or b.dim() == 0 or a.shape[-1] != b.shape[0 if b.dim() == 1 else -2]):
        raise ModifyValueError(module, f"cannot multiply {describe(x)}: a's last axis must be b's second-to-last")
    return a, b


def expect_numel(module: torch.nn.Module, x: object, shape: tuple[int, ...]) -> torch.Tensor:
    """Check that ``module`` got a tensor ``reshape(shape)`` accepts (at most one ``-1`` in ``shape``); return it.

    Raises:
        ModifyTypeError: not a tensor. ModifyValueError: a number of elements ``shape`` cannot hold.
    """
    x = expect_tensor(module, x)
    if checks_enabled():
        known = math.prod(size for size in shape if size != -1)
        fits = x.numel() == known if -1 not in shape else (x.numel() % known == 0 if known else x.numel() == 0)
        if not fits:
            raise ModifyValueError(module, f"cannot reshape {describe(x)} ({x.numel()} elements) to {shape}")
    return x
