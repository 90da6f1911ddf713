"""The criteria of ``select``: a module class, a trait, a path glob or a predicate, as one test.

A tuple of criteria means *all of* them (as ``select(model, *where)`` does); :func:`any_of` is the
one criterion that holds when any of its criteria does. A glob matches a module's path or its
``reference_name`` (the name the reference implementation gives the layer). A module that a rewrite
put in a layer's place takes the layer's name (a LoRA block, a wrapper), and the layer inside it
keeps it: there the name belongs to the outermost matching module, so ``select`` passes the paths
whose name an enclosing selected module carries as ``shadowed``, and a glob matches those by path
only.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Container
from typing import Callable, Union

from torch import nn

from .._core.inference import traits_of
from .._core.module import ModifyModule
from ..traits import Trait

Criterion = Union[type, str, Callable[[str, nn.Module], bool]]
Where = Union[Criterion, tuple[Criterion, ...]]
Match = Callable[[str, nn.Module], bool]


class AnyOf:
    """One criterion that holds when any of ``criteria`` holds; made by :func:`any_of`."""

    def __init__(self, criteria: tuple[Criterion, ...]):
        self.criteria, self.tests = criteria, [_criterion(c, frozenset()) for c in criteria]

    def __call__(self, path: str, module: nn.Module) -> bool:
        return any(test(path, module) for test in self.tests)

    def __repr__(self) -> str:
        return f"any_of({', '.join(describe(c) for c in self.criteria)})"


def any_of(*criteria: Criterion) -> AnyOf:
    """One criterion that holds when any of ``criteria`` does: a union where a tuple is an intersection.

    ``where=("*.q_proj", "*.v_proj")`` asks for modules matching *both* globs (none); PEFT's
    ``target_modules=["q_proj", "v_proj"]`` is ``where=modify.any_of("*.q_proj", "*.v_proj")``.

    Args:
        *criteria: criteria as in :func:`modify.select` (classes, traits, globs, predicates,
            other ``any_of``), at least one.

    Returns:
        A criterion (a predicate ``(path, module) -> bool``) for ``select``, ``rewrite`` and
        every rewriter's ``where=``.

    Raises:
        TypeError: no criterion, or one of a kind ``select`` does not take.

    Example:
        >>> import modify
        >>> net = modify.Sequential(q=modify.Linear(4, 4), k=modify.Linear(4, 4), v=modify.Linear(4, 4))
        >>> modify.select(net, modify.any_of("q", "v")).paths()
        ['q', 'v']
        >>> modify.select(net, "q", "v").paths()   # several criteria (a tuple ``where=``): all of them
        []
    """
    if not criteria:
        raise TypeError("any_of: give at least one criterion")
    return AnyOf(criteria)


def reference_name(module: nn.Module) -> str | None:
    """``module.reference_name`` for a modify module, ``None`` for a plain ``torch.nn`` one."""
    return module.reference_name if isinstance(module, ModifyModule) else None


def as_criteria(where: Where) -> tuple[Criterion, ...]:
    """``where`` as a tuple of criteria: one criterion or a tuple of them (all of which must hold)."""
    return where if isinstance(where, tuple) else (where,)


def describe(criterion: object) -> str:
    """A criterion as written: a class by name, anything else by ``repr``."""
    return criterion.__name__ if isinstance(criterion, type) else repr(criterion)


def matcher(where: tuple, shadowed: Container[str] = frozenset()) -> Match:
    """One predicate ``(path, module) -> bool`` that holds when every criterion in ``where`` does.

    Globs match the paths in ``shadowed`` (filled by ``select`` as it walks) by path only.

    Raises:
        TypeError: a criterion that is neither a module class, a trait, a glob string nor a
            callable; a predicate that returns something other than a ``bool``.
    """
    tests = [_criterion(c, shadowed) for c in where]
    if len(tests) == 1:
        return tests[0]
    return lambda path, module: all(test(path, module) for test in tests)


def _criterion(criterion: object, shadowed: Container[str]) -> Match:
    if isinstance(criterion, AnyOf):
        tests = [_criterion(c, shadowed) for c in criterion.criteria]
        return lambda path, module: any(test(path, module) for test in tests)
    if isinstance(criterion, type) and issubclass(criterion, nn.Module):
        return lambda path, module: isinstance(module, criterion)
    if isinstance(criterion, type) and issubclass(criterion, Trait):
        return lambda path, module: any(issubclass(t, criterion) for t in traits_of(module))
    if isinstance(criterion, str):
        return _glob(criterion, shadowed)
    if isinstance(criterion, type):
        raise TypeError(
            f"select: a class criterion must be a torch.nn.Module subclass or a modify trait, got {criterion.__name__}"
        )
    if callable(criterion):
        return _checked_predicate(criterion)
    raise TypeError(f"select: a criterion is a class, a trait, a glob or a predicate, got {type(criterion).__name__}")


def _glob(pattern: str, shadowed: Container[str]) -> Match:
    """``fnmatch`` over the path, or over the module's ``reference_name`` where it has one (not shadowed)."""

    def test(path: str, module: nn.Module) -> bool:
        if fnmatch.fnmatchcase(path, pattern):
            return True
        name = reference_name(module)
        return name is not None and path not in shadowed and fnmatch.fnmatchcase(name, pattern)

    return test


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
