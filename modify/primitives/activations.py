"""Elementwise and per-vector nonlinearities, and ``Dropout``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._core.checks import expect_tensor, typechecked
from .._core.module import Leaf
from ..traits import Elementwise, Linear, NonLinear, ParamFree, Unary, Vector


class ReLU(Leaf, Unary, ParamFree, NonLinear, Elementwise):
    """``max(x, 0)``, as ``torch.relu``. Shape ``(*) -> (*)``.

    Example:
        >>> import torch, modify
        >>> modify.ReLU()(torch.tensor([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """

    def forward(self, x):
        return torch.relu(expect_tensor(self, x))


class GELU(Leaf, Unary, ParamFree, NonLinear, Elementwise):
    """Gaussian error linear unit, as ``F.gelu`` (Hendrycks & Gimpel 2016). Shape ``(*) -> (*)``.

    Args:
        approximate: ``"none"`` (exact, erf) or ``"tanh"`` (GPT-2's approximation).

    Raises:
        ValueError: for another ``approximate``.

    Example:
        >>> import torch, modify
        >>> modify.GELU("tanh")(torch.zeros(1)).tolist()
        [0.0]
    """

    @typechecked
    def __init__(self, approximate: str = "none"):
        super().__init__()
        if approximate not in ("none", "tanh"):
            raise ValueError(f"GELU approximate must be 'none' or 'tanh', got {approximate!r}")
        self.approximate = approximate

    def forward(self, x):
        return F.gelu(expect_tensor(self, x), approximate=self.approximate)

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(Leaf, Unary, ParamFree, NonLinear, Elementwise):
    """``x * sigmoid(x)``, as ``F.silu`` (Elfwing et al. 2017). Shape ``(*) -> (*)``.

    Example:
        >>> import torch, modify
        >>> modify.SiLU()(torch.zeros(1)).tolist()
        [0.0]
    """

    def forward(self, x):
        return F.silu(expect_tensor(self, x))


class Tanh(Leaf, Unary, ParamFree, NonLinear, Elementwise):
    """``torch.tanh``. Shape ``(*) -> (*)``.

    Example:
        >>> import torch, modify
        >>> modify.Tanh()(torch.zeros(1)).tolist()
        [0.0]
    """

    def forward(self, x):
        return torch.tanh(expect_tensor(self, x))


class Sigmoid(Leaf, Unary, ParamFree, NonLinear, Elementwise):
    """``torch.sigmoid``. Shape ``(*) -> (*)``.

    Example:
        >>> import torch, modify
        >>> modify.Sigmoid()(torch.zeros(1)).tolist()
        [0.5]
    """

    def forward(self, x):
        return torch.sigmoid(expect_tensor(self, x))


class Exp(Leaf, Unary, ParamFree, NonLinear, Elementwise):
    """``torch.exp``. Shape ``(*) -> (*)``.

    Example:
        >>> import torch, modify
        >>> modify.Exp()(torch.zeros(1)).tolist()
        [1.0]
    """

    def forward(self, x):
        return torch.exp(expect_tensor(self, x))


class _AlongDim(Leaf):
    @typechecked
    def __init__(self, dim: int = -1):
        super().__init__()
        self.dim = dim

    def _infer_traits(self) -> frozenset[type]:
        # Vector means "along the last dimension"; along another one no scope is claimed.
        traits = super()._infer_traits()
        return traits if self.dim == -1 else traits - {Vector}

    def extra_repr(self) -> str:
        return f"dim={self.dim}"


class Softmax(_AlongDim, Unary, ParamFree, NonLinear, Vector):
    """``torch.softmax(x, dim)``. Shape ``(*) -> (*)``.

    Args:
        dim: the dimension normalised (default ``-1``). The class is tagged ``Vector``; for
            another ``dim``, ``modify.traits_of`` drops it for the instance.

    Example:
        >>> import torch, modify
        >>> modify.Softmax()(torch.zeros(2)).tolist()
        [0.5, 0.5]
    """

    def forward(self, x):
        return torch.softmax(expect_tensor(self, x), self.dim)


class LogSoftmax(_AlongDim, Unary, ParamFree, NonLinear, Vector):
    """``torch.log_softmax(x, dim)``. Shape ``(*) -> (*)``; ``dim`` as :class:`Softmax`.

    Example:
        >>> import torch, modify
        >>> round(modify.LogSoftmax()(torch.zeros(2))[0].item(), 4)
        -0.6931
    """

    def forward(self, x):
        return torch.log_softmax(expect_tensor(self, x), self.dim)


def _dropout(x, p: float, training: bool):
    if isinstance(x, tuple):
        return tuple(_dropout(v, p, training) for v in x)
    return F.dropout(x, p, training)


class Dropout(Leaf, Unary, ParamFree, Linear, Elementwise):
    """Zero each element with probability ``p`` in training, scaling the rest by ``1 / (1 - p)``.

    As ``F.dropout`` (Srivastava et al. 2014). In eval mode, or with ``p == 0``, the identity.
    Passes any value: every tensor of a tuple gets its own mask.

    Args:
        p: drop probability in ``[0, 1)``.

    Raises:
        ValueError: if ``p`` is outside ``[0, 1)``.

    Example:
        >>> import torch, modify
        >>> modify.Dropout(0.5).eval()(torch.ones(2)).tolist()
        [1.0, 1.0]
    """

    @typechecked
    def __init__(self, p: float = 0.5):
        super().__init__()
        if not 0.0 <= p < 1.0:
            raise ValueError(f"Dropout p must be in [0, 1), got {p}")
        self.p = float(p)

    def forward(self, x):
        if self.p == 0.0 or not self.training:
            return x
        return _dropout(x, self.p, True)

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
