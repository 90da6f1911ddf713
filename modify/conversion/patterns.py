"""Spelled-out layers in a traced graph, folded into the one call they compute.

``transformers``' decoders write three layers out op by op, each op a leaf and an autograd step
of the converted tree. Before the graph becomes units, each is rewritten into one node:

* RMSNorm, ``weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))``, into
  ``F.rms_norm(x, (n,), weight, eps)`` (Zhang and Sennrich 2019, arXiv:1910.07467), which
  :mod:`~modify.conversion.functions` maps to ``RMSNorm`` and ``ElementwiseAffine`` holding the
  same ``weight`` (:func:`fold_rms_norms`);
* ``rotate_half`` of rotary embeddings (slice, slice, neg, cat) into :func:`rotate_half`
  (:func:`fold_rotations`);
* grouped-query ``repeat_kv`` (unsqueeze, expand, reshape) into ``torch.repeat_interleave``
  (:func:`fold_repeats`).

Each computes the same values. A chain with casts in it (a half-precision model's float32 round
trip), whose steps are used elsewhere, or whose sizes the graph does not record is left as it is.
"""

from __future__ import annotations

import operator
import sys

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


def rotate_half(x: torch.Tensor) -> torch.Tensor:
    """``cat((-x2, x1), -1)`` for the halves ``x1, x2`` of the last axis: the rotation of rotary embeddings.

    Su et al. 2021, RoFormer (arXiv:2104.09864), as ``transformers``' ``rotate_half`` writes it.

    Example:
        >>> import torch
        >>> rotate_half(torch.tensor([1.0, 2.0, 3.0, 4.0])).tolist()
        [-3.0, -4.0, 1.0, 2.0]
    """
    first, second = x.chunk(2, dim=-1)
    return torch.cat((-second, first), dim=-1)


def _shape(node: object) -> tuple | None:
    val = node.meta.get("val") if isinstance(node, fx.Node) else None
    return tuple(val.shape) if isinstance(val, torch.Tensor) else None


def _halves(cat: fx.Node) -> fx.Node | None:
    """``x`` when ``cat`` is ``cat([-x[..., h:], x[..., :h]], -1)`` with ``2h`` the last axis's size."""
    parts, dim = (list(cat.args[0]), cat.args[1] if len(cat.args) > 1 else cat.kwargs.get("dim", 0)) if cat.args else ([], None)
    if len(parts) != 2 or not _only_use(parts[0], "neg") or not _only_use(parts[1], "slice"):
        return None
    second, first = parts[0].args[0], parts[1]
    if not _only_use(second, "slice") or second.args[0] is not first.args[0]:
        return None
    x = first.args[0]
    shape = _shape(x)
    if shape is None or not isinstance(shape[-1], int) or shape[-1] % 2 or dim not in (-1, len(shape) - 1):
        return None
    half, axes = shape[-1] // 2, (-1, len(shape) - 1)
    ok = len(first.args) == 4 and first.args[1] in axes and list(first.args[2:]) == [0, half] and second.args[1] in axes
    return x if ok and len(second.args) == 4 and second.args[2] == half and second.args[3] >= shape[-1] else None


def fold_rotations(graph: fx.Graph) -> None:
    """Rewrite each spelled-out :func:`rotate_half` of ``graph`` (slice, slice, neg, cat) into one call."""
    for cat in list(graph.nodes):
        x = _halves(cat) if _name(cat) == "cat" and len(cat.args) >= 1 else None
        if x is None:
            continue
        neg, first = cat.args[0]
        with graph.inserting_before(cat):
            folded = graph.call_function(rotate_half, (x,))
        folded.meta = dict(cat.meta)
        cat.replace_all_uses_with(folded)
        second = neg.args[0]
        for node in (cat, neg, first, second):
            graph.erase_node(node)


def _through(node: object) -> object:
    """The value under single-use ``contiguous`` calls and whole slices (``x[:, :]``) of ``node``."""
    while isinstance(node, fx.Node) and len(node.users) == 1 and (
        _name(node) == "contiguous" or (_name(node) == "slice" and list(node.args[2:]) in ([0, sys.maxsize], []))
    ):
        node = node.args[0]
    return node


def _repeated(reshape: fx.Node) -> tuple[fx.Node, int, list[fx.Node]] | None:
    """``(x, n, steps)`` when ``reshape`` is ``x[:, :, None].expand(B, H, n, T, D).reshape(B, H * n, T, D)``."""
    expand = _through(reshape.args[0]) if reshape.args else None
    unsqueeze = _through(expand.args[0]) if _only_use(expand, "expand") else None
    if not _only_use(unsqueeze, "unsqueeze") or list(unsqueeze.args[1:]) != [2]:
        return None
    x = unsqueeze.args[0]
    shape, sizes, out = _shape(x), expand.args[1], _shape(reshape)
    if shape is None or out is None or len(shape) != 4 or len(sizes) != 5 or not isinstance(sizes[2], int):
        return None
    n = sizes[2]
    if out != (shape[0], shape[1] * n, *shape[2:]):
        return None
    return x, n, _chain(reshape.args[0], unsqueeze)


def _chain(top: fx.Node, bottom: fx.Node) -> list[fx.Node]:
    """``top`` and the nodes under it down to ``bottom`` (each the first argument of the one above)."""
    nodes = [top]
    while nodes[-1] is not bottom:
        nodes.append(nodes[-1].args[0])
    return nodes


def fold_repeats(graph: fx.Graph) -> None:
    """Rewrite each grouped-query ``repeat_kv`` of ``graph`` (unsqueeze, expand, reshape) into one
    ``torch.repeat_interleave(x, n, dim=1)``, the same values (Ainslie et al. 2023, GQA, arXiv:2305.13245)."""
    for reshape in list(graph.nodes):
        found = _repeated(reshape) if _name(reshape) == "reshape" else None
        if found is None:
            continue
        x, n, steps = found
        with graph.inserting_before(reshape):
            folded = graph.call_function(torch.repeat_interleave, (x, n, 1))
        folded.meta = dict(reshape.meta)
        reshape.replace_all_uses_with(folded)
        for node in (reshape, *steps):
            graph.erase_node(node)
