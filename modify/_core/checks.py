"""Runtime checks: O(1) value checks on the hot path, type checks on the public API.

Value checks are plain ``isinstance``/``len`` tests (typeguard's ``check_type`` costs ~19 µs a
call, too much per module call). They are skipped while ``torch.compile`` traces, so compiled
graphs contain none of them. Public constructors and rewriters check their arguments against
their annotations with typeguard.
"""

from __future__ import annotations

import collections.abc
import functools
import inspect
import types
import typing
from typing import Any, Callable, TypeVar

import torch
from typeguard import TypeCheckError, check_type

from .errors import ModifyTypeError, ModifyValueError, count, describe

_enabled = True

F = TypeVar("F", bound=Callable[..., Any])


class _Restore:
    """Context manager returned by :func:`set_checks`: restores the previous flag on exit."""

    def __init__(self, previous: bool):
        self.previous = previous

    def __enter__(self) -> _Restore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        global _enabled
        _enabled = self.previous


def set_checks(flag: bool) -> _Restore:
    """Turn runtime checks on or off, now; the result restores the previous setting on exit.

    Works like ``torch.set_grad_enabled``: a plain call sets the flag until changed, and the
    same call used as a context manager restores the previous value when the block ends. The
    flag covers the O(1) value checks of ``forward`` (arity, tuple lengths, shapes) and the
    argument checks of constructors and rewriters; it is global to the process, not per thread.

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
    global _enabled
    if not isinstance(flag, bool):
        raise TypeError(f"set_checks expects a bool, got {type(flag).__name__}")
    previous, _enabled = _enabled, flag
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
    return _enabled and not torch.compiler.is_compiling()


def expect_tensor(module: torch.nn.Module, x: object) -> torch.Tensor:
    """Check that a ``Unary`` module got one tensor; return it.

    Raises:
        ModifyTypeError: (a ``TypeError``) naming the module and what arrived.
    """
    if _enabled and not isinstance(x, torch.Tensor) and not torch.compiler.is_compiling():
        raise ModifyTypeError(module, f"expected a tensor, got {describe(x)}")
    return x  # type: ignore[return-value]


def expect_tuple(module: torch.nn.Module, x: object, length: int | None = None) -> tuple:
    """Check that a module got a tuple (of ``length`` values, when given); return it.

    Raises:
        ModifyTypeError: (a ``TypeError``) if ``x`` is not a tuple.
        ModifyValueError: (a ``ValueError``) if its length differs.
    """
    if _enabled and not torch.compiler.is_compiling():
        if not isinstance(x, tuple):
            want = f"a tuple of {count(length, 'value')}" if length is not None else "a tuple"
            raise ModifyTypeError(module, f"expected {want}, got {describe(x)}")
        if length is not None and len(x) != length:
            raise ModifyValueError(module, f"expected a tuple of {count(length, 'value')}, got {describe(x)}")
    return x  # type: ignore[return-value]


def expect_tensors(module: torch.nn.Module, x: object, length: int) -> tuple:
    """Like :func:`expect_tuple`, and every element must be a tensor."""
    values = expect_tuple(module, x, length)
    if _enabled and not torch.compiler.is_compiling():
        for i, v in enumerate(values):
            if not isinstance(v, torch.Tensor):
                raise ModifyTypeError(module, f"expected tensors, element {i} of {describe(x)} is not")
    return values


_SIMPLE = {int: (int,), float: (int, float), bool: (bool,), str: (str,)}


def _admits_bool(hint: Any) -> bool:
    """Whether ``hint`` names ``bool`` (or anything) itself; ``int``/``float`` do not count."""
    if hint in (bool, object, Any):
        return True
    return any(_admits_bool(arg) for arg in typing.get_args(hint)) if _is_union(hint) else False


def _is_union(hint: Any) -> bool:
    return typing.get_origin(hint) in (typing.Union, types.UnionType)


def _plain_types(hint: Any) -> tuple[type, ...] | None:
    """The classes an annotation made only of plain classes (and unions of them) admits, else ``None``."""
    if _is_union(hint):
        parts = [_plain_types(arg) for arg in typing.get_args(hint)]
        return None if any(p is None for p in parts) else tuple(t for p in parts for t in p)
    if hint is None or hint is type(None):
        return (type(None),)
    if typing.get_origin(hint) is collections.abc.Callable or hint is collections.abc.Callable:
        return (collections.abc.Callable,)  # callable(value); its signature is not inspected
    if isinstance(hint, type) and typing.get_origin(hint) is None and hint not in (object, Any) and _instance_checkable(hint):
        return _SIMPLE.get(hint, (hint,))
    return None


def _instance_checkable(cls: type) -> bool:
    """Whether ``isinstance(value, cls)`` works (not for typing's special forms or static protocols)."""
    try:
        isinstance(None, cls)
    except TypeError:
        return False
    return True


def _name(cls: type) -> str:
    """How an error names what was expected: ``int``, ``None``, ``Callable``."""
    return {collections.abc.Callable: "Callable", type(None): "None"}.get(cls, cls.__name__)


def _checker(hint: Any) -> Callable[[Any], None]:
    """A checker for one annotation: ``isinstance`` for plain classes and unions of them, typeguard otherwise.

    A ``bool`` is refused where the annotation asks for a number (``Copy(True)`` is a mistake,
    although ``bool`` subclasses ``int``).
    """
    simple = _plain_types(hint)
    no_bool = not _admits_bool(hint)

    def check(value: Any) -> None:
        if no_bool and isinstance(value, bool):
            raise TypeCheckError("is a bool, not a number")
        if simple is None:
            check_type(value, hint)
        elif not isinstance(value, simple):
            raise TypeCheckError(f"is not an instance of {' or '.join(map(_name, simple))}")

    return check


def typechecked(fn: F) -> F:
    """Decorate a public function or constructor to check its arguments with typeguard.

    The annotations are resolved on the first call. A mismatch raises ``TypeError`` naming the
    function, the argument and what arrived. ``modify.set_checks(False)`` skips the checks.
    """
    signature = inspect.signature(fn)
    bind = _binder(signature)
    checkers: dict[str, tuple[inspect._ParameterKind, Callable[[Any], None]]] = {}
    resolved = False

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        nonlocal resolved
        if _enabled:
            if not resolved:
                hints = typing.get_type_hints(fn)
                for name, param in signature.parameters.items():
                    if name in hints and name != "return":
                        checkers[name] = (param.kind, _checker(hints[name]))
                resolved = True
            _check_arguments(fn, checkers, bind(args, kwargs), args)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _binder(signature: inspect.Signature) -> Callable[[tuple, dict], dict[str, Any]]:
    """``(args, kwargs) -> signature.bind(*args, **kwargs).arguments``, cheap in the common case.

    The common case is a signature of plain and keyword-only parameters called with no more
    positional arguments than it has and keywords it names, each once; anything else goes through
    ``bind`` (and its errors).
    """
    kinds = [p.kind for p in signature.parameters.values()]
    names = frozenset(signature.parameters)
    positional = tuple(signature.parameters)[: kinds.count(inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    simple = {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
    plain = kinds == sorted(kinds) and set(kinds) <= simple

    def bind(args: tuple, kwargs: dict) -> dict[str, Any]:
        if plain and len(args) <= len(positional) and kwargs.keys() <= names - set(positional[: len(args)]):
            arguments = dict(zip(positional, args))
            arguments.update(kwargs)
            return arguments
        return signature.bind(*args, **kwargs).arguments

    return bind


def _check_arguments(fn: Callable, checkers: dict, arguments: dict[str, Any], args: tuple) -> None:
    for arg, value in arguments.items():
        entry = checkers.get(arg)
        if entry is None:
            continue
        kind, check = entry
        if kind is inspect.Parameter.VAR_POSITIONAL:
            items = list(enumerate(value))
        elif kind is inspect.Parameter.VAR_KEYWORD:
            items = list(value.items())
        else:
            items = [(None, value)]
        for key, item in items:
            try:
                check(item)
            except TypeCheckError as error:
                name = fn.__qualname__.removesuffix(".__init__")
                if fn.__name__ == "__init__" and args:
                    name = type(args[0]).__name__  # the public subclass, not a private base such as _ConvNd
                where = arg if key is None else f"{arg}[{key!r}]"
                raise TypeError(f"{name}: argument '{where}' got {_brief(item)}, which {error}") from None


def _brief(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"
