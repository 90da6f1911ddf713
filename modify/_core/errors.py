"""Errors that name the module path, collected as they propagate up through combinators.

A module may be shared by several sibling models, so it cannot know its own path. Instead a
combinator that sees a child raise prepends the child's name to the error: by the time the error
leaves the root, it names the full dotted path (``'blocks.0.attn'``).
"""

from __future__ import annotations

import torch

ROOT = "<root>"


def describe(value: object) -> str:
    """A short human description of a value: ``"a tensor of shape (2, 3) float32"``."""
    if isinstance(value, torch.Tensor):
        dtype = str(value.dtype).removeprefix("torch.")
        return f"a tensor of shape {tuple(value.shape)} {dtype}"
    if isinstance(value, tuple):
        inner = ", ".join(_short(v) for v in value)
        return f"a tuple of {count(len(value), 'value')} ({inner})"
    return f"a {type(value).__name__}"


def count(n: int, noun: str, plural: str | None = None) -> str:
    """``"1 value"``, ``"3 values"``; ``plural`` where adding an ``s`` is wrong (``"branches"``)."""
    return f"{n} {noun}" if n == 1 else f"{n} {plural or noun + 's'}"


def _short(value: object) -> str:
    if isinstance(value, torch.Tensor):
        return f"tensor{tuple(value.shape)}"
    if isinstance(value, tuple):
        return "(" + ", ".join(_short(v) for v in value) + ")"
    return type(value).__name__


class ModifyError(Exception):
    """Base of the errors raised by modules at run time; ``str`` names the module path.

    Not raised itself: modules raise :class:`ModifyValueError` (a ``ValueError``) or
    :class:`ModifyTypeError` (a ``TypeError``), so ``except ValueError`` works as with any Python
    error, and ``except modify.ModifyError`` catches both. The path is filled in as the error
    propagates up through :class:`~modify.Sequential` and :class:`~modify.Parallel`, which prepend
    the child's name; the message reads ``"<class> at '<path>' <detail>"`` (``'<root>'`` when
    the raising module was called directly). Errors pickle with their path (for DDP workers).

    Args:
        module: the module raising the error (its class name starts the message).
        detail: what went wrong, e.g. ``"got a tuple of 2 values for 3 branches"``.

    Attributes:
        path: the names from the root down to the raising module, filled in as the error
            propagates through combinators.
        module_name: the class name of the raising module.
        detail: the ``detail`` given.

    Example:
        >>> import torch, modify
        >>> model = modify.Sequential(attn=modify.Parallel(modify.Identity(), modify.Identity()))
        >>> try:
        ...     model((torch.zeros(1),) * 3)
        ... except modify.ModifyValueError as error:
        ...     print(error, error.path)
        Parallel at 'attn' got a tuple of 3 values for 2 branches ['attn']
    """

    def __init__(self, module: torch.nn.Module, detail: str):
        super().__init__(detail)
        self.module_name = type(module).__name__
        self.detail = detail
        self.path: list[str] = []

    def __str__(self) -> str:
        path = ".".join(self.path) if self.path else ROOT
        return f"{self.module_name} at '{path}' {self.detail}"

    def __reduce__(self) -> tuple:
        # Picklable (errors cross process boundaries under DDP), path and notes included.
        return (_rebuild_error, (type(self), self.module_name, self.detail, self.path), self.__dict__)


def _rebuild_error(cls: type, module_name: str, detail: str, path: list[str]) -> ModifyError:
    error = Exception.__new__(cls, detail)
    Exception.__init__(error, detail)
    error.module_name, error.detail, error.path = module_name, detail, list(path)
    return error


class ModifyValueError(ModifyError, ValueError):
    """A value of the right kind but the wrong size: tuple length, tensor shape.

    A :class:`ModifyError` (same arguments and attributes) and a ``ValueError`` (as Python
    raises for a right-typed argument with a wrong value): ``except ValueError`` catches it.

    Example:
        >>> import torch, modify
        >>> modify.Sequential(proj=modify.Linear(4, 2))(torch.zeros(3, 5))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        modify._core.errors.ModifyValueError: Linear at 'proj' expected last dimension 4, got a tensor of shape ...
    """


class ModifyTypeError(ModifyError, TypeError):
    """A value of the wrong kind: a tensor where a tuple was expected, or the reverse.

    A :class:`ModifyError` (same arguments and attributes) and a ``TypeError`` (as Python
    raises for an argument of the wrong type): ``except TypeError`` catches it.

    Example:
        >>> import torch, modify
        >>> modify.Sequential(act=modify.ReLU())((torch.zeros(1), torch.zeros(1)))  # doctest: +ELLIPSIS
        Traceback (most recent call last):
        ...
        modify._core.errors.ModifyTypeError: ReLU at 'act' expected a tensor, got a tuple of 2 values ...
    """


def annotate(error: BaseException, child_name: str, child: torch.nn.Module) -> None:
    """Prepend ``child_name`` to the path of ``error`` raised inside ``child``.

    A :class:`ModifyError` carries the path in its message. Any other exception (a shape
    ``RuntimeError`` from torch, say) gets one note, rewritten at each level, naming the path
    and the class of the leaf it came from.
    """
    if isinstance(error, ModifyError):
        error.path.insert(0, child_name)
        return
    path = getattr(error, "_modify_path", None)
    if path is None:
        path = []
        try:
            error._modify_path = path  # type: ignore[attr-defined]
            error._modify_leaf = type(child).__name__  # type: ignore[attr-defined]
        except AttributeError:  # exceptions with __slots__
            return
    else:
        _remove_note(error, error._modify_note)  # type: ignore[attr-defined]
    path.insert(0, child_name)
    note = f"(raised inside {error._modify_leaf} at '{'.'.join(path)}')"  # type: ignore[attr-defined]
    error._modify_note = note  # type: ignore[attr-defined]
    error.add_note(note)


def _remove_note(error: BaseException, note: str) -> None:
    notes = getattr(error, "__notes__", [])
    if note in notes:
        notes.remove(note)
