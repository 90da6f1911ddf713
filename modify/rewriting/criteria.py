"""The criteria of ``select``: a module class, a trait, a path glob or a predicate, as one test."""

from __future__ import annotations

import fnmatch
from typing import Callable, Union

from torch import nn

from .._core.inference import traits_of
from ..traits import Trait

Criterion = Union[type, str, Callable[[str, nn.Module], bool]]
Match = Callable[[str, nn.Module], bool]


def matcher(where: tuple) -> Match:
    """One predicate ``(path, module) -> bool`` that holds when every criterion in ``where`` does.

    Raises:
        TypeError: a criterion that is neither a module class, a trait, a glob string nor a
            callable; a predicate that returns something other than a ``bool``.
    """
    tests = [_criterion(c) for c in where]
    if len(tests) == 1:
        return tests[0]
    return lambda path, module: all(test(path, module) for test in tests)


def _criterion(criterion: object) -> Match:
    if isinstance(criterion, type) and issubclass(criterion, nn.Module):
        return lambda path, module: isinstance(module, criterion)
    if isinstance(criterion, type) and issubclass(criterion, Trait):
        return lambda path, module: any(issubclass(t, criterion) for t in traits_of(module))
    if isinstance(criterion, str):
        return lambda path, module: fnmatch.fnmatchcase(path, criterion)
    if isinstance(criterion, type):
        raise TypeError(
            f"select: a class criterion must be a torch.nn.Module subclass or a modify trait, got {criterion.__name__}"
        )
    if callable(criterion):
        return _checked_predicate(criterion)
    raise TypeError(f"select: a criterion is a class, a trait, a glob or a predicate, got {type(criterion).__name__}")


def _checked_predicate(predicate: Callable) -> Match:
    def test(path: str, module: nn.Module) -> bool:
        try:
            answer = predicate(path, module)
        except Exception as error:  # the user's own error, kept, told where it happened
            error.add_note(f"select: raised by the predicate {predicate!r} at '{path or '<root>'}'")
            raise
        if not isinstance(answer, bool):
            kind, where = type(answer).__name__, path or "<root>"
            raise TypeError(f"select: predicate {predicate!r} returned {kind} at '{where}', not a bool")
        return answer

    return test
