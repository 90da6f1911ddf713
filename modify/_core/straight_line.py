"""A tree's forward as one straight-line Python function, for calls that nothing can observe.

Where no one watches module calls (:func:`modify._core.hooks.unwatched`: no hook on any modify
module, none global, no tracer), the combinators of a tree add nothing but Python frames: each
``Sequential``/``Parallel`` call loops over its children, tests the hook registry and wraps each
child in ``try``. From the second such call of a combinator on, :func:`straight_line` gives its whole
subtree as one generated function: the leaves in order, a ``Parallel`` unpacked into its
branches, a leaf that passes its value through (``passes_through``) not called, and a pair with a
call-time fusion rule run in one call. The outputs are the same objects the combinators would
return, and an error names the same dotted path (with try blocks, free in Python 3.11 while
nothing raises). The tiny GPT's forward is 53 such statements in one frame instead of 31
combinators' loops; 51 of them are one torch call each (5 of those a norm-affine pair), and two
leaves are called by their ``forward``.

How a module is written is its own hook, ``write_line(writer, value, path)``, found on the class
(the combinators define it) and used where the class's ``forward`` is the hook's class's own (a
combinator whose ``forward`` a mixin replaces, as activation checkpointing does, is called by
that ``forward``). A :class:`~modify._core.module.Leaf` whose class has the hook
``line_expression(writer, value)`` (under the same rule) is written as that expression: its
``forward`` without the checks, one torch call where the ``forward`` made three Python calls (so
a tiny GPT step takes 2 to 4% less time; ``docs/benchmarks.md``, section 1). Only a leaf whose
checks refuse nothing that the expression would compute defines it (torch raises for such input
itself, or the expression tests it and calls ``forward``); where the expression raises as torch
refuses an input, the written function runs the leaf's ``forward`` on the same value, so the
error is the one its checks document. Any other leaf is called by its ``forward``; any other
module (a wrapped ``torch.nn`` module, whose class may define its own ``__call__``) by
``module(value)``.

The function is written on a combinator's second such call (a tree built for one call, a slice
``model[:-1]`` say, never pays for it), then cached per combinator (weakly: it dies with the
module) and dropped when any combinator it was written through changes its children
(:func:`structure_changed`). Writing takes about 11 ms for the tiny GPT (408 lines) and 60 ms for
GPT-2 124M (2,068 lines).
"""

from __future__ import annotations

import contextlib
import functools
import itertools
import linecache
import re
import weakref
from collections.abc import Callable, Iterator
from typing import NoReturn

import torch

from .checks import checks_enabled
from .errors import annotate
from .module import Leaf

# Bumped when a combinator that some function was written through changes its children.
_version = 0
_written: weakref.WeakKeyDictionary[torch.nn.Module, tuple[int, Callable]] = weakref.WeakKeyDictionary()
_IN_LINE = "_in_straight_line"  # set on each combinator a function was written through
_functions = itertools.count()  # numbers the written functions' file names


def straight_line(module: torch.nn.Module) -> Callable[[object], object] | None:
    """``module``'s forward as one function of its input, or ``None`` on its first call.

    Only for calls that nothing observes: the caller tests :func:`~modify._core.hooks.unwatched`
    first. ``module`` itself is not called (its own checks are the caller's); its children are.

    Args:
        module: a module whose class defines ``write_line`` (a combinator).

    Returns:
        ``fn(value) -> value``, computing what ``module.forward(value)`` computes; ``None`` the
        first time ``module`` asks (at this version of the structure): the caller runs its own loop.

    Example:
        >>> import torch, modify
        >>> from modify._core.straight_line import straight_line
        >>> mlp = modify.Sequential(modify.Linear(4, 8), modify.ReLU(), modify.Linear(8, 2))
        >>> straight_line(mlp) is None
        True
        >>> x = torch.randn(3, 4)
        >>> torch.equal(straight_line(mlp)(x), mlp(x))
        True
    """
    entry = _written.get(module)
    version = _version
    if entry is None or entry[0] != version:
        _written[module] = (version, None)
        return None
    if entry[1] is not None:
        return entry[1]
    writer = LineWriter()
    written_through(module)
    out = module.write_line(writer, "x", ())
    function = writer.function(out)
    _written[module] = (version, function)
    return function


