"""The LoRA block of each layer type, and the two leaves it needs beyond the primitives.

PEFT's ``tuners/lora/layer.py`` adapts each layer type its own way; here each is one block of
the algebra (:class:`LoRA`, a ``Sequential``), built with that type's ``down`` and ``up``:

======================  ===============================================  =====================================
base layer              ``down`` (PEFT's A)                              ``up`` (PEFT's B)
======================  ===============================================  =====================================
``Linear``              ``Linear(in, r)``, Kaiming uniform               ``Linear(r, out)``, zeros
``Conv1d``/``Conv2d``   the base's conv with ``r`` outputs, its kernel,   1x1 conv ``r -> out``, zeros
                        stride and padding, Kaiming uniform
``Embedding``           ``Embedding(num, r)`` (A transposed), zeros        ``Linear(r, dim)`` (B), ``N(0, 1)``
======================  ===============================================  =====================================

DoRA (Liu et al. 2024) replaces ``down``/``up``/``scale`` by one :class:`DoRAUpdate` leaf
(``update``). The block's parts are named children, read by name everywhere: the ``Parallel``'s
``base`` and ``adapter``, and inside the adapter ``cast`` (where the adapter's dtype differs),
``dropout`` (not for an Embedding), ``down``, ``up`` and ``scale`` (or ``update``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .._core.arguments import check_adapter_settings, typechecked
from .._core.checks import expect_tensor
from .._core.module import Leaf, Sealed
from ..combinators import Parallel, Sequential
from ..primitives.activations import Dropout
from ..primitives.arithmetic import Add, Scale
from ..primitives.linear import Conv1d, Conv2d, Embedding, Linear, expect_last_dim
from ..primitives.structure import Copy
from ..primitives.transposed_linear import TransposedLinear
from ..traits import Elementwise, NonLinear, Param, ParamFree, Unary, Vector
from ..traits import Linear as LinearTrait

_LOW_PRECISION = (torch.float16, torch.bfloat16)
_KINDS: tuple[tuple[tuple[type, ...], str], ...] = (
    ((Linear, nn.Linear), "linear"),
    ((Embedding, nn.Embedding), "embedding"),
    ((Conv1d, Conv2d, nn.Conv1d, nn.Conv2d), "conv"),
)


def layer_kind(module: nn.Module, path: str, dora: bool = False) -> str:
    """``"linear"``, ``"embedding"`` or ``"conv"``: how ``lora`` adapts ``module`` (at ``path``).

    Raises:
        TypeError: another layer type (or DoRA on a non-Linear layer), naming ``path``; a conv
            with groups or dilation, which PEFT's conv adapter does not reproduce.
    """
    where = f"'{path or '<root>'}'"
    kind = next((name for classes, name in _KINDS if isinstance(module, classes)), None)
    if kind is None:
        raise TypeError(
            f"lora adapts Linear, Embedding, Conv1d and Conv2d layers (modify's or torch.nn's); the match at "
            f"{where} is a {type(module).__name__}: narrow `where`"
        )
    if dora and (kind != "linear" or isinstance(module, TransposedLinear)):  # DoRA reads W as (out, in)
        raise TypeError(f"lora(dora=True) adapts Linear layers only; the match at {where} is a {type(module).__name__}")
    if kind == "conv" and (module.groups != 1 or any(d != 1 for d in module.dilation)):
        raise TypeError(
            f"lora adapts convolutions with groups=1 and dilation 1 (as PEFT's conv adapter computes them); "
            f"the {type(module).__name__} at {where} has groups={module.groups}, dilation={module.dilation}"
        )
    return kind


class AsType(Leaf, Unary, ParamFree, LinearTrait, Elementwise):
    """Cast to ``dtype``: ``x -> x.to(dtype)``; puts float32 adapters around a float16/bfloat16 base.

    Args:
        dtype: the floating-point dtype of the output.

    Shape:
        ``(*) -> (*)``.

    Raises:
        ModifyTypeError: the input is not a tensor.

    Example:
        >>> import torch
        >>> from modify.adapters.blocks import AsType
        >>> AsType(torch.bfloat16)(torch.ones(2)).dtype
        torch.bfloat16
    """

    def __init__(self, dtype: torch.dtype):
        super().__init__()
        self.dtype = dtype

    def forward(self, x):
        return expect_tensor(self, x).to(self.dtype)

    def extra_repr(self) -> str:
        return f"dtype={self.dtype}"


class DoRAUpdate(Leaf, Unary, Param, NonLinear, Vector):
    """DoRA's addition to a Linear's output: ``(m / n - 1) * (W x) + (m / n) * s * B A x``.

    Liu et al. 2024, "DoRA: Weight-Decomposed Low-Rank Adaptation" (arXiv:2402.09353), computed
    as PEFT's ``DoraLinearLayer``: ``n = ||W + s B A||`` per output row, detached (section 4.3), so
    ``W x + b`` plus this is ``m / n * (W + s B A) x + b``. ``weight`` is the base layer's own
    parameter (tied, never copied).

    Args:
        weight: the base Linear's weight ``(out, in)``.
        rank: ``r``.
        scale: ``s`` (``alpha / r`` or ``alpha / sqrt(r)``).
        dtype: the adapter's dtype (the base weight is cast to it in the forward).

    Shape:
        ``(*, in) -> (*, out)``.

    Attributes:
        lora_A: ``(r, in)``, Kaiming uniform (``a = sqrt(5)``).
        lora_B: ``(out, r)``, zeros.
        magnitude: ``(out,)``, ``||W||`` per row at start (PEFT's ``lora_magnitude_vector``).

    Example:
        >>> import torch, modify
        >>> block = modify.lora(modify.Linear(4, 3), rank=2, dora=True)
        >>> type(block.adapter.update).__name__, tuple(block.adapter.update.magnitude.shape)
        ('DoRAUpdate', (3,))
    """

    def __init__(self, weight: nn.Parameter, rank: int, scale: float, dtype: torch.dtype):
        super().__init__()
        out_features, in_features = weight.shape
        place = {"device": weight.device, "dtype": dtype}
        self.weight, self.scale = weight, scale
        self.lora_A = nn.Parameter(torch.empty(rank, in_features, **place))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(out_features, rank, **place))
        with torch.no_grad():
            self.magnitude = nn.Parameter(torch.linalg.norm(weight.to(dtype), dim=1))

    def factor(self, weight: torch.Tensor) -> torch.Tensor:
        """``m / ||W + s B A||`` per output row (the norm detached), ``(out,)``."""
        lora_weight = (self.lora_B @ self.lora_A).detach()
        norm = torch.linalg.norm(weight + self.scale * lora_weight, dim=1).detach()
        return self.magnitude / norm

    def forward(self, x):
        x = expect_last_dim(self, x, self.lora_A.shape[1])
        weight = self.weight.to(x.dtype)
        factor = self.factor(weight)
        lora = F.linear(F.linear(x, self.lora_A), self.lora_B)
        return (factor - 1) * F.linear(x, weight) + factor * lora * self.scale

    def extra_repr(self) -> str:
        return f"rank={self.lora_A.shape[0]}, scale={self.scale:g}"


def _factors(kind: str, base: nn.Module, rank: int, place: dict) -> tuple[nn.Module, nn.Module]:
    """``down`` and ``up`` for a base of ``kind``, initialised as PEFT's ``reset_lora_parameters``."""
    zeros = nn.init.zeros_
    if kind == "linear":
        return Linear(base.in_features, rank, bias=False, **place), Linear(
            rank, base.out_features, bias=False, weight_init=zeros, **place
        )
    if kind == "embedding":
        down = Embedding(base.num_embeddings, rank, padding_idx=base.padding_idx, weight_init=zeros, **place)
        return down, Linear(rank, base.embedding_dim, bias=False, weight_init=nn.init.normal_, **place)
    conv = Conv1d if isinstance(base, (Conv1d, nn.Conv1d)) else Conv2d
    padding = base.padding if isinstance(base.padding, str) else tuple(base.padding)
    down = conv(base.in_channels, rank, tuple(base.kernel_size), tuple(base.stride), padding, bias=False, **place)
    return down, conv(rank, base.out_channels, 1, bias=False, weight_init=zeros, **place)


class LoRA(Sequential, Sealed):
    """A base layer plus a trainable low-rank update: ``x -> W(x) + s * up(down(dropout(x)))``.

    Shaped ``Sequential(Copy(2), Parallel(base=W, adapter=Sequential(dropout=Dropout(dropout),
    down=down, up=up, scale=Scale(s))), Add())``: the base layer (the given object, not a copy)
    at path ``"1.base"``, the adapter branch at ``"1.adapter"``, its parts read by name. A
    :class:`~modify.rewriting.fuse` keeps the block whole (it is ``Sealed``). ``s`` is
    ``alpha / rank`` (Hu et al. 2021, arXiv:2106.09685) or, with ``use_rslora``,
    ``alpha / sqrt(rank)`` (Kalajdzievski 2023, arXiv:2312.03732). Each layer type is adapted as
    PEFT's ``tuners/lora/layer.py`` adapts it (same shapes, init, scaling, dropout placement: see
    the table in :mod:`modify.adapters.blocks`); an ``Embedding`` adapter has no dropout, as
    PEFT's. With ``dora=True`` (Linear only) the branch ends in one :class:`DoRAUpdate` instead
    of ``down, up, Scale`` (Liu et al. 2024, arXiv:2402.09353), equal to PEFT's ``use_dora``.

    Adapters are float32 over a float16/bfloat16 base unless ``adapter_dtype`` says otherwise
    (PEFT's ``autocast_adapter_dtype``): the branch then starts with ``AsType(adapter dtype)``
    (not for an Embedding, whose input is ids) and the block ends with ``AsType(base dtype)``, so
    the sum is formed in float32 and the block returns the base's dtype, as PEFT's.

    Args:
        base: a ``Linear``, ``Embedding``, ``Conv1d`` or ``Conv2d`` (modify's or ``torch.nn``'s).
        rank: ``r``, the inner size of the update (at least 1).
        alpha: scale numerator, finite; ``None`` means ``alpha = rank``.
        dropout: drop probability on the adapter's input, in ``[0, 1)`` (unused for Embedding).
        use_rslora: scale by ``alpha / sqrt(rank)``.
        dora: DoRA instead of LoRA (Linear only).
        adapter_dtype: dtype of the adapter parameters (see above).

    Shape:
        The base layer's, e.g. ``(*, in_features) -> (*, out_features)`` for a Linear.

    Attributes:
        rank, alpha, dropout, use_rslora, dora: as given (``alpha`` as a float).
        kind: ``"linear"``, ``"embedding"`` or ``"conv"``, the base layer's type.
        scale: ``s``.

    Raises:
        TypeError: ``base`` of another type (or DoRA on a non-Linear); an argument of the wrong type.
        ValueError: ``rank < 1``; ``alpha`` not finite; ``dropout`` outside ``[0, 1)``.

    Example:
        >>> import torch, modify
        >>> block = modify.LoRA(modify.Linear(8, 4), rank=2, alpha=4.0)
        >>> block
        LoRA(
          rank=2, alpha=4
          (0): Copy(n=2)
          (1): Parallel(
            (base): Linear(in_features=8, out_features=4, bias=True)
            (adapter): Sequential(
              (dropout): Dropout(p=0)
              (down): Linear(in_features=8, out_features=2, bias=False)
              (up): Linear(in_features=2, out_features=4, bias=False)
              (scale): Scale(c=2)
            )
          )
          (2): Add()
        )
        >>> x = torch.randn(3, 8)
        >>> torch.equal(block(x), block.base(x))
        True
    """

    @typechecked
    def __init__(
        self,
        base: nn.Module,
        rank: int,
        alpha: float | None = None,
        dropout: float = 0.0,
        *,
        use_rslora: bool = False,
        dora: bool = False,
        adapter_dtype: torch.dtype | None = None,
    ):
        kind = layer_kind(base, "base", dora)
        alpha = check_adapter_settings("LoRA", rank, alpha, dropout)
        scale = alpha / (math.sqrt(rank) if use_rslora else rank)
        base_dtype = base.weight.dtype
        dtype = adapter_dtype or (torch.float32 if base_dtype in _LOW_PRECISION else base_dtype)
        place = {"device": base.weight.device, "dtype": dtype}
        parts = {}
        if dtype != base_dtype and kind != "embedding":
            parts["cast"] = AsType(dtype)
        if kind != "embedding":
            parts["dropout"] = Dropout(dropout)
        if dora:
            parts["update"] = DoRAUpdate(base.weight, rank, scale, dtype)
        else:
            parts["down"], parts["up"] = _factors(kind, base, rank, place)
            parts["scale"] = Scale(scale)
        cast_out = [AsType(base_dtype)] if dtype != base_dtype else []
        super().__init__(Copy(2), Parallel(base=base, adapter=Sequential(**parts)), Add(), *cast_out)
        self.kind, self.rank, self.alpha, self.scale, self.dropout = kind, rank, alpha, scale, dropout
        self.use_rslora, self.dora = use_rslora, dora

    @property
    def base(self) -> nn.Module:
        """The adapted layer (path ``"1.base"``)."""
        return self[1].base

    @property
    def adapter(self) -> nn.Module:
        """The low-rank branch (path ``"1.adapter"``), e.g. ``Sequential(dropout, down, up, scale)``."""
        return self[1].adapter

    @property
    def down(self) -> nn.Module:
        """``A``: the branch's ``down`` (``Linear(in_features, rank)`` for a Linear); not with DoRA."""
        return self.adapter.down

    @property
    def up(self) -> nn.Module:
        """``B``: the branch's ``up`` (``Linear(rank, out_features)`` for a Linear); not with DoRA."""
        return self.adapter.up

    @property
    def update(self) -> DoRAUpdate:
        """DoRA's :class:`DoRAUpdate` leaf (the branch's ``update``); only with DoRA."""
        return self.adapter.update

    def adapter_parameters(self) -> list[nn.Parameter]:
        """The branch's own parameters: those of the branch that are not the base's (DoRA ties ``W``)."""
        base = {id(p) for p in self.base.parameters()}
        return [p for p in self.adapter.parameters() if id(p) not in base]

    def extra_repr(self) -> str:
        variant = ", use_rslora=True" if self.use_rslora else ""
        variant += ", dora=True" if self.dora else ""
        return f"rank={self.rank}, alpha={self.alpha:g}{variant}"
