"""Elementwise and per-vector nonlinearities, and ``Dropout``."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from .._core.arguments import typechecked
from .._core.checks import expect_tensor
from .._core.checks import expect_dims
from .._core.module import Leaf
from ..traits import Elementwise, Linear, NonLinear, ParamFree, Unary, Vector


class _Activation(Leaf, Unary, ParamFree, NonLinear, Elementwise):
    """An elementwise nonlinearity: the family of ``ReLU``, ``GELU``, ``SiLU``, ``Tanh``, ``Sigmoid``, ``Exp``.

    Each runs the torch function it is named after on one tensor, element by element. An integer
    input gives what torch gives (a floating-point output for ``Tanh``, ``Sigmoid``, ``Exp``).

    Shape:
        ``(*) -> (*)``, any number of axes, e.g. ``(B, T, C) -> (B, T, C)``.

    Raises:
        ModifyTypeError: the input is not a tensor (a tuple, say).
    """


class ReLU(_Activation):
    """Rectified linear unit ``max(x, 0)``, as ``torch.nn.ReLU`` (``torch.relu``).

    Nair & Hinton 2010, "Rectified Linear Units Improve Restricted Boltzmann Machines".

    Example:
        >>> import torch, modify
        >>> modify.ReLU()(torch.tensor([-1.0, 2.0])).tolist()
        [0.0, 2.0]
    """

    def forward(self, x):
        return torch.relu(expect_tensor(self, x))


class GELU(_Activation):
    """Gaussian error linear unit ``x * Phi(x)``, as ``torch.nn.GELU`` (``F.gelu``).

    Hendrycks & Gimpel 2016, "Gaussian Error Linear Units (GELUs)"; ``approximate="tanh"`` is
    the approximation GPT-2 uses (Hugging Face's ``gelu_new``).

    Args:
        approximate: ``"none"`` (exact, with ``erf``; the default) or ``"tanh"``; another value
            is a ``ValueError``.

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

    def line_expression(self, writer, value: str) -> str:
        """``F.gelu`` alone (see :mod:`modify._core.straight_line`): it refuses what the check refuses."""
        return f"{writer.name(F.gelu)}({value}, approximate={writer.name(self)}.approximate)"

    def extra_repr(self) -> str:
        return f"approximate={self.approximate!r}"


class SiLU(_Activation):
    """Sigmoid linear unit (swish) ``x * sigmoid(x)``, as ``torch.nn.SiLU`` (``F.silu``).

    Elfwing et al. 2017, "Sigmoid-Weighted Linear Units for Neural Network Function
    Approximation in Reinforcement Learning"; the gate of Llama's SwiGLU MLP.

    Example:
        >>> import torch, modify
        >>> modify.SiLU()(torch.zeros(1)).tolist()
        [0.0]
    """

    def forward(self, x):
        return F.silu(expect_tensor(self, x))


class Tanh(_Activation):
    """Hyperbolic tangent, as ``torch.nn.Tanh`` (``torch.tanh``): odd, with values in ``(-1, 1)``.

    Example:
        >>> import torch, modify
        >>> x = torch.tensor([-30.0, 0.0, 30.0])
        >>> modify.Tanh()(x).tolist()
        [-1.0, 0.0, 1.0]
    """

    def forward(self, x):
        return torch.tanh(expect_tensor(self, x))


class Sigmoid(_Activation):
    """Logistic sigmoid ``1 / (1 + exp(-x))``, as ``torch.nn.Sigmoid`` (``torch.sigmoid``).

    Equal to ``(1 + tanh(x / 2)) / 2``; :class:`SiLU` is ``x * sigmoid(x)``.

    Example:
        >>> import torch, modify
        >>> x = torch.randn(4)
        >>> torch.allclose(modify.Sigmoid()(x), (1 + torch.tanh(x / 2)) / 2, atol=1e-6)
        True
    """

    def forward(self, x):
        return torch.sigmoid(expect_tensor(self, x))


class Exp(_Activation):
    """Exponential ``e^x``, as ``torch.exp``; the numerator of :class:`Softmax`.

    Example:
        >>> import torch, modify
        >>> modify.Exp()(torch.tensor([0.0, 1.0]))
        tensor([1.0000, 2.7183])
    """

    def forward(self, x):
        return torch.exp(expect_tensor(self, x))


class _AlongDim(Leaf):
    """A normalisation along one dimension: the family of ``Softmax`` and ``LogSoftmax``.

    Unlike ``torch.nn.Softmax``/``LogSoftmax``, ``dim`` defaults to ``-1`` (the last dimension).

    Args:
        dim: the dimension normalised (default ``-1``). The class is tagged ``Vector``; for
            another ``dim``, ``modify.traits_of`` drops it for the instance.

    Raises:
        TypeError: ``dim`` not an int.
        ModifyTypeError: the input is not a tensor.
        ModifyValueError: an input without axis ``dim``.
    """

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
    """Softmax along ``dim``: ``exp(x) / sum(exp(x), dim)``, as ``torch.nn.Softmax`` (``torch.softmax``).

    Shape:
        ``(*) -> (*)``, any number of axes, e.g. attention logits ``(B, H, T, S) -> (B, H, T, S)``,
        each slice along ``dim`` summing to 1.

    Example:
        >>> import torch, modify
        >>> modify.Softmax()(torch.zeros(2)).tolist()
        [0.5, 0.5]
    """

    def forward(self, x):
        return torch.softmax(expect_dims(self, x, self.dim), self.dim)


class LogSoftmax(_AlongDim, Unary, ParamFree, NonLinear, Vector):
    """Log of the softmax along ``dim``, computed stably, as ``torch.nn.LogSoftmax`` (``torch.log_softmax``).

    Shape:
        ``(*) -> (*)``, any number of axes, e.g. logits ``(B, T, V) -> (B, T, V)`` log-probabilities.

    Example:
        >>> import torch, modify
        >>> round(modify.LogSoftmax()(torch.zeros(2))[0].item(), 4)
        -0.6931
    """

    def forward(self, x):
        return torch.log_softmax(expect_dims(self, x, self.dim), self.dim)


def _dropout(x, p: float, training: bool):
    if isinstance(x, tuple):
        return tuple(_dropout(v, p, training) for v in x)
    return F.dropout(x, p, training)


class Dropout(Leaf, Unary, ParamFree, Linear, Elementwise):
    """Zero each element with probability ``p`` in training, scaling the rest by ``1 / (1 - p)``.

    As ``torch.nn.Dropout`` (``F.dropout``; Srivastava et al. 2014, "Dropout: A Simple Way to
    Prevent Neural Networks from Overfitting"). In eval mode, or with ``p == 0``, the identity:
    any value passes through as the same object. In training, every tensor of a (nested) tuple
    gets its own mask.

    Args:
        p: drop probability in ``[0, 1)`` (default ``0.5``).

    Shape:
        Any value -> the same structure: ``(*) -> (*)`` for a tensor, e.g. ``(B, T, C) -> (B, T, C)``;
        a tuple of tensors gives a tuple of tensors of the same shapes.

    Raises:
        TypeError: ``p`` not a number.
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

    def line_expression(self, writer, value: str) -> str:
        """The input where ``forward`` returns it, else ``forward`` (see :mod:`modify._core.straight_line`)."""
        me = writer.name(self)
        return f"({value} if {me}.p == 0.0 or not {me}.training else {me}.forward({value}))"

    def extra_repr(self) -> str:
        return f"p={self.p:g}"
