"""LoRA rewriters (Hu et al. 2021, "LoRA: Low-Rank Adaptation of Large Language Models", arXiv:2106.09685).

:func:`lora` wraps each matched layer in a :class:`~modify.LoRA` block (see
:mod:`modify.adapters.blocks`); :func:`merge_lora` and :func:`strip_lora` replace the blocks again.
Each is a few lines on top of ``select(...).apply(...)``, the one tree walk.
"""

from __future__ import annotations

import torch
from torch import nn

from .._core.arguments import check_adapter_settings, typechecked
from .._core.identity import unique
from .._core.sibling import sibling
from ..primitives.linear import Linear
from ..primitives.transposed_linear import TransposedLinear
from ..rewriting.criteria import Where, as_criteria
from ..rewriting.selection import matching, select
from ..rewriting.walk import positions
from .blocks import LoRA, layer_kind
from .peft_names import peft_names


def lora_blocks(model: nn.Module) -> list[LoRA]:
    """Every :class:`LoRA` block of ``model``, once each, in module order."""
    return unique(m for _, m, _ in positions(model) if isinstance(m, LoRA))


def _adapter_modules(model: nn.Module) -> set[int]:
    """Ids of every module inside some LoRA block's adapter branch."""
    return {id(m) for block in lora_blocks(model) for m in block.adapter.modules()}


@peft_names
@typechecked
def lora(
    model: nn.Module,
    rank: int,
    alpha: float | None = None,
    dropout: float = 0.0,
    where: Where = (Linear,),
    *,
    use_rslora: bool = False,
    dora: bool = False,
    adapter_dtype: torch.dtype | None = None,
) -> nn.Module:
    """A sibling of ``model`` where each matched layer ``W`` becomes a :class:`~modify.LoRA` block.

    Base parameters are shared with ``model`` (the very same leaf objects sit inside the blocks);
    adapter parameters are new. Matched layers may be ``Linear``, ``Embedding``, ``Conv1d`` and
    ``Conv2d``, modify's or ``torch.nn``'s, each adapted as PEFT adapts that type (see
    :class:`~modify.LoRA`). Each call makes new adapters, so two calls on one base give two
    independent adapters over one set of base weights. The layers of existing adapters never
    match: on an already adapted model, ``lora`` adapts the base layers again (inside their
    blocks), so the updates add up. A layer placed at several paths gets one block, placed at
    each of them. Train the adapters with an optimizer over :func:`lora_parameters`; the base
    model's outputs then stay bit-identical.

    Args:
        model: the model to adapt; left unchanged.
        rank: ``r`` of every block.
        alpha: scale numerator (``None``: ``alpha = rank``), finite.
        dropout: adapter-input dropout probability (not for Embedding layers, as PEFT).
        where: one criterion or a tuple of criteria as in :func:`modify.select`, all of which
            must hold (:func:`modify.any_of` for any of them: PEFT's ``target_modules``); default
            every ``modify.Linear`` layer. Globs match paths and reference names
            (``"transformer.h.0.attn.c_attn"``). ``torch.nn.Linear`` matches
            ``torch.nn`` layers wrapped in a combinator.
        use_rslora: scale by ``alpha / sqrt(rank)`` (rsLoRA, Kalajdzievski 2023).
        dora: DoRA blocks (Liu et al. 2024; Linear layers only).
        adapter_dtype: adapter parameter dtype; default float32 over a float16/bfloat16 base,
            the base's dtype otherwise.

    Returns:
        The adapted sibling (a :class:`~modify.LoRA` block itself if ``model`` is a matched layer).

    Raises:
        TypeError: a match of another layer type (naming its path), DoRA on a non-Linear layer;
            a non-floating ``adapter_dtype``; an argument of the wrong type.
        ValueError: ``where`` matches nothing (a tuple that matches nothing says it means *all
            of* and names ``any_of``); ``rank < 1``; ``alpha`` nan or infinite; bad
            ``dropout``; a match inside a plain ``torch.nn`` container or another opaque leaf.

    Example:
        >>> import torch, modify
        >>> base = modify.Sequential(modify.Linear(8, 8), modify.ReLU(), modify.Linear(8, 2))
        >>> adapted = modify.lora(base, rank=2, where="0")
        >>> adapted[0].base is base[0], adapted[2] is base[2]
        (True, True)
        >>> x = torch.randn(4, 8)
        >>> torch.equal(adapted(x), base(x))
        True
        >>> [tuple(p.shape) for p in modify.lora_parameters(adapted)]
        [(2, 8), (8, 2)]
    """
    check_adapter_settings("lora", rank, alpha, dropout)
    if adapter_dtype is not None and not adapter_dtype.is_floating_point:
        raise TypeError(f"lora: adapter_dtype must be a floating-point dtype, got {adapter_dtype}")
    where = as_criteria(where)
    adapters = _adapter_modules(model)
    selection = matching(model, where, "lora", unsaid=(lambda path, module: id(module) not in adapters,))
    for path, module in selection:
        layer_kind(module, path, dora)
    options = {"use_rslora": use_rslora, "dora": dora, "adapter_dtype": adapter_dtype}
    return selection.apply(lambda module: LoRA(module, rank, alpha, dropout, **options))


