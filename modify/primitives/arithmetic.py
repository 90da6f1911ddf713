"""Arithmetic leaves: ``Add``, ``Sub``, ``Mul``, ``Div`` of a pair, ``MatMul``, ``Scale``."""

from __future__ import annotations

import torch

from .._core.arguments import check_finite, typechecked
from .._core.checks import checks_enabled, expect_tensor, expect_tensors
from .._core.checks import expect_matmul
from .._core.errors import ModifyValueError, describe
from .._core.module import Leaf
from ..traits import Binary, Elementwise, Linear, Matrix, NonLinear, ParamFree, Unary


def _advice(a: torch.Tensor, b: torch.Tensor) -> str:
    """Suggest ``broadcast=True`` only where it would help: shapes that broadcast."""
    try:
        torch.broadcast_shapes(a.shape, b.shape)
    except RuntimeError:
        return " (they do not broadcast either)"
    return "; pass broadcast=True to broadcast"


class _Pairwise(Leaf):
    """A binary elementwise op on ``(a, b)``: the family of ``Add``, ``Sub``, ``Mul``, ``Div``.

    Each runs the torch operator it is named after, but is strict about shapes: operands of
    different shapes raise unless ``broadcast=True`` (the error advises it only for shapes that
    do broadcast).

    Args:
        broadcast: allow operands of different, broadcastable shapes (default ``False``: a shape
            mismatch raises instead of broadcasting silently).

    Shape:
        ``((*), (*)) -> (*)``, e.g. ``((B, T, C), (B, T, C)) -> (B, T, C)``; with
        ``broadcast=True`` any broadcastable pair, e.g. ``((B, T, C), (C,)) -> (B, T, C)``.

    Raises:
        TypeError: ``broadcast`` not a bool.
        ModifyTypeError: the input is not a tuple of tensors.
        ModifyValueError: a tuple of other than 2 values; shapes differ and ``broadcast=False``.
    """

    @typechecked
    def __init__(self, broadcast: bool = False):
        super().__init__()
        self.broadcast = broadcast

    def pair(self, x: object) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = expect_tensors(self, x, 2)
        if not self.broadcast and a.shape != b.shape and checks_enabled():
            raise ModifyValueError(self, f"got operands of different shapes, {describe(x)}{_advice(a, b)}")
        return a, b

    def extra_repr(self) -> str:
        return "broadcast=True" if self.broadcast else ""


class Add(_Pairwise, Binary, ParamFree, Linear, Elementwise):
    """Elementwise sum of a pair: ``(a, b) -> a + b``, as ``torch.add``; the join of :class:`~modify.Residual`.

    Example:
        >>> import torch, modify
        >>> modify.Add()((torch.ones(2), torch.ones(2))).tolist()
        [2.0, 2.0]
    """

    def forward(self, x):
        a, b = self.pair(x)
        return a + b


class Sub(_Pairwise, Binary, ParamFree, Linear, Elementwise):
    """Elementwise difference of a pair: ``(a, b) -> a - b``, as ``torch.sub``.

    Example:
        >>> import torch, modify
        >>> a, b = torch.tensor([3.0, 1.0]), torch.tensor([1.0, 1.0])
        >>> modify.Sub()((a, b)).tolist()
        [2.0, 0.0]
    """

    def forward(self, x):
        a, b = self.pair(x)
        return a - b


class Mul(_Pairwise, Binary, ParamFree, NonLinear, Elementwise):
    """Elementwise product of a pair: ``(a, b) -> a * b``, as ``torch.mul``.

    Bilinear in the pair, hence ``NonLinear``; Llama's SwiGLU multiplies its gate and up
    branches with it.

    Example:
        >>> import torch, modify
        >>> modify.Mul()((torch.full((2,), 3.0), torch.full((2,), 2.0))).tolist()
        [6.0, 6.0]
    """

    def forward(self, x):
        a, b = self.pair(x)
        return a * b


class Div(_Pairwise, Binary, ParamFree, NonLinear, Elementwise):
    """Elementwise true division of a pair: ``(a, b) -> a / b``, as ``torch.div``.

    Integer operands give a floating-point result (true division).

    Example:
        >>> import torch, modify
        >>> a, b = torch.tensor([3, 1]), torch.tensor([2, 2])
        >>> modify.Div()((a, b))
        tensor([1.5000, 0.5000])
    """

    def forward(self, x):
        a, b = self.pair(x)
        return a / b


class MatMul(Leaf, Binary, ParamFree, NonLinear, Matrix):
    """Matrix product of a pair: ``(a, b) -> torch.matmul(a, b)``, batched over leading dimensions.

    As ``torch.matmul``; leading (batch) dimensions broadcast as there. Takes no arguments.

    Shape:
        ``((*, N, K), (*, K, M)) -> (*, N, M)``, e.g. attention scores
        ``((B, H, T, D), (B, H, D, S)) -> (B, H, T, S)``.

    Raises:
        ModifyTypeError: the input is not a tuple of tensors.
        ModifyValueError: a tuple of other than 2 values; ``a``'s last axis not ``b``'s
            second-to-last (its only one, for a 1-d ``b``), or a 0-d operand.

    Example:
        >>> import torch, modify
        >>> modify.MatMul()((torch.ones(2, 3), torch.ones(3, 4))).shape
        torch.Size([2, 4])
    """

    def forward(self, x):
        a, b = expect_matmul(self, x)
        return torch.matmul(a, b)


class Scale(Leaf, Unary, ParamFree, Linear, Elementwise):
    """Multiply by a constant: ``x -> c * x``. ``c`` is a Python number, not a parameter.

    As ``torch.mul`` by a scalar; LoRA's ``alpha / rank`` factor (Hu et al. 2021) is one.
    :func:`~modify.fuse` merges consecutive ``Scale``s, and a ``Linear`` followed by one.

    Args:
        c: the factor (stored as a float).

    Shape:
        ``(*) -> (*)``, any number of axes, e.g. ``(B, T, C) -> (B, T, C)``.

    Raises:
        TypeError: ``c`` not a number.
        ValueError: ``c`` nan or infinite.
        ModifyTypeError: the input is not a tensor.

    Example:
        >>> import torch, modify
        >>> modify.Scale(0.5)(torch.ones(2)).tolist()
        [0.5, 0.5]
    """

    @typechecked
    def __init__(self, c: float):
        super().__init__()
        check_finite("Scale", c=c)
        self.c = float(c)

    def forward(self, x):
        return expect_tensor(self, x) * self.c

    def extra_repr(self) -> str:
        return f"c={self.c:g}"
