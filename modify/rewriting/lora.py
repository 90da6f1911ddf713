"""LoRA (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685).

A LoRA block is a ``Sequential`` that adds a low-rank branch beside a frozen-in-spirit base layer::

    LoRA(W) = Sequential(Copy(2), Parallel(W, Sequential(Dropout(p), down, up, Scale(alpha / rank))), Add())
            : x -> W(x) + (alpha / rank) * up(down(dropout(x)))

``down`` (``A``, ``rank x in``) is initialised like PEFT's ``lora_A`` (Kaiming uniform with
``a = sqrt(5)``, ``torch.nn.Linear``'s default) and ``up`` (``B``, ``out x rank``) at zero, so a new
block computes exactly ``W(x)``. :func:`lora`, :func:`merge_lora` and :func:`strip_lora` are each a
few lines on top of the one tree walk (:mod:`modify.rewriting.walk`).
"""

from __future__ import annotations

import torch
from torch import nn

from .._core.checks import typechecked
from .._core.identity import unique
from .._core.sibling import sibling
from ..combinators import Parallel, Sequential
from ..primitives.activations import Dropout
from ..primitives.arithmetic import Add, Scale
from ..primitives.layers import Linear
from ..primitives.structure import Copy
from .select import Criterion, select
from .walk import positions, rebuild


def _features(module: nn.Module, path: str) -> tuple[int, int]:
    if isinstance(module, (Linear, nn.Linear)):
        return module.in_features, module.out_features
    raise TypeError(
        f"lora adapts Linear layers (modify.Linear or torch.nn.Linear); the match at '{path or '<root>'}' "
        f"is a {type(module).__name__}: narrow `where`"
    )


class LoRA(Sequential):
    """A base ``Linear`` plus a trainable low-rank update: ``x -> W(x) + (alpha / rank) B A x``.

    Shaped ``Sequential(Copy(2), Parallel(W, Sequential(Dropout(dropout), down, up,
    Scale(alpha / rank))), Add())``: the base layer sits at path ``"1.0"``, ``down`` (``A``) at
    ``"1.1.1"`` and ``up`` (``B``) at ``"1.1.2"``. The base layer is the given object, not a copy.
    Hu et al. 2021 (arXiv:2106.09685), initialised and scaled as PEFT's ``LoraLayer``; dropout
    acts on the adapter's input only, as in PEFT.

    Args:
        base: the layer to adapt, a ``modify.Linear`` or ``torch.nn.Linear``.
        rank: ``r``, the inner size of the update (at least 1).
        alpha: the update is scaled by ``alpha / rank``; ``None`` means ``alpha = rank``.
        dropout: drop probability on the adapter's input, in ``[0, 1)``.

    Shape:
        ``(*, in_features) -> (*, out_features)``, e.g. ``(B, T, in_features) -> (B, T, out_features)``.

    Attributes:
        down: ``Linear(in_features, rank, bias=False)``, Kaiming-uniform (``a = sqrt(5)``) as
            PEFT's ``lora_A``; on the base weight's device and dtype.
        up: ``Linear(rank, out_features, bias=False)``, zeros, so the block starts equal to ``base``.
        rank: as given.
        alpha: as given, as a float (``rank`` when ``None`` was given).

    Raises:
        TypeError: ``base`` is not a Linear layer; an argument of the wrong type.
        ValueError: ``rank < 1``; ``dropout`` outside ``[0, 1)``.

    Example:
        >>> import torch, modify
        >>> block = modify.LoRA(modify.Linear(8, 4), rank=2, alpha=4.0)
        >>> block
        LoRA(
          rank=2, alpha=4
          (0): Copy(n=2)
          (1): Parallel(
            (0): Linear(in_features=8, out_features=4, bias=True)
            (1): Sequential(
              (0): Dropout(p=0)
              (1): Linear(in_features=8, out_features=2, bias=False)
              (2): Linear(in_features=2, out_features=4, bias=False)
              (3): Scale(c=2)
            )
          )
          (2): Add()
        )
        >>> x = torch.randn(3, 8)
        >>> torch.equal(block(x), block.base(x))
        True
    """

    @typechecked
    def __init__(self, base: nn.Module, rank: int, alpha: float | None = None, dropout: float = 0.0):
        in_features, out_features = _features(base, "base")
        if rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {rank}")
        alpha = float(rank) if alpha is None else float(alpha)
        place = {"device": base.weight.device, "dtype": base.weight.dtype}
        down = Linear(in_features, rank, bias=False, **place)
        up = Linear(rank, out_features, bias=False, weight_init=nn.init.zeros_, **place)
        adapter = Sequential(Dropout(dropout), down, up, Scale(alpha / rank))
        super().__init__(Copy(2), Parallel(base, adapter), Add())
        self.rank, self.alpha = rank, alpha

    @property
    def base(self) -> nn.Module:
        """The adapted layer (path ``"1.0"``)."""
        return self[1][0]

    @property
    def adapter(self) -> nn.Module:
        """The low-rank branch ``Sequential(Dropout, down, up, Scale)`` (path ``"1.1"``)."""
        return self[1][1]

    @property
    def down(self) -> nn.Module:
        """``A``: ``Linear(in_features, rank)`` (path ``"1.1.1"``)."""
        return self.adapter[1]

    @property
    def up(self) -> nn.Module:
        """``B``: ``Linear(rank, out_features)`` (path ``"1.1.2"``)."""
        return self.adapter[2]

    @property
    def scale(self) -> float:
        """The factor of the update, ``alpha / rank`` as held by the ``Scale`` leaf."""
        return self.adapter[3].c

    def extra_repr(self) -> str:
        return f"rank={self.rank}, alpha={self.alpha:g}"