@typechecked
def lora_parameters(model: nn.Module) -> list[nn.Parameter]:
    """The adapter parameters (``down`` and ``up``, DoRA's magnitude) of every :class:`~modify.LoRA` block, each once.

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
    for block in lora_blocks(model):
        for parameter in block.adapter_parameters():
            found.setdefault(id(parameter), parameter)
    return list(found.values())


def delta_weight(block: LoRA, weight: torch.Tensor) -> torch.Tensor:
    """The merged weight of ``block`` over the base weight ``weight``, in ``weight``'s wide dtype.

    ``W + s B A`` (reshaped for a conv; ``A^T B^T`` for an Embedding), or DoRA's
    ``m / ||W + s B A|| * (W + s B A)`` per output row, as PEFT's ``merge``.
    """
    wide = torch.promote_types(weight.dtype, torch.float32)
    weight = weight.to(wide)
    if block.dora:
        update = block.update
        a, b = update.lora_A.to(wide), update.lora_B.to(wide)
        combined = weight + block.scale * (b @ a)
        return (update.magnitude.to(wide) / torch.linalg.norm(combined, dim=1)).unsqueeze(1) * combined
    down, up = block.down.weight.to(wide), block.up.weight.to(wide)
    if block.kind == "embedding":
        return weight + block.scale * (down @ up.T)
    delta = up.flatten(1) @ down.flatten(1)
    if isinstance(block.base, TransposedLinear):  # GPT-2's Conv1D layout (in, out): PEFT's fan_in_fan_out
        delta = delta.T
    return weight + block.scale * delta.reshape(weight.shape)


def _merged(block: LoRA, path: str, safe: bool) -> nn.Module:
    base = _merged(block.base, f"{path}.1.base", safe) if isinstance(block.base, LoRA) else block.base
    weight = base.weight
    with torch.no_grad():
        merged = delta_weight(block, weight)
    if safe and not torch.isfinite(merged).all():
        raise ValueError(f"merge_lora: the merged weight of the LoRA block at '{path or '<root>'}' is not finite")
    weight = nn.Parameter(merged.to(weight.dtype), requires_grad=weight.requires_grad)
    return sibling(base, parameters={**base._parameters, "weight": weight})


@typechecked
def merge_lora(model: nn.Module, *, safe: bool = False) -> nn.Module:
    """A plain sibling where every :class:`~modify.LoRA` block becomes its base layer with a merged weight.

    The merged weight is ``W + s * B @ A`` (the layer type's equivalent for an Embedding or a
    conv; DoRA's ``m / ||W + s B A|| * (W + s B A)``), computed in float32 (or wider, for
    float64 weights) and cast back to ``W``'s dtype: a new tensor; the bias and everything outside
    the blocks are shared. Stacked blocks (``lora`` applied twice) are merged inner first. The
    result's ``state_dict()`` keys equal the base model's, and its outputs equal the adapted
    model's in eval mode (or with ``dropout=0``). The merge of Hu et al. 2021 (section 4.1), as
    PEFT's ``merge_and_unload(safe_merge=...)``, without touching the adapted model.

    Args:
        model: an adapted model; left unchanged.
        safe: check every merged weight for nan/inf first.

    Returns:
        The merged model (``model`` itself if it holds no LoRA block).

    Raises:
        TypeError: ``model`` not a ``torch.nn.Module``.
        ValueError: with ``safe=True``, a merged weight that is not finite, naming the block's path.

    Example:
        >>> import torch, modify
        >>> base = modify.Sequential(modify.Linear(8, 8), modify.ReLU(), modify.Linear(8, 2))
        >>> adapted = modify.lora(base, rank=2)
        >>> _ = torch.nn.init.normal_(adapted[0].up.weight)
        >>> merged = modify.merge_lora(adapted, safe=True)
        >>> list(merged.state_dict()) == list(base.state_dict())
        True
        >>> x = torch.randn(4, 8)
        >>> torch.allclose(merged(x), adapted(x), atol=1e-5)
        True
    """
    selection = select(model, LoRA)
    paths: dict[int, str] = {}
    for path, block in selection:
        paths.setdefault(id(block), path)
    return selection.apply(lambda block: _merged(block, paths[id(block)], safe))


@typechecked
def strip_lora(model: nn.Module) -> nn.Module:
    """The base model again: every :class:`~modify.LoRA` block replaced by its base layer (the same object).

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
    return select(model, LoRA).apply(lambda block: strip_lora(block.base))
