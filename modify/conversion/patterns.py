"""Spelled-out layers in a traced graph, folded into the one torch call they compute.

``transformers``' RMSNorm (Llama, Mistral, Qwen2, ...) is written out as
``weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))``: six calls, six leaves
and their autograd steps. :func:`fold_rms_norms` rewrites that chain into one
``F.rms_norm(x, (n,), weight, eps)`` node (Zhang and Sennrich 2019, arXiv:1910.07467), which
:mod:`~modify.conversion.functions` maps to ``RMSNorm`` and ``ElementwiseAffine`` holding the
same ``weight``. A chain with casts in it (a half-precision model's float32 round trip) or
whose steps are used elsewhere is left as it is.
"""

from __future__ import annotations

import operator

import torch
import torch.nn.functional as F
from torch import fx

_NAMES = {operator.pow: "pow", operator.add: "add", operator.mul: "mul", operator.iadd: "add", operator.imul: "mul"}


def _name(node: object) -> str | None:
    """``"pow"`` for ``x.pow``, ``torch.pow``, ``aten.pow.Tensor_Scalar`` and ``**``; else the call's name."""
    if not isinstance(node, fx.Node) or node.op not in ("call_function", "call_method"):
        return None
    if isinstance(node.target, str):
        return node.target
    return _NAMES.get(node.target) or getattr(node.target, "__name__", "").split(".")[0]


def _only_use(node: object, name: str) -> bool:
    """Whether ``node`` is a ``name`` call whose value is used once (so folding drops nothing)."""
    return _name(node) == name and len(node.users) == 1 and not node.kwargs


def _other(node: fx.Node, known: object) -> object:
    """The argument of the binary call ``node`` that is not ``known`` (``None`` if neither is)."""
    a, b = node.args if len(node.args) == 2 else (None, None)
    return b if a is known else a if b is known else None


def _mean_of_last_axis(mean: fx.Node) -> bool:
    """Whether the ``mean`` call averages the last axis only, keeping it (``mean(-1, keepdim=True)``)."""
    given = {**dict(zip(("input", "dim", "keepdim"), mean.args)), **mean.kwargs}
    dim = given.get("dim")
    return set(given) == {"input", "dim", "keepdim"} and given["keepdim"] is True and (dim == -1 or dim in ([-1], (-1,)))


def _normalised(scaled: fx.Node) -> tuple[fx.Node, float, list[fx.Node]] | None:
    """``(x, eps, steps)`` when ``scaled`` is ``x * rsqrt(mean(x ** 2, -1, keepdim) + eps)``."""
    if _name(scaled) != "mul" or scaled.kwargs or len(scaled.args) != 2:
        return None
    for root, x in (scaled.args, scaled.args[::-1]):
        if not (_only_use(root, "rsqrt") and _only_use(root.args[0], "add")):
            continue
        shifted = root.args[0]
        mean = next((a for a in shifted.args if _name(a) == "mean"), None)
        eps = _other(shifted, mean)
        if mean is None or len(mean.users) != 1 or not isinstance(eps, float):
            continue
        square = mean.args[0]
        if _mean_of_last_axis(mean) and _only_use(square, "pow") and list(square.args) == [x, 2]:
            return x, eps, [root, shifted, mean, square]
    return None


def _weight(product: fx.Node, normed: fx.Node) -> fx.Node | None:
    """The 1-D parameter ``product`` multiplies ``normed`` by (``weight * normed`` or ``normed * weight``)."""
    weight = _other(product, normed) if _name(product) == "mul" and not product.kwargs else None
    return weight if isinstance(weight, fx.Node) and weight.op == "get_attr" else None


def _same_dtype(x: fx.Node, weight: torch.Tensor) -> bool:
    val = x.meta.get("val")
    return not isinstance(val, torch.Tensor) or val.dtype == weight.dtype


def fold_rms_norms(graph: fx.Graph, tensor) -> None:
    """Rewrite each spelled-out RMSNorm with a 1-D weight of ``graph`` into one ``F.rms_norm`` call.

    Args:
        graph: a traced graph (``torch.fx`` or ``torch.export``'s, normalised), changed in place.
        tensor: ``get_attr`` target -> the tensor it names (the root module's parameter).
    """
    for product in list(graph.nodes):
        for normed in product.args if _name(product) == "mul" else ():
            found = _normalised(normed) if isinstance(normed, fx.Node) and len(normed.users) == 1 else None
            weight = _weight(product, normed) if found else None
            value = tensor(weight.target) if weight is not None else None
            if not isinstance(value, torch.Tensor) or value.dim() != 1 or not _same_dtype(found[0], value):
                continue
            x, eps, steps = found
            with graph.inserting_before(product):
                folded = graph.call_function(F.rms_norm, (x, (value.shape[0],), weight, eps))
            folded.meta = dict(product.meta)
            product.replace_all_uses_with(folded)
            for node in (product, normed, *steps):
                graph.erase_node(node)
            break