def _lora_blocks(model: nn.Module) -> list[LoRA]:
    return unique(m for _, m, _ in positions(model) if isinstance(m, LoRA))


def _adapter_modules(model: nn.Module) -> set[int]:
    """Ids of every module inside some LoRA block's adapter branch."""
    return {id(m) for block in _lora_blocks(model) for m in block.adapter.modules()}


@typechecked
def lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    where: tuple[Criterion, ...] = (Linear,),
) -> nn.Module:
    """A sibling of ``model`` where each matched Linear ``W`` becomes ``LoRA(W, rank, alpha, dropout)``.

    Base parameters are shared with ``model`` (the very same leaf objects sit inside the blocks);
    adapter parameters are new. Each call makes new adapters, so two calls on one base give two
    independent adapters over one set of base weights. The layers of existing adapters never
    match: on an already adapted model, ``lora`` adapts the base layers again (inside their
    blocks), so the updates add up. A layer placed at several paths gets one block, placed at each
    of them (shared, as the layer was). Train the adapters with an optimizer over
    :func:`lora_parameters`; the base model's outputs then stay bit-identical.

    Args:
        model: the model to adapt; left unchanged.
        rank: ``r`` of every block.
        alpha: scale numerator (``None``: ``alpha = rank``).
        dropout: adapter-input dropout probability.
        where: criteria as in :func:`modify.select`, all of which must hold; default every
            ``modify.Linear`` layer. Pass ``(torch.nn.Linear,)`` for wrapped ``torch.nn`` layers.

    Returns:
        The adapted sibling (a :class:`LoRA` block itself if ``model`` is a matched layer).

    Raises:
        TypeError: a match that is not a Linear layer; an argument of the wrong type.
        ValueError: ``rank < 1``; bad ``dropout``; a match inside an opaque leaf.

    Example:
        >>> import torch, modify
        >>> base = modify.Sequential(modify.Linear(8, 8), modify.ReLU(), modify.Linear(8, 2))
        >>> adapted = modify.lora(base, rank=2, where=("0",))
        >>> adapted[0].base is base[0], adapted[2] is base[2]
        (True, True)
        >>> x = torch.randn(4, 8)
        >>> torch.equal(adapted(x), base(x))
        True
        >>> [tuple(p.shape) for p in modify.lora_parameters(adapted)]
        [(2, 8), (8, 2)]
    """
    adapters = _adapter_modules(model)
    selection = select(model, *where, lambda path, module: id(module) not in adapters)
    for path, module in selection:
        _features(module, path)
    return selection.apply(lambda module: LoRA(module, rank, alpha, dropout))


