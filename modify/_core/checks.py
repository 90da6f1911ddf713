"""Runtime checks of the values a module gets at call: the per-thread flag and every ``expect_*``.

Value checks are plain ``isinstance``/``len``/shape tests, O(1) for a fixed module
(``expect_joinable``: O(number of tensors)); typeguard's ``check_type`` costs ~19 µs a call, too
much per module call. They run only while :func:`checks_enabled`, so compiled graphs contain none
of them, and raise naming the module's path and what arrived. Constructor and rewriter arguments
are checked in :mod:`modify._core.arguments`.
"""

from __future__ import annotations

import contextvars
import math

import torch

from .errors import ModifyTypeError, ModifyValueError, count, describe

# The flag of the calling thread (or asyncio task): a new thread starts with checks on.
_enabled: contextvars.ContextVar[bool] = contextvars.ContextVar("modify_checks", default=True)

# Bound once: dynamo recognises the function object itself (it folds to True while tracing), and a
# module-level name saves two attribute lookups on every call of the hot path.
is_compiling = torch.compiler.is_compiling

# True only while dynamo traces (no TorchScript test, no export flag): one frame instead of
# is_compiling's two. The combinators choose their path by it (non-strict export may run the eager
# one), and the hot checks skip their cheap tests by it, so compiled graphs guard no check's values.
is_dynamo_compiling = torch.compiler.is_dynamo_compiling


class _Restore:
    """Context manager returned by :func:`set_checks`: restores the previous flag on exit."""

    def __init__(self, previous: bool):
        self.previous = previous

    def __enter__(self) -> _Restore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        _enabled.set(self.previous)


def set_checks(flag: bool) -> _Restore:
    """Turn runtime checks on or off, now; the result restores the previous setting on exit.

    Works like ``torch.set_grad_enabled``: a plain call sets the flag until changed, and the
    same call used as a context manager restores the previous value when the block ends. The
    flag covers the O(1) value checks of ``forward`` (arity, tuple lengths, shapes) and the
    argument checks of constructors and rewriters. It belongs to the calling thread (a
    ``contextvars`` context): one thread turning checks off never turns them off for another, and
    a new thread starts with checks on.

    Args:
        flag: ``True`` to check values and arguments (the default), ``False`` to skip checks.

    Returns:
        A context manager; ``with modify.set_checks(False): ...`` turns checks off inside the block
        only. Called as a plain function the setting stays until changed.

    Raises:
        TypeError: if ``flag`` is not a ``bool``.

    Example:
        >>> import modify
        >>> with modify.set_checks(False):
        ...     modify.checks_enabled()
        False
        >>> modify.checks_enabled()
        True
    """
    if not isinstance(flag, bool):
        raise TypeError(f"set_checks expects a bool, got {type(flag).__name__} {flag!r}")
    previous = _enabled.get()
    _enabled.set(flag)
    return _Restore(previous)


def checks_enabled() -> bool:
    """Whether runtime checks run now: on (see :func:`set_checks`), and not inside ``torch.compile``.

    Like ``torch.is_grad_enabled`` for :func:`set_checks`'s flag. Takes no arguments and never
    raises.

    Returns:
        ``True`` when checks are on (the default); ``False`` after ``set_checks(False)``, and
        while ``torch.compile`` traces, so compiled graphs contain no checks.

    Example:
        >>> import modify
        >>> modify.checks_enabled()
        True
    """
    return not is_compiling() and _enabled.get()


def expect_tensor(module: torch.nn.Module, x: object) -> torch.Tensor:
    """Check that a ``Unary`` module got one tensor; return it.

    Raises:
        ModifyTypeError: (a ``TypeError``) naming the module and what arrived.
    """
    if not isinstance(x, torch.Tensor) and checks_enabled():
        raise ModifyTypeError(module, f"expected a tensor, got {describe(x)}")
    return x  # type: ignore[return-value]


def expect_tuple(
    module: torch.nn.Module, x: object, length: int | None = None, slots: tuple[str, str] | None = None
) -> tuple:
    """Check that a module got a tuple (of ``length`` values, when given); return it.

    ``slots`` names what the values feed (``("branch", "branches")``), for a length error that
    reads ``got a tuple of 2 values for 3 branches``.

    Raises:
        ModifyTypeError: (a ``TypeError``) if ``x`` is not a tuple.
        ModifyValueError: (a ``ValueError``) if its length differs.
    """
    if (not isinstance(x, tuple) or (length is not None and len(x) != length)) and checks_enabled():
        if not isinstance(x, tuple):
            want = f"a tuple of {count(length, 'value')}" if length is not None else "a tuple"
            raise ModifyTypeError(module, f"expected {want}, got {describe(x)}")
        if length is not None and len(x) != length:
            if slots is not None:
                raise ModifyValueError(module, f"got a tuple of {count(len(x), 'value')} for {count(length, *slots)}")
            raise ModifyValueError(module, f"expected a tuple of {count(length, 'value')}, got {describe(x)}")
    return x  # type: ignore[return-value]


