"""Grouping by identity: the one place modify keys objects by ``id()``."""

from __future__ import annotations

from typing import Callable, Hashable, Iterable, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


def group_by_identity(pairs: Iterable[tuple[K, V]]) -> list[tuple[list[K], V]]:
    """Each distinct object (by ``is``) with every key it came with, in order of first appearance.

    Tensors compare elementwise and modules may define ``__eq__``, so sharing is found by identity:
    tied parameters (one ``Parameter`` under two names) and a module placed at two paths.

    Args:
        pairs: ``(key, object)`` pairs, e.g. ``model.named_parameters(remove_duplicate=False)``.

    Returns:
        ``[(keys, object), ...]``.

    Example:
        >>> import torch
        >>> from modify._core.identity import group_by_identity
        >>> w, b = torch.zeros(2), torch.zeros(2)
        >>> [(keys, obj is w) for keys, obj in group_by_identity([("a", w), ("b", b), ("c", w)])]
        [(['a', 'c'], True), (['b'], False)]
    """
    groups: dict[int, tuple[list[K], V]] = {}
    for key, value in pairs:
        groups.setdefault(id(value), ([], value))[0].append(key)
    return list(groups.values())


def unique(values: Iterable[V]) -> list[V]:
    """``values`` with repeats of one object dropped, in order of first appearance.

    Example:
        >>> from modify._core.identity import unique
        >>> a, b = [], []
        >>> [x is a for x in unique([a, b, a])]
        [True, False]
    """
    return [value for _, value in group_by_identity((None, v) for v in values)]


def once_per_object(make: Callable[..., V]) -> Callable[..., V]:
    """``make`` wrapped to run once per distinct first argument (by ``is``); repeats get that result.

    How a rewriter keeps a module placed at two paths one module in what it builds (a shared
    leaf's replacement is shared too). The arguments are kept alive with their results, so an
    ``id`` is never reused while the wrapper lives.

    Args:
        make: ``(obj, *rest) -> result``; ``rest`` (e.g. the path, for an error message) is
            passed on the first call for ``obj`` only.

    Returns:
        ``(obj, *rest) -> result``.

    Example:
        >>> from modify._core.identity import once_per_object
        >>> calls = []
        >>> box = once_per_object(lambda obj, path: calls.append(path) or [obj])
        >>> shared = object()
        >>> box(shared, "a") is box(shared, "b"), calls
        (True, ['a'])
    """
    made: dict[int, tuple[object, V]] = {}

    def once(obj: object, *rest: object) -> V:
        entry = made.get(id(obj))
        if entry is None:
            entry = made[id(obj)] = (obj, make(obj, *rest))
        return entry[1]

    return once
