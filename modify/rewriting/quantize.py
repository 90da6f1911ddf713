"""Weight quantization as a rewriter: :func:`quantize` (QLoRA's 4-bit base, or int8 weight-only)."""

from __future__ import annotations

from torch import nn

from .._core.arguments import typechecked
from ..primitives.linear import Linear
from ..primitives.quantized import SCHEMES, QuantizedLinear
from .criteria import Where, as_criteria
from .selection import matching, select
from .walk import positions

def tied_elsewhere(model: nn.Module, chosen: set[int]) -> set[int]:
    """Ids of the weights of ``chosen`` modules that a module outside ``chosen`` also holds."""
    weights = {id(m.weight): m for _, m, _ in positions(model) if id(m) in chosen}
    holders = (m for _, m, _ in positions(model) if id(m) not in chosen)
    return {id(t) for m in holders for t in m._parameters.values() if t is not None and id(t) in weights}


def quantizable(model: nn.Module, selection: list[tuple[str, nn.Module]] | None = None) -> list[tuple[str, Linear]]:
    """The ``(path, layer)`` of ``selection`` (default: every ``Linear``) that :func:`quantize` quantizes.

    Those not yet quantized whose weight no module outside the selection holds.
    """
    selection = list(select(model, Linear) if selection is None else selection)
    tied = tied_elsewhere(model, {id(m) for _, m in selection})
    return [(p, m) for p, m in selection if not isinstance(m, QuantizedLinear) and id(m.weight) not in tied]


@typechecked
def quantize(model: nn.Module, scheme: str = "nf4", where: Where = Linear, *, block_size: int = 64) -> nn.Module:
    """A sibling of ``model`` whose matched ``Linear`` layers hold frozen 4-bit NormalFloat (or int8) weights.

    Each matched :class:`~modify.Linear` becomes a :class:`~modify.primitives.quantized.QuantizedLinear`
    sibling: the weight quantized by torchao (``"nf4"``: QLoRA's 4-bit NormalFloat with
    double-quantized block scales, Dettmers et al. 2023, arXiv:2305.14314; ``"int8"``: symmetric
    per-row int8 weight-only), frozen; the bias, the training mode and every other layer shared.
    ``leaf.dequantize()`` gives the float weight, and the leaf's output equals
    ``F.linear(x, leaf.dequantize(), bias)``. ``lora(quantize(base), ...)`` is QLoRA: adapters in
    the compute dtype (the weight's original dtype; float32 adapters over a bfloat16/float16
    base, as :func:`~modify.lora`), and :func:`~modify.merge_lora` on it returns float ``Linear``
    layers. A layer whose weight is tied to a layer left unquantized (GPT's output head and token
    embedding) is left as is, so the tie holds; layers already quantized are kept.

    Args:
        model: the model; left unchanged.
        scheme: ``"nf4"`` (default) or ``"int8"``.
        where: one criterion or a tuple of criteria (all must hold), as in :func:`modify.select`;
            default every ``modify.Linear``.
        block_size: values per NF4 block (QLoRA's 64); each quantized weight's size must be a
            multiple of it.

    Returns:
        The quantized sibling (``model`` itself if every match is already quantized or tied).

    Raises:
        TypeError: a match that is not a ``modify.Linear`` (naming its path); an argument of the
            wrong type.
        ValueError: an unknown ``scheme``; ``where`` matches nothing; an NF4 weight that is not a
            whole number of blocks (naming its path).

    Example:
        >>> import torch, modify
        >>> base = modify.Sequential(modify.Linear(64, 64), modify.ReLU(), modify.Linear(64, 8))
        >>> small = modify.quantize(base, "nf4")
        >>> type(small[0]).__name__, small[0].bias is base[0].bias, small[1] is base[1]
        ('QuantizedLinear', True, True)
        >>> qlora = modify.lora(small, rank=4)
        >>> qlora[0].base is small[0], qlora[0].base.weight.requires_grad
        (True, False)
    """
    if scheme not in SCHEMES:
        raise ValueError(f"quantize: scheme must be one of {list(SCHEMES)}, got {scheme!r}")
    selection = matching(model, as_criteria(where), "quantize")
    for path, module in selection:
        if not isinstance(module, Linear):
            raise TypeError(f"quantize: the match at '{path or '<root>'}' is a {type(module).__name__}, not a modify.Linear")
    chosen = quantizable(model, selection)
    if not chosen:
        return model
    paths = {id(m): p for p, m in reversed(chosen)}
    return select(model, lambda path, module: id(module) in paths).apply(
        lambda module: QuantizedLinear.from_linear(module, scheme, block_size, paths[id(module)])
    )
