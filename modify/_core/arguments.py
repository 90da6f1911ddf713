"""Argument checks of the public API: constructors and rewriters, at call time of those only.

Annotations are checked with typeguard (an ``isinstance`` fast path for plain classes and unions of
them); sizes, finiteness, dtypes and child names by the ``check_*`` helpers. Errors are
``TypeError``/``ValueError`` naming the callable (``Conv2d``, ``lora``) and what arrived.
``modify.set_checks(False)`` skips the typeguard checks.
"""

from __future__ import annotations

import collections.abc
import dataclasses
import functools
import inspect
import math
import types
import typing
from typing import Any, Callable, TypeVar

import torch
from typeguard import CollectionCheckStrategy, TypeCheckError, check_type

from .checks import checks_enabled

F = TypeVar("F", bound=Callable[..., Any])


def check_sizes(owner: str, **sizes: int) -> None:
    """Raise ``ValueError`` naming ``owner`` and the first of ``sizes`` that is not positive."""
    for name, value in sizes.items():
        if value < 1:
            raise ValueError(f"{owner}: {name} must be at least 1, got {value}")


def check_finite(owner: str, *, positive: bool = False, **values: float | None) -> None:
    """Raise ``ValueError`` naming ``owner`` and the first of ``values`` not finite (and ``> 0`` when ``positive``).

    ``None`` passes (the argument's default); booleans and other non-numbers are for typeguard.
    """
    for name, value in values.items():
        if value is not None and not (math.isfinite(value) and (value > 0 or not positive)):
            raise ValueError(f"{owner}: {name} must be {'positive and ' if positive else ''}finite, got {value}")


def check_floating_dtype(owner: str, dtype: torch.dtype | None) -> None:
    """Raise ``TypeError`` naming ``owner`` unless ``dtype`` is ``None`` or a floating-point dtype."""
    if dtype is not None and not dtype.is_floating_point:
        raise TypeError(f"{owner}: dtype must be a floating-point dtype, got {dtype}")


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


def check_adapter_settings(owner: str, rank: int, alpha: float | None, dropout: float) -> float:
    """A low-rank adapter's checked ``alpha`` (``rank`` when ``None``).

    Raises:
        ValueError: ``rank < 1``, ``alpha`` nan or infinite, ``dropout`` outside ``[0, 1)``, the
            message starting with ``owner`` (the class or function called).
    """
    if rank < 1:
        raise ValueError(f"{owner}: rank must be at least 1, got {rank}")
    alpha = float(rank) if alpha is None else float(alpha)
    if not math.isfinite(alpha):
        raise ValueError(f"{owner}: alpha must be a finite number, got {alpha}")
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"{owner}: dropout must be in [0, 1), got {dropout}")
    return alpha


def check_child_name(parent: torch.nn.Module, name: object) -> None:
    """Raise if ``name`` cannot name a new child of the combinator ``parent``.

    A child name is a non-empty ``str`` without ``"."`` (paths are dotted) that is not already an
    attribute of ``parent`` (``"training"``, ``"forward"``, ``"state_dict"``, ...).

    Raises:
        TypeError: a name that is not a ``str``. ValueError: an empty, dotted or reserved name.
    """
    owner = type(parent).__name__
    if not isinstance(name, str):
        raise TypeError(f"{owner}: child names are str, got {type(name).__name__} {name!r}")
    if not name or "." in name or (hasattr(parent, name) and name not in parent._modules):
        why = "empty" if not name else "dotted" if "." in name else f"an attribute of {owner}"
        raise ValueError(f"{owner}: child name {name!r} is {why}; use a plain identifier such as 'attn'")


