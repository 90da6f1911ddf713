"""``Function``: an opaque leaf that runs a Python callable on the value it gets."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .._core.arguments import typechecked
from .._core.module import Leaf
from .._core.inference import class_traits
from ..traits import NonLinear, Param, ParamFree, Tuple, Unary


class Function(Leaf, Unary, ParamFree, NonLinear):
    """An opaque leaf: ``x -> fn(x)`` for any Python callable ``fn`` from one value to one value.

    :func:`modify.convert` makes one for every piece of traced code that has no primitive (a
    ``torch.arange`` of the input's length, a slice, an op on a constant), named after the place
    in the original model it came from, so it still runs and says where it came from. Tensors the
    code uses (a parameter such as a learned scale, a buffer such as a causal mask) are registered
    on the leaf under ``parameters``/``buffers`` (the very same objects) and passed to ``fn`` as
    keyword arguments, so ``parameters()``, ``state_dict`` and ``.to()`` see them.

    The class is tagged ``Unary``, ``ParamFree`` and ``NonLinear`` (nothing is known about
    ``fn``); ``modify.traits_of`` says ``Tuple`` for an instance that takes ``arity > 1`` values
    and ``Param`` for one that holds parameters.

    Args:
        fn: the callable, called as ``fn(x, **tensors)`` with the leaf's own parameters and
            buffers by name.
        name: where the code came from, shown by ``repr`` (default: ``fn``'s ``__name__``).
        arity: the number of values the leaf takes: ``1`` (one value) or ``k > 1`` (a tuple of
            ``k`` values). Informative only (for traits); ``fn`` receives the value as given.
        parameters: ``{name: torch.nn.Parameter}`` to register as the leaf's own (not copied).
        buffers: ``{name: (tensor, persistent)}`` to register as buffers (not copied).

    Shape:
        Whatever ``fn`` does: one value -> one value, e.g. ``(B, T) -> (T,)`` for the positions
        of a GPT.

    Raises:
        TypeError: ``fn`` not callable, ``name`` not a str, or ``arity`` not an int.

    Example:
        >>> import torch, modify
        >>> positions = modify.Function(lambda idx: torch.arange(idx.shape[1]), name="positions")
        >>> positions(torch.zeros(2, 5, dtype=torch.long)).tolist()
        [0, 1, 2, 3, 4]
        >>> positions
        Function(positions)
        >>> scale = modify.Function(lambda x, gamma: x * gamma, parameters={"gamma": torch.nn.Parameter(torch.ones(3))})
        >>> [name for name, _ in scale.named_parameters()]
        ['gamma']
    """

    @typechecked
    def __init__(
        self,
        fn: Callable,
        name: str | None = None,
        arity: int = 1,
        parameters: dict[str, nn.Parameter] | None = None,
        buffers: dict[str, tuple[torch.Tensor, bool]] | None = None,
    ):
        super().__init__()
        self.fn, self.arity = fn, arity
        self.name = name if name is not None else getattr(fn, "__name__", type(fn).__name__)
        for key, parameter in (parameters or {}).items():
            self.register_parameter(key, parameter)
        for key, (tensor, persistent) in (buffers or {}).items():
            self.register_buffer(key, tensor, persistent=persistent)

    def forward(self, x):
        if not self._parameters and not self._buffers:
            return self.fn(x)
        return self.fn(x, **self._parameters, **self._buffers)

    def _infer_traits(self) -> frozenset[type]:
        traits = set(class_traits(type(self)))
        if self.arity > 1:
            traits = (traits - {Unary}) | {Tuple}
        if self._parameters:
            traits = (traits - {ParamFree}) | {Param}
        return frozenset(traits)

    def extra_repr(self) -> str:
        return self.name