def current_version() -> int:
    """The structure version: functions (and flat programs) written at another are stale."""
    return _version


def written_through(combinator: torch.nn.Module) -> None:
    """Note that something was written through ``combinator``: a change of its children bumps the version."""
    combinator.__dict__[_IN_LINE] = True


def structure_changed(combinator: torch.nn.Module) -> None:
    """Note that ``combinator``'s children change: every function written through it is dropped.

    Called by the combinators before a child is set, added or deleted; a combinator no function was
    written through (one being built) costs nothing.
    """
    global _version
    if combinator.__dict__.get(_IN_LINE):
        _version += 1


def _annotate_path(error: BaseException, path: tuple[str, ...], module: torch.nn.Module) -> None:
    """Prepend ``path`` to ``error``'s path, as each combinator on the way up would."""
    for name in reversed(path):
        annotate(error, name, module)


def _raise_checked(
    error: Exception, path: tuple[str, ...], module: torch.nn.Module, checked: Callable[[object], object], value: object
) -> NoReturn:
    """Raise, named by ``path``, the error ``checked(value)`` raises, where ``error`` (from a leaf's
    unchecked expression) is how torch refuses an input; else ``error`` itself.

    Not for out of memory, nor for an exception a hook signals with (activation checkpointing's
    early stop): those pass unchanged, and nothing runs again.
    """
    refused = isinstance(error, (TypeError, ValueError, IndexError, AttributeError, RuntimeError))
    if refused and not isinstance(error, torch.OutOfMemoryError):
        try:
            checked(value)
        except Exception as documented:
            _annotate_path(documented, path, module)
            raise documented from None
    _annotate_path(error, path, module)
    raise error


_VARIABLE = re.compile(r"\bv\d+\b")
_TOP_LEVEL_VALUE = re.compile(r"^(?:    try:\n        |    )((?:v\d+, )*v\d+),? = ")


def _with_deletes(lines: list[str], out: str) -> list[str]:
    """``lines`` with ``del`` after each statement that uses a variable for the last time.

    So a value lives no longer than the combinators would keep it (a ``Sequential`` drops each
    output once the next child has returned): without this, every activation of a no-grad
    forward would stay alive until the function returns. Only variables set at the top level
    (not in an ``if``) are deleted here; ``out`` is returned.
    """
    statements: list[list[str]] = []
    for line in lines:  # a statement: a line at the top level, with its indented and except lines
        top = line.startswith("    ") and not line.startswith("     ") and not line.startswith("    except")
        if top or not statements:
            statements.append([])
        statements[-1].append(line)
    set_here, last_use = set(), {}
    for index, statement in enumerate(statements):
        text = "\n".join(statement)
        match = _TOP_LEVEL_VALUE.match(text)
        if match:
            set_here.update(match.group(1).split(", "))
        for name in _VARIABLE.findall(text):
            last_use[name] = index
    deletes: dict[int, list[str]] = {}
    for name in sorted(set_here - {out}):
        deletes.setdefault(last_use[name], []).append(name)
    written = []
    for index, statement in enumerate(statements):
        written += statement
        if index in deletes:
            written.append(f"    del {', '.join(deletes[index])}")
    return written


@functools.cache  # classes are few and live as long as the process
def _hook_owner(cls: type, hook: str = "write_line") -> type | None:
    """The class in ``cls``'s method resolution order that defines ``hook``, or ``None``."""
    return next((base for base in cls.__mro__ if hook in base.__dict__), None)


def own_hook(module: torch.nn.Module, hook: str) -> bool:
    """Whether ``module``'s class has ``hook`` and runs its hook class's ``forward`` (none set on the instance)."""
    owner = _hook_owner(type(module), hook)
    return owner is not None and type(module).forward is owner.forward and "forward" not in module.__dict__