def expect_tensors(module: torch.nn.Module, x: object, length: int) -> tuple:
    """Like :func:`expect_tuple`, and every element must be a tensor."""
    values = expect_tuple(module, x, length)
    if isinstance(values, tuple):  # not a tuple only with checks off
        for i, v in enumerate(values):
            if not isinstance(v, torch.Tensor) and checks_enabled():
                raise ModifyTypeError(module, f"expected tensors, element {i} of {describe(x)} is not")
    return values


def expect_value(module: torch.nn.Module, x: object) -> object:
    """Check that a module got a value: a tensor or a (nested) tuple of values; return it.

    Raises:
        ModifyTypeError: (a ``TypeError``) naming what arrived (``None``, a list, a dict, ...).
    """
    if not isinstance(x, torch.Tensor) and checks_enabled() and not _is_value(x):
        raise ModifyTypeError(module, f"expected a tensor or a tuple of them, got {describe(x)}")
    return x


def _is_value(x: object) -> bool:
    if isinstance(x, torch.Tensor):
        return True
    return isinstance(x, tuple) and all(_is_value(v) for v in x)


def expect_last_dim(module: torch.nn.Module, x: object, size: int) -> torch.Tensor:
    """Check that ``module`` got a floating (or complex) tensor whose last dimension is ``size``; return it.

    Raises:
        ModifyTypeError: not a tensor, or an integer/bool one. ModifyValueError: another last dimension.
    """
    x = expect_tensor(module, x)
    if is_dynamo_compiling() or not isinstance(x, torch.Tensor):
        return x  # nothing to guard under torch.compile; checks off, or a ModifyTypeError above
    if not (x.shape[-1:] == (size,) and (x.is_floating_point() or x.is_complex())) and checks_enabled():
        if x.shape[-1:] != (size,):
            raise ModifyValueError(module, f"expected last dimension {size}, got {describe(x)}")
        raise ModifyTypeError(module, f"expected a floating-point tensor, got {describe(x)}")
    return x


def expect_trailing(module: torch.nn.Module, x: object, shape: tuple[int, ...]) -> torch.Tensor:
    """Check that ``module`` got a tensor whose trailing axes are ``shape``; return it.

    Raises:
        ModifyTypeError: not a tensor. ModifyValueError: other trailing axes (never broadcast).
    """
    x = expect_tensor(module, x)
    if isinstance(x, torch.Tensor) and x.shape[x.dim() - len(shape) :] != shape and checks_enabled():
        raise ModifyValueError(module, f"expected trailing shape {shape}, got {describe(x)}")
    return x


def expect_channels(module: torch.nn.Module, x: object, channels: int) -> torch.Tensor:
    """Check that ``module`` got a ``(N, channels, *)`` tensor; return it.

    Raises:
        ModifyTypeError: not a tensor. ModifyValueError: fewer than 2 axes, or another axis 1.
    """
    x = expect_tensor(module, x)
    if checks_enabled() and (x.dim() < 2 or x.shape[1] != channels):
        raise ModifyValueError(module, f"expected (N, {channels}, *), got {describe(x)}")
    return x


def expect_floating(module: torch.nn.Module, x: object) -> torch.Tensor:
    """Check that ``module`` got a floating-point tensor; return it.

    Raises:
        ModifyTypeError: not a tensor, or one of an integer, bool or complex dtype.
    """
    x = expect_tensor(module, x)
    if checks_enabled() and not x.is_floating_point():
        raise ModifyTypeError(module, f"expected a floating-point tensor, got {describe(x)}")
    return x


def expect_dims(module: torch.nn.Module, x: object, *dims: int | tuple[int, ...] | None) -> torch.Tensor:
    """Check that ``module`` got a tensor that has every axis in ``dims`` (negative from the end); return it.

    Each of ``dims`` is an axis, a tuple of axes or ``None`` (none); O(1) for a fixed module.

    Raises:
        ModifyTypeError: not a tensor. ModifyValueError: an axis the tensor does not have.
    """
    x = expect_tensor(module, x)
    if isinstance(x, torch.Tensor) and not is_dynamo_compiling():
        rank = max(x.dim(), 1)  # torch lets a 0-d tensor take dim 0 or -1
        for dim in dims:
            for axis in dim if isinstance(dim, tuple) else () if dim is None else (dim,):
                if not -rank <= axis < rank and checks_enabled():
                    raise ModifyValueError(module, f"has no axis {axis} in {describe(x)}")
    return x


def expect_rank(module: torch.nn.Module, x: object, rank: int | None) -> torch.Tensor:
    """Check that ``module`` got a tensor of ``rank`` dimensions (any, for ``None``); return it.

    Raises:
        ModifyTypeError: not a tensor. ModifyValueError: another number of dimensions.
    """
    x = expect_tensor(module, x)
    wrong = rank is not None and not is_dynamo_compiling() and isinstance(x, torch.Tensor) and x.dim() != rank
    if wrong and checks_enabled():
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
