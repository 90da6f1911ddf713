"""Debugging leaves: identities with a side effect, to place anywhere in a composed model."""

from __future__ import annotations

import pdb
import sys

import torch

from .._core.arguments import typechecked
from .._core.module import Leaf
from ..traits import Linear, ParamFree, Unary


def structure(value: object) -> str:
    """The nested shape of a value: ``"((2, 3), (2, 3))"`` for a pair of ``(2, 3)`` tensors."""
    if isinstance(value, torch.Tensor):
        return str(tuple(value.shape))
    if isinstance(value, tuple):
        return "(" + ", ".join(structure(v) for v in value) + ("," if len(value) == 1 else "") + ")"
    return type(value).__name__


class _Tap(Leaf, Unary, ParamFree, Linear):
    """Print something about the value flowing through: the family of ``Print`` and ``PrintShape``.

    An identity with a side effect, to place anywhere in a composed model: any value passes
    through as the very same object (a tensor, a (nested) tuple, anything); nothing is checked.
    Output goes to stdout, after ``label: `` when a label is given.

    Args:
        label: printed first, followed by ``": "`` (default ``""``: no label).

    Shape:
        Any value -> the same value; for a tensor ``(*) -> (*)``, e.g. ``(B, T, C) -> (B, T, C)``.

    Raises:
        TypeError: ``label`` not a str.
    """

    @typechecked
    def __init__(self, label: str = ""):
        super().__init__()
        self.label = label

    def _prefix(self) -> str:
        return f"{self.label}: " if self.label else ""

    def extra_repr(self) -> str:
        return repr(self.label) if self.label else ""


class Print(_Tap):
    """Print the value flowing through and pass it on unchanged: Python's ``print(x)`` as a leaf.

    Example:
        >>> import torch, modify
        >>> _ = modify.Print("x")(torch.ones(2))
        x: tensor([1., 1.])
    """

    def forward(self, x):
        print(f"{self._prefix()}{x}", file=sys.stdout)
        return x


class PrintShape(_Tap):
    """Print the nested shape of the value (tuples shown as tuples) and pass it on unchanged.

    Like ``print(x.shape)``, for tuples too: a tensor prints as its shape, a tuple as the tuple
    of its elements' shapes, any other value as its type's name.

    Example:
        >>> import torch, modify
        >>> _ = modify.PrintShape("qkv")((torch.ones(2, 3), torch.ones(4)))
        qkv: ((2, 3), (4,))
    """

    def forward(self, x):
        print(f"{self._prefix()}{structure(x)}", file=sys.stdout)
        return x


class Breakpoint(Leaf, Unary, ParamFree, Linear):
    """Stop in ``pdb`` with the value bound to ``x``, then pass it on unchanged.

    Python's ``breakpoint()`` as a leaf: the debugger opens in this module's ``forward``, where
    ``x`` is the value flowing through; ``c`` continues. Any value passes through, as the very
    same object; nothing is checked. Skipped under ``torch.compile`` (tracing cannot stop) and
    when ``enabled=False``.

    Args:
        enabled: whether to stop (default ``True``).

    Shape:
        Any value -> the same value, as ``Print``.

    Raises:
        TypeError: ``enabled`` not a bool.

    Example:
        >>> import torch, modify
        >>> model = modify.Sequential(modify.Linear(4, 4), modify.Breakpoint(enabled=False))
        >>> model(torch.zeros(2, 4)).shape
        torch.Size([2, 4])
    """

    @typechecked
    def __init__(self, enabled: bool = True):
        super().__init__()
        self.enabled = enabled

    def forward(self, x):
        if self.enabled and not torch.compiler.is_compiling():
            pdb.Pdb().set_trace(sys._getframe())
        return x

    def extra_repr(self) -> str:
        return f"enabled={self.enabled}"