class LineWriter:
    """Writes one straight-line function: statements, the objects they name, fresh variables.

    A combinator's ``write_line(writer, value, path)`` hook adds its statements through
    :meth:`write` (a child, by whatever hook the child has), :meth:`call` (one guarded
    statement), :meth:`line`, :meth:`name` and :meth:`indented`, and returns the variable that
    holds its output. ``value`` is the variable holding its input; ``path`` the tuple of child
    names from the top module.
    """

    def __init__(self) -> None:
        self._lines: list[str] = []
        self._names: dict[str, object] = {
            "_annotate_path": _annotate_path, "checks_enabled": checks_enabled, "_raise_checked": _raise_checked
        }
        self._counter = itertools.count()
        self._indent = "    "

    def write(self, module: torch.nn.Module, value: str, path: tuple[str, ...]) -> str:
        """Statements computing ``module(value)``; returns the variable holding the output."""
        if isinstance(module, Leaf) and module.passes_through:
            return value
        if own_hook(module, "write_line"):
            written_through(module)
            return module.write_line(self, value, path)
        if isinstance(module, Leaf) and own_hook(module, "line_expression"):
            expression = module.line_expression(self, value)
            return self.call(expression, path, module, checked=f"{self.name(module)}.forward", value=value)
        if isinstance(module, Leaf) or _hook_owner(type(module)) is not None:
            return self.call(f"{self.name(module)}.forward({value})", path, module)
        return self.call(f"{self.name(module)}({value})", path, module)

    def call(
        self,
        expression: str,
        path: tuple[str, ...],
        module: torch.nn.Module,
        keep: bool = True,
        checked: str | None = None,
        value: str = "",
    ) -> str:
        """A new variable set to ``expression`` (if not ``keep``: the expression alone, and ``""``),
        with errors named by ``path`` (raised inside ``module``).

        ``checked``: the name of a callable computing the same from the input ``value`` with the
        checks (see :func:`_raise_checked`).
        """
        target = self.variable() if keep else ""
        module_name = self.name(module)
        self.line("try:")
        self.line(f"    {target} = {expression}" if keep else f"    {expression}")
        self.line("except Exception as error:")
        if checked is None:
            self.line(f"    _annotate_path(error, {path!r}, {module_name})")
            self.line("    raise")
        else:
            self.line(f"    _raise_checked(error, {path!r}, {module_name}, {checked}, {value})")
        return target

    def line(self, text: str) -> None:
        """One statement at the current indentation."""
        self._lines.append(self._indent + text)

    @contextlib.contextmanager
    def indented(self) -> Iterator[None]:
        """Statements written inside the block are indented one level (the body of an ``if``)."""
        self._indent += "    "
        try:
            yield
        finally:
            self._indent = self._indent[:-4]

    def name(self, obj: object) -> str:
        """A global name of the function for ``obj`` (the same name for the same object)."""
        kind = type(obj).__name__ if isinstance(obj, torch.nn.Module) else getattr(obj, "__name__", type(obj).__name__)
        name = f"_{kind if kind.isidentifier() else 'object'}_{id(obj):x}"
        self._names[name] = obj
        return name

    def variable(self) -> str:
        """A fresh local variable name."""
        return f"v{next(self._counter)}"

    def function(self, out: str) -> Callable[[object], object]:
        """The written function ``f(x)``, returning the variable ``out``."""
        source = "def straight_line(x):\n" + "\n".join(_with_deletes(self._lines, out)) + f"\n    return {out}\n"
        filename = f"<modify straight line {next(_functions)}>"
        exec(compile(source, filename, "exec"), self._names)  # noqa: S102 - our own source
        function = self._names.pop("straight_line")
        function.source = source
        # Tracebacks show the written lines (kept while the function lives).
        linecache.cache[filename] = (len(source), None, source.splitlines(keepends=True), filename)
        weakref.finalize(function, linecache.cache.pop, filename, None)
        return function
