"""The base classes: :class:`ModifyModule` and :class:`Leaf`."""

from __future__ import annotations

import torch

from ..traits import class_traits


class ModifyModule(torch.nn.Module):
    """Base of every module in the algebra: a ``torch.nn.Module`` from one value to one value.

    A *value* is a ``torch.Tensor`` or a (possibly nested) ``tuple`` of values. ``forward`` takes
    exactly one value and returns one value; ``__call__`` is ``torch.nn.Module``'s own, so
    forward hooks, ``torch.compile``, DDP and FSDP see ordinary modules.

    Only the combinators :class:`~modify.Sequential` and :class:`~modify.Parallel` hold
    submodules; every other module is a :class:`Leaf`. :func:`modify.traits_of` answers what a
    module is (inherited traits for leaves, inferred ones for combinators).

    Example:
        >>> import torch, modify
        >>> block = modify.Sequential(modify.Linear(4, 4), modify.ReLU())
        >>> isinstance(block, modify.ModifyModule), isinstance(block[0], modify.ModifyModule)
        (True, True)
    """

    def _infer_traits(self) -> frozenset[type]:
        return class_traits(type(self))


class Leaf(ModifyModule):
    """A module that holds parameters and buffers, never submodules.

    Subclasses list their traits as mixins and keep random initialisation in
    ``reset_parameters()``, so rewriters can rebuild a leaf without re-randomising it.

    Raises:
        TypeError: on assigning a ``torch.nn.Module`` as an attribute, or ``add_module``.

    Example:
        >>> import torch, modify
        >>> from modify.traits import Elementwise, NonLinear, ParamFree, Unary
        >>> class Square(modify.Leaf, Unary, ParamFree, NonLinear, Elementwise):
        ...     def forward(self, x):
        ...         return x * x
        >>> Square()(torch.tensor([3.0])).tolist()
        [9.0]
        >>> sorted(t.__name__ for t in modify.traits_of(Square()))
        ['Elementwise', 'NonLinear', 'ParamFree', 'Unary']
    """

    def add_module(self, name: str, module: torch.nn.Module | None) -> None:
        """Refused: a leaf holds no submodules (``register_module`` lands here too)."""
        raise TypeError(
            f"{type(self).__name__} is a leaf and cannot hold the submodule '{name}'; "
            f"compose modules with Sequential/Parallel instead"
        )

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, torch.nn.Module):
            raise TypeError(
                f"{type(self).__name__} is a leaf and cannot hold the submodule '{name}' "
                f"({type(value).__name__}); compose modules with Sequential/Parallel instead"
            )
        super().__setattr__(name, value)
