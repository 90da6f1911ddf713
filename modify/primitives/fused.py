"""Fused leaves: one kernel where the algebra keeps two leaves apart, for :func:`modify.fuse`.

The algebra splits a ``torch.nn.LayerNorm`` into ``LayerNorm`` (no parameters) and
``ElementwiseAffine``; in eager mode that costs a second kernel and its backward. Each class here
computes such a pair in one call and is built by :func:`modify.fuse` from the pair itself with
``from_pair``, holding the *same* parameter objects. Each is also an ordinary leaf that can be
built on its own (fresh parameters, ``torch.nn``'s initialisation).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from .._core.arguments import check_finite, check_sizes, typechecked
from .._core.checks import expect_channels, expect_last_dim, expect_trailing
from .._core.module import Leaf
from .._core.sibling import holding
from .arithmetic import Scale
from .linear import Linear, reset_like_torch
from .norms import ElementwiseAffine, GroupNorm, LayerNorm, RMSNorm, as_shape, reset_affine, trailing_scope
from ..traits import Linear as LinearTrait
from ..traits import NonLinear, Param, Unary, Vector


def _optional(shape: tuple[int, ...], present: bool, device, dtype) -> nn.Parameter | None:
    return nn.Parameter(torch.empty(shape, device=device, dtype=dtype)) if present else None


def _require(cls: type, first: nn.Module, second: nn.Module, expected: str) -> None:
    if not cls.fits(first, second):
        raise ValueError(
            f"{cls.__name__}.from_pair expects {expected}, got {type(first).__name__} then {type(second).__name__} "
            f"({first.extra_repr()}; {second.extra_repr()})"
        )


class _AffineNorm(Leaf):
    """A trailing-axes norm with its affine part: the family of ``AffineLayerNorm`` and ``AffineRMSNorm``.

    :func:`modify.fuse` builds one with :meth:`from_pair` from a norm followed by its
    ``ElementwiseAffine(normalized_shape)``, holding the affine's parameter objects.

    Args:
        normalized_shape: the trailing shape normalised over (int or tuple).
        bias: learn a bias.
        device, dtype: of the parameters.

    Shape:
        ``(*, *normalized_shape) -> same``.

    Attributes:
        weight: ``normalized_shape``, ones. bias: ``normalized_shape``, zeros, or ``None``.

    Raises:
        ValueError: a size below 1; ``eps`` (when given) not positive and finite.
        ModifyValueError: the input's trailing shape differs from ``normalized_shape``.

    The traits are the norm's: ``Vector`` over one trailing axis, ``Matrix`` over two.
    """

    norm_class: type = LayerNorm

    @classmethod
    def fits(cls, norm: nn.Module, affine: nn.Module) -> bool:
        """Whether ``norm`` then ``affine`` is this class's pair: the affine covers exactly the normalised axes."""
        return (
            type(norm) is cls.norm_class
            and type(affine) is ElementwiseAffine
            and affine.dim == -1
            and affine.shape == norm.normalized_shape
        )

    def __init__(self, normalized_shape, eps, bias: bool, device, dtype):  # the subclasses check the types
        super().__init__()
        check_finite(type(self).__name__, positive=True, eps=eps)
        self.normalized_shape, self.eps = as_shape(normalized_shape, type(self).__name__), eps
        self.weight = nn.Parameter(torch.empty(self.normalized_shape, device=device, dtype=dtype))
        self.register_parameter("bias", _optional(self.normalized_shape, bias, device, dtype))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weight to ones, bias to zeros (``torch.nn``'s init)."""
        reset_affine(self.weight, self.bias)

    @classmethod
    @typechecked
    def from_pair(cls, norm: nn.Module, affine: nn.Module) -> _AffineNorm:
        """The fused leaf of ``norm`` then ``affine``, holding ``affine``'s parameter objects.

        Raises:
            ValueError: not this class's norm (``LayerNorm(s)``, ``RMSNorm(s)``) then an
                ``ElementwiseAffine(s)`` with ``dim=-1``.
        """
        _require(cls, norm, affine, f"{cls.norm_class.__name__}(s) then ElementwiseAffine(s, dim=-1)")
        fused = cls(norm.normalized_shape, norm.eps, bias=False, device="meta")
        return holding(fused, affine, "weight", "bias")

    @classmethod
    def run_pair(cls, norm: nn.Module, affine: ElementwiseAffine, x: object) -> torch.Tensor | None:
        """``affine(norm(x))`` in one call, as this class computes it, without building the leaf.

        The call-time form of the rule (:mod:`modify.primitives.fusion`): the norm's input check
        runs as in ``norm.forward`` (its errors name the norm).

        Returns:
            The output, or ``None`` where ``x``'s dtype differs from the weight's (the two leaves
            promote; one call would not).
        """
        x = expect_trailing(norm, x, norm.normalized_shape)
        if x.dtype != affine.weight.dtype:
            return None
        return cls.compute(x, norm.normalized_shape, affine.weight, affine.bias, norm.eps)

    def forward(self, x):
        x = expect_trailing(self, x, self.normalized_shape)
        return self.compute(x, self.normalized_shape, self.weight, self.bias, self.eps)

    def line_expression(self, writer, value: str) -> str:
        """``compute`` alone (see :mod:`modify._core.straight_line`): the norm refuses other trailing axes itself."""
        return self._compute_expression(writer, self, self, value)

    @classmethod
    def pair_expression(cls, writer, norm: nn.Module, affine: ElementwiseAffine, value: str) -> str:
        """:meth:`run_pair` without the check, as one expression (``None`` where the dtypes differ)."""
        compute = cls._compute_expression(writer, norm, affine, value)
        return f"({compute} if {value}.dtype == {writer.name(affine)}.weight.dtype else None)"

    @classmethod
    def _compute_expression(cls, writer, norm: nn.Module, affine: nn.Module, value: str) -> str:
        """``compute`` on ``value`` with ``norm``'s shape and eps and ``affine``'s weight and bias."""
        n, a = writer.name(norm), writer.name(affine)
        return f"{writer.name(cls.compute)}({value}, {n}.normalized_shape, {a}.weight, {a}.bias, {n}.eps)"

    def _infer_traits(self) -> frozenset[type]:
        return trailing_scope(super()._infer_traits(), self.normalized_shape)

    def extra_repr(self) -> str:
        return f"{self.normalized_shape}, eps={self.eps}, bias={self.bias is not None}"


class AffineLayerNorm(_AffineNorm, Unary, Param, NonLinear, Vector):
    """``LayerNorm`` followed by its ``ElementwiseAffine``, in one ``F.layer_norm`` call.

    Computes exactly what ``torch.nn.LayerNorm`` computes (Ba et al. 2016, "Layer
    Normalization").

    Args:
        eps: added to the variance (default ``1e-5``). ``bias`` defaults to ``True``.

    Example:
        >>> import torch, modify
        >>> from modify.primitives import AffineLayerNorm
        >>> pair = modify.Sequential(modify.LayerNorm(4), modify.ElementwiseAffine(4))
        >>> fused = AffineLayerNorm.from_pair(pair[0], pair[1])
        >>> fused.weight is pair[1].weight
        True
        >>> x = torch.randn(2, 4)
        >>> torch.allclose(fused(x), pair(x), atol=1e-6)
        True
    """

    @typechecked
    def __init__(
        self,
        normalized_shape: int | tuple[int, ...] | list[int],
        eps: float = 1e-5,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(normalized_shape, float(eps), bias, device, dtype)

    norm_class = LayerNorm

    @staticmethod
    def compute(x, normalized_shape, weight, bias, eps):
        """``F.layer_norm`` with the affine's weight and bias."""
        return F.layer_norm(x, normalized_shape, weight, bias, eps)


class AffineRMSNorm(_AffineNorm, Unary, Param, NonLinear, Vector):
    """``RMSNorm`` followed by its ``ElementwiseAffine``: ``F.rms_norm`` with the weight (+ bias).

    Computes what ``torch.nn.RMSNorm`` computes (Zhang & Sennrich 2019), plus the bias when there
    is one.

    Args:
        eps: added to the mean square; ``None`` uses ``torch.finfo(x.dtype).eps``. ``bias``
            defaults to ``False``, as Llama.

    Example:
        >>> import torch
        >>> from modify.primitives import AffineRMSNorm
        >>> norm = AffineRMSNorm(4, eps=1e-6)
        >>> x = torch.randn(2, 4)
        >>> torch.allclose(norm(x), torch.nn.RMSNorm(4, eps=1e-6)(x), atol=1e-6)
        True
    """

    @typechecked
    def __init__(
        self,
        normalized_shape: int | tuple[int, ...] | list[int],
        eps: float | None = None,
        bias: bool = False,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__(normalized_shape, eps, bias, device, dtype)

    norm_class = RMSNorm

    @staticmethod
    def compute(x, normalized_shape, weight, bias, eps):
        """``F.rms_norm`` with the affine's weight, then its bias if any."""
        y = F.rms_norm(x, normalized_shape, weight, eps)
        return y if bias is None else y + bias


class AffineGroupNorm(Leaf, Unary, Param, NonLinear):
    """``GroupNorm`` followed by ``ElementwiseAffine(C, dim=1)``, in one ``F.group_norm`` call.

    Computes exactly what ``torch.nn.GroupNorm`` computes (Wu & He 2018, "Group Normalization").
    :func:`modify.fuse` builds it with :meth:`from_pair`.

    Args:
        num_groups: groups the channels are split into.
        num_channels: channels ``C`` (axis 1), divisible by ``num_groups``.
        eps: added to the variance (default ``1e-5``).
        bias: learn a bias (default ``True``).
        device, dtype: of the parameters.

    Shape:
        ``(N, C, *) -> same``.

    Attributes:
        weight: ``(C,)``, ones. bias: ``(C,)``, zeros, or ``None``.

    Raises:
        ValueError: ``num_channels`` not divisible by ``num_groups``.
        ModifyValueError: an input whose axis 1 is not ``num_channels``.

    Example:
        >>> import torch
        >>> from modify.primitives import AffineGroupNorm
        >>> x = torch.randn(2, 4, 3)
        >>> torch.allclose(AffineGroupNorm(2, 4)(x), torch.nn.GroupNorm(2, 4)(x), atol=1e-6)
        True
    """

    @typechecked
    def __init__(
        self,
        num_groups: int,
        num_channels: int,
        eps: float = 1e-5,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        check_sizes("AffineGroupNorm", num_groups=num_groups, num_channels=num_channels)
        if num_channels % num_groups:
            raise ValueError(f"AffineGroupNorm: num_channels {num_channels} not divisible by num_groups {num_groups}")
        self.num_groups, self.num_channels, self.eps = num_groups, num_channels, float(eps)
        self.weight = nn.Parameter(torch.empty(num_channels, device=device, dtype=dtype))
        self.register_parameter("bias", _optional((num_channels,), bias, device, dtype))
        self.reset_parameters()

    @torch.no_grad()
    def reset_parameters(self) -> None:
        """Weight to ones, bias to zeros (``torch.nn``'s init)."""
        reset_affine(self.weight, self.bias)

    @classmethod
    def fits(cls, norm: nn.Module, affine: nn.Module) -> bool:
        """Whether ``norm`` then ``affine`` is a ``GroupNorm`` and its channel affine (``dim=1``)."""
        return (
            type(norm) is GroupNorm
            and type(affine) is ElementwiseAffine
            and affine.dim == 1
            and affine.shape == (norm.num_channels,)
        )

    @classmethod
    @typechecked
    def from_pair(cls, norm: nn.Module, affine: nn.Module) -> AffineGroupNorm:
        """The fused leaf of ``norm`` then ``affine``, holding ``affine``'s parameter objects.

        Raises:
            ValueError: not a ``GroupNorm(G, C)`` then an ``ElementwiseAffine(C, dim=1)``.
        """
        _require(cls, norm, affine, "GroupNorm(G, C) then ElementwiseAffine(C, dim=1)")
        fused = cls(norm.num_groups, norm.num_channels, norm.eps, bias=False, device="meta")
        return holding(fused, affine, "weight", "bias")

    def forward(self, x):
        x = expect_channels(self, x, self.num_channels)
        return F.group_norm(x, self.num_groups, self.weight, self.bias, self.eps)

    def extra_repr(self) -> str:
        return f"{self.num_groups}, {self.num_channels}, eps={self.eps:g}, bias={self.bias is not None}"


class ScaledLinear(Leaf, Unary, Param, LinearTrait, Vector):
    """``c * (x W^T + b)``: a ``Linear`` followed by a ``Scale(c)``, scaled in place of its output.

    The product is scaled in place (``mul_``), saving the second output tensor; ``F.linear``'s
    backward does not need its output, so autograd allows it. LoRA's ``up`` projection followed
    by ``Scale(alpha / rank)`` is the common case (Hu et al. 2021). :func:`modify.fuse` builds it
    with :meth:`from_pair`.

    Args:
        in_features, out_features: as ``torch.nn.Linear``.
        c: the factor.
        bias: learn an additive bias, scaled with the product (default ``True``).
        device, dtype: of the parameters.

    Shape:
        ``(*, in_features) -> (*, out_features)``.

    Attributes:
        weight: ``(out_features, in_features)``; bias: ``(out_features,)`` or ``None``;
            initialised as ``torch.nn.Linear``.

    Raises:
        ModifyValueError: an input whose last dimension is not ``in_features``.

    Example:
        >>> import torch, modify
        >>> from modify.primitives import ScaledLinear
        >>> pair = modify.Sequential(modify.Linear(3, 2), modify.Scale(0.5))
        >>> fused = ScaledLinear.from_pair(pair[0], pair[1])
        >>> x = torch.randn(4, 3)
        >>> torch.equal(fused(x), pair(x)), fused.weight is pair[0].weight
        (True, True)
    """

    @typechecked
    def __init__(
        self,
        in_features: int,
        out_features: int,
        c: float,
        bias: bool = True,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
    ):
        super().__init__()
        check_sizes("ScaledLinear", in_features=in_features, out_features=out_features)
        self.in_features, self.out_features, self.c = in_features, out_features, float(c)
        self.weight = nn.Parameter(torch.empty(out_features, in_features, device=device, dtype=dtype))
        self.register_parameter("bias", _optional((out_features,), bias, device, dtype))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """As ``torch.nn.Linear``: Kaiming-uniform weight (``a = sqrt(5)``), uniform bias."""
        reset_like_torch(self.weight, self.bias)

    @classmethod
    def fits(cls, linear: nn.Module, scale: nn.Module) -> bool:
        """Whether ``linear`` then ``scale`` is a ``modify.Linear`` (or a ``ScaledLinear``) then a ``Scale``."""
        return type(linear) in (Linear, ScaledLinear) and type(scale) is Scale

    @classmethod
    @typechecked
    def from_pair(cls, linear: nn.Module, scale: nn.Module) -> ScaledLinear:
        """The fused leaf of ``linear`` then ``scale``, holding the layer's parameter objects.

        A ``ScaledLinear`` then a ``Scale(c)`` gives one ``ScaledLinear`` with the product of the factors.

        Raises:
            ValueError: not a ``modify.Linear`` (or ``ScaledLinear``) then a ``Scale``.
        """
        _require(cls, linear, scale, "a modify.Linear (or ScaledLinear) then a Scale")
        factor = scale.c * (linear.c if isinstance(linear, ScaledLinear) else 1.0)
        fused = cls(linear.in_features, linear.out_features, factor, bias=False, device="meta")
        return holding(fused, linear, "weight", "bias")

    def forward(self, x):
        return F.linear(expect_last_dim(self, x, self.in_features), self.weight, self.bias).mul_(self.c)

    def extra_repr(self) -> str:
        sizes = f"in_features={self.in_features}, out_features={self.out_features}"
        return f"{sizes}, c={self.c:g}, bias={self.bias is not None}"