def refuse_bool(value: Any, hint: Any) -> None:
    """Raise ``TypeCheckError`` for a ``bool`` where ``hint`` asks for a number.

    ``bool`` subclasses ``int``, but ``Copy(True)`` or ``n_layer=True`` is a mistake.
    """
    if isinstance(value, bool) and not _admits_bool(hint):
        raise TypeCheckError("is a bool, not a number")


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
        if checks_enabled():
            if not resolved:
                hints = typing.get_type_hints(fn)
                for name, param in signature.parameters.items():
                    if name in hints and name != "return":
                        checkers[name] = (param.kind, _checker(hints[name]))
                resolved = True
            _check_arguments(fn, signature, checkers, bind(fn, args, kwargs), args)
        return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]


def _binder(signature: inspect.Signature) -> Callable[[Callable, tuple, dict], dict[str, Any]]:
    """``(fn, args, kwargs) -> signature.bind(*args, **kwargs).arguments``, cheap in the common case.

    The common case is a signature of plain and keyword-only parameters called with no more
    positional arguments than it has and keywords it names, each once, every required one given;
    anything else goes through ``bind``, whose errors name the callable (``Linear() missing a
    required argument: 'out_features'``).
    """
    kinds = [p.kind for p in signature.parameters.values()]
    names = frozenset(signature.parameters)
    positional = tuple(signature.parameters)[: kinds.count(inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    required = frozenset(n for n, p in signature.parameters.items() if p.default is inspect.Parameter.empty)
    simple = {inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY}
    plain = kinds == sorted(kinds) and set(kinds) <= simple

    def bind(fn: Callable, args: tuple, kwargs: dict) -> dict[str, Any]:
        if plain and len(args) <= len(positional):
            given = positional[: len(args)]
            if kwargs.keys() <= names - set(given) and required <= kwargs.keys() | set(given):
                arguments = dict(zip(positional, args))
                arguments.update(kwargs)
                return arguments
        try:
            return signature.bind(*args, **kwargs).arguments
        except TypeError as error:
            raise TypeError(f"{_callable_name(fn, signature, args)}() {error}") from None

    return bind


def _callable_name(fn: Callable, signature: inspect.Signature, args: tuple) -> str:
    """``Conv2d`` for a constructor (the class called, not a private base), ``Class.method``, ``function``."""
    name = fn.__qualname__.removesuffix(".__init__")
    if args and next(iter(signature.parameters), None) in ("self", "cls"):
        owner = args[0] if isinstance(args[0], type) else type(args[0])
        name = owner.__name__ if fn.__name__ == "__init__" else f"{owner.__name__}.{fn.__name__}"
    return name


def _check_arguments(fn: Callable, signature: inspect.Signature, checkers: dict, arguments: dict, args: tuple) -> None:
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
            if arg == "where":
                _refuse_list_criterion(_callable_name(fn, signature, args), item)
            try:
                check(item)
            except TypeCheckError as error:
                where = arg if key is None else f"{arg}[{key!r}]"
                name = _callable_name(fn, signature, args)
                raise TypeError(f"{name}: argument '{where}' got {_brief(item)}, which {error}") from None


def _refuse_list_criterion(owner: str, where: Any) -> None:
    """Raise ``TypeError`` for a ``list`` (or set) given as a ``where=`` criterion, naming ``any_of``.

    PEFT's ``target_modules=["c_attn", "c_fc"]`` means *any of* these names; in modify a tuple
    means *all of* its criteria, and ``modify.any_of("*.c_attn", "*.c_fc")`` is the one
    criterion that holds when any does. A list inside a tuple of criteria is refused the same way.
    """
    if isinstance(where, tuple):
        for criterion in where:
            _refuse_list_criterion(owner, criterion)
    if not isinstance(where, (list, set, frozenset)):
        return
    shown = ", ".join(repr(f"*.{c}" if isinstance(c, str) and "*" not in c else c) for c in where)
    raise TypeError(
        f"{owner}: argument 'where' got a {type(where).__name__} {repr(where)[:80]}; a {type(where).__name__} is not "
        f"a criterion. For PEFT's target_modules (any of these layers) write where=modify.any_of({shown}); "
        "a tuple means all of its criteria must hold"
    )


def _brief(value: Any) -> str:
    text = repr(value)
    return f"{type(value).__name__} {text[:60]}"