@typechecked
def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (``down`` and ``up`` of every :class:`LoRA` block), each once.

    The parameters PEFT leaves trainable after ``get_peft_model`` (its ``lora_A``/``lora_B``),
    here handed to the optimizer instead of freezing the rest (Hu et al. 2021).

    Args:
        model: any model; one without LoRA blocks gives ``[]``.

    Returns:
        The parameters to give an optimizer to train only the adapters, in model order.

    Raises:
        TypeError: ``model`` not a ``torch.nn.Module``.

    Example:
        >>> import torch, modify
        >>> adapted = modify.lora(modify.Linear(6, 3), rank=2)
        >>> opt = torch.optim.AdamW(modify.lora_parameters(adapted), lr=1e-3)
        >>> sum(p.numel() for p in modify.lora_parameters(adapted))
        18
    """
    found: dict[int, nn.Parameter] = {}
    for block in _lora_blocks(model):
        for parameter in block.adapter.parameters():
            found.setdefault(id(parameter), parameter)
    return list(found.values())


def _merged(block: LoRA) -> nn.Module:
    base = merge_lora(block.base)
    _features(base, "1.0 of a LoRA block")
    down, up = block.down, block.up
    if not (isinstance(down, Linear) and isinstance(up, Linear) and isinstance(block.adapter[3], Scale)):
        raise TypeError("merge_lora: a LoRA block's adapter is no longer (Dropout, Linear, Linear, Scale)")
    weight = base.weight
    wide = torch.promote_types(weight.dtype, torch.float32)
    with torch.no_grad():
        delta = block.scale * (up.weight.to(wide) @ down.weight.to(wide))
        merged = (weight.to(wide) + delta).to(weight.dtype)
    return sibling(base, parameters={**base._parameters, "weight": nn.Parameter(merged, requires_grad=weight.requires_grad)})


@typechecked
def merge_lora(model: nn.Module) -> nn.Module:
    """A plain sibling where every :class:`LoRA` block becomes its base layer with a merged weight.

    The merged weight is ``W + (alpha / rank) * B @ A``, computed in float32 (or wider, for
    float64 weights) and cast back to ``W``'s dtype: a new tensor; the bias and everything outside
    the blocks are shared. Stacked blocks (``lora`` applied twice) are merged inner first. The
    result's ``state_dict()`` keys equal the base model's, and its outputs equal the adapted
    model's in eval mode (or with ``dropout=0``). The merge of Hu et al. 2021 (section 4.1,
    ``W = W_0 + BA``), as PEFT's ``merge_and_unload``, without touching the adapted model.

    Args:
        model: an adapted model; left unchanged.

    Returns:
        The merged model (``model`` itself if it holds no LoRA block).

    Raises:
        TypeError: ``model`` not a ``torch.nn.Module``; a block whose adapter was rewritten out
            of its LoRA shape, or whose base is not a Linear layer.

    Example:
        >>> import torch, modify
        >>> base = modify.Sequential(modify.Linear(8, 8), modify.ReLU(), modify.Linear(8, 2))
        >>> adapted = modify.lora(base, rank=2)
        >>> _ = torch.nn.init.normal_(adapted[0].up.weight)
        >>> merged = modify.merge_lora(adapted)
        >>> list(merged.state_dict()) == list(base.state_dict())
        True
        >>> x = torch.randn(4, 8)
        >>> torch.allclose(merged(x), adapted(x), atol=1e-5)
        True
    """
    return rebuild(model, lambda path, module: _merged(module) if isinstance(module, LoRA) else None)


@typechecked
def strip_lora(model: nn.Module) -> nn.Module:
    """The base model again: every :class:`LoRA` block replaced by its base layer (the same object).

    As PEFT's ``unload()`` (Hu et al. 2021's adapters dropped), without touching the adapted
    model. Stacked blocks (``lora`` applied twice) are stripped down to the innermost base.

    Args:
        model: an adapted model; left unchanged.

    Returns:
        A model built from the very same base leaves (``model`` itself if it has no LoRA block).

    Raises:
        TypeError: ``model`` not a ``torch.nn.Module``.

    Example:
        >>> import modify
        >>> base = modify.Sequential(modify.Linear(8, 8), modify.ReLU(), modify.Linear(8, 2))
        >>> again = modify.strip_lora(modify.lora(base, rank=2))
        >>> all(a is b for a, b in zip(again.modules(), base.modules()) if not isinstance(a, modify.Combinator))
        True
    """
    return rebuild(model, lambda path, module: strip_lora(module.base) if isinstance(module, LoRA) else None)
