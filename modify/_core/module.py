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
    submodules; every other module is a :class:`Leaf`.
    """

    def _infer_traits(self) -> frozenset[type]:
        return class_traits(type(self))


class Leaf(ModifyModule):
    """A module that holds parameters and buffers, never submodules.

    Subclasses list their traits as mixins and keep random initialisation in
    ``reset_parameters()``, so rewriters can rebuild a leaf without re-randomising it.

    Raises:
        TypeError: on assigning a ``torch.nn.Module`` as an attribute.
    """

    def __setattr__(self, name: str, value: object) -> None:
        if isinstance(value, torch.nn.Module):
            raise TypeError(
                f"{type(self).__name__} is a leaf and cannot hold the submodule '{name}' "
                f"({type(value).__name__}); compose modules with Sequential/Parallel instead"
            )
        super().__setattr__(name, value)
