"""Arithmetic leaves: ``Add``, ``Sub``, ``Mul``, ``Div`` of a pair, ``MatMul``, ``Scale``."""

from __future__ import annotations

import torch

from .._core.checks import checks_enabled, expect_tensor, expect_tensors, typechecked
from .._core.errors import ModifyValueError, describe
from .._core.module import Leaf
from ..traits import Binary, Elementwise, Linear, Matrix, NonLinear, ParamFree, Unary


class _Pairwise(Leaf):
    """A binary elementwise op on ``(a, b)``; shapes must match unless ``broadcast=True``."""

    @typechecked
    def __init__(self, broadcast: bool = False):
        super().__init__()
        self.broadcast = broadcast

    def pair(self, x: object) -> tuple[torch.Tensor, torch.Tensor]:
        a, b = expect_tensors(self, x, 2)
        if not self.broadcast and a.shape != b.shape and checks_enabled():
            raise ModifyValueError(
                self, f"got operands of different shapes, {describe(x)}; pass broadcast=True to broadcast"
            )
        return a, b

    def extra_repr(self) -> str:
        return "broadcast=True" if self.broadcast else ""


class Add(_Pairwise, Binary, ParamFree, Linear, Elementwise):
    """``(a, b) -> a + b``.

    Args:
        broadcast: allow operands of different, broadcastable shapes (default ``False``: a shape
            mismatch raises instead of broadcasting silently).

    Shape:
        ``((*), (*)) -> (*)``.

    Raises:
        ModifyValueError: shapes differ and ``broadcast=False``.

    Example:
        >>> import torch, modify
        >>> modify.Add()((torch.ones(2), torch.ones(2))).tolist()
        [2.0, 2.0]
    """

    def forward(self, x):
        a, b = self.pair(x)
        return a + b


class Sub(_Pairwise, Binary, ParamFree, Linear, Elementwise):
    """``(a, b) -> a - b``; arguments and errors as :class:`Add`.

    Example:
        >>> import torch, modify
        >>> modify.Sub()((torch.ones(2), torch.ones(2))).tolist()
        [0.0, 0.0]
    """

    def forward(self, x):
        a, b = self.pair(x)
        return a - b


class Mul(_Pairwise, Binary, ParamFree, NonLinear, Elementwise):
    """``(a, b) -> a * b`` (elementwise); arguments and errors as :class:`Add`.

    Example:
        >>> import torch, modify
        >>> modify.Mul()((torch.full((2,), 3.0), torch.full((2,), 2.0))).tolist()
        [6.0, 6.0]
    """

    def forward(self, x):
        a, b = self.pair(x)
        return a * b


class Div(_Pairwise, Binary, ParamFree, NonLinear, Elementwise):
    """``(a, b) -> a / b`` (true division); arguments and errors as :class:`Add`.

    Example:
        >>> import torch, modify
        >>> modify.Div()((torch.full((2,), 3.0), torch.full((2,), 2.0))).tolist()
        [1.5, 1.5]
    """

    def forward(self, x):
        a, b = self.pair(x)
        return a / b


class MatMul(Leaf, Binary, ParamFree, NonLinear, Matrix):
    """``(a, b) -> torch.matmul(a, b)``, batched over leading dimensions.

    Shape:
        ``((*, n, k), (*, k, m)) -> (*, n, m)``.

    Example:
        >>> import torch, modify
        >>> modify.MatMul()((torch.ones(2, 3), torch.ones(3, 4))).shape
        torch.Size([2, 4])
    """

    def forward(self, x):
        a, b = expect_tensors(self, x, 2)
        return torch.matmul(a, b)


class Scale(Leaf, Unary, ParamFree, Linear, Elementwise):
    """Multiply by a constant: ``x -> c * x``. ``c`` is a Python number, not a parameter.

    Args:
        c: the factor.

    Shape:
        ``(*) -> (*)``.

    Example:
        >>> import torch, modify
        >>> modify.Scale(0.5)(torch.ones(2)).tolist()
        [0.5, 0.5]
    """

    @typechecked
    def __init__(self, c: float):
        super().__init__()
        self.c = float(c)

    def forward(self, x):
        return expect_tensor(self, x) * self.c

    def extra_repr(self) -> str:
        return f"c={self.c:g}"
