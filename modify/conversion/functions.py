"""Torch functions, tensor methods and operators as the primitive that computes them.

:func:`primitive` maps one traced call (``call_function``/``call_method``) whose arguments are
values and constants to a leaf and the value nodes it takes, in the order it takes them (a
single value, or a tuple). Calls whose options the primitive lacks (``softmax(dtype=...)``, an
attention mask, ``x + 1.0``) are not mapped: they become opaque :class:`~modify.Function` leaves.
Binary arithmetic keeps torch's broadcasting (``broadcast=True``).
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import fx, nn

from .. import primitives as P
from .._core.sibling import sibling
from ..combinators import Sequential
from ..models.building import norm_with_affine
from .shapes import Shapes, view_as_primitives

ALIAS = "alias"  # the call returns its input's value (``contiguous``, dropout off): no leaf

_PAST_ANY_SIZE = 2**62  # ``torch.export`` writes an open slice's end as ``sys.maxsize``

_TUPLE_MAKERS = frozenset({"split", torch.split, "chunk", torch.chunk, "unbind", torch.unbind})


class Call:
    """One traced call: positional/keyword access that treats methods' ``self`` as argument 0."""

    def __init__(self, node: fx.Node, values: set[fx.Node], shapes: Shapes, root: nn.Module | None = None):
        self.node, self.values, self.shapes, self.root = node, values, shapes, root
        self.args, self.kwargs = node.args, node.kwargs

    def arg(self, i: int, name: str, default: object = None) -> object:
        return self.args[i] if len(self.args) > i else self.kwargs.get(name, default)

    def value(self, x: object) -> bool:
        return isinstance(x, fx.Node) and x in self.values


Mapped = tuple[nn.Module, list[fx.Node]] | str | None


def _binary(make: Callable[[], nn.Module], scale: bool = False) -> Callable[[Call], Mapped]:
    def build(c: Call) -> Mapped:
        if len(c.args) != 2 or c.kwargs:
            return None
        a, b = c.args
        if c.value(a) and c.value(b):
            return make(), [a, b]
        number = b if c.value(a) else a
        if scale and isinstance(number, (int, float)) and not isinstance(number, bool):
            return P.Scale(float(number)), [a if c.value(a) else b]
        return None

    return build


def _unary(make: Callable[[Call], nn.Module | None], *allowed: str) -> Callable[[Call], Mapped]:
    def build(c: Call) -> Mapped:
        if not c.value(c.args[0]) or any(k not in allowed for k in c.kwargs):
            return None
        module = make(c)
        return None if module is None else (module, [c.args[0]])

    return build


def _sequence(cls: type) -> Callable[[Call], Mapped]:
    def build(c: Call) -> Mapped:
        tensors, dim = c.arg(0, "tensors"), c.arg(1, "dim", 0)
        if not isinstance(tensors, (tuple, list)) or not all(c.value(t) for t in tensors) or not isinstance(dim, int):
            return None
        if len(tensors) == 1:  # ``cat([x])`` is ``x``; ``stack([x])`` adds an axis (a Function)
            return ALIAS if cls is P.Cat else None
        return cls(dim), list(tensors)

    return build


def _int_or_none(value: object) -> bool:
    return value is None or (isinstance(value, int) and not isinstance(value, bool))


def _split(c: Call) -> P.Split | None:
    size, dim = c.arg(1, "split_size_or_sections", c.kwargs.get("split_size")), c.arg(2, "dim", 0)
    size = c.shapes.size_of(size) if isinstance(size, fx.Node) else size
    if not isinstance(dim, int) or not (isinstance(size, int) or (isinstance(size, (list, tuple)) and all(isinstance(s, int) for s in size))):
        return None
    return P.Split(size if isinstance(size, int) else list(size), dim)


def _chunk(c: Call) -> P.Split | None:
    chunks, dim = c.arg(1, "chunks"), c.arg(2, "dim", 0)
    if not isinstance(chunks, int) or not isinstance(dim, int):
        return None
    rank = c.shapes.rank(c.args[0])
    axis = dim if dim >= 0 else (None if rank is None else dim + rank)
    size = None if axis is None else c.shapes.dim(c.args[0], axis)
    return P.Split(math.ceil(size / chunks), dim) if isinstance(size, int) else None


def _view(c: Call) -> Mapped:
    if not c.value(c.args[0]):
        return None
    steps = view_as_primitives(c.shapes, c.node)
    if steps is None:
        return None
    modules = [getattr(P, name)(*args, **kwargs) for name, args, kwargs in steps]
    return (modules[0] if len(modules) == 1 else _chain(modules)), [c.args[0]]


def _chain(modules: list[nn.Module]) -> nn.Module:
    return Sequential(*modules)


def _dims(c: Call) -> tuple | None:
    dims = c.args[1:] if len(c.args) > 2 or not isinstance(c.arg(1, "dims"), (tuple, list)) else tuple(c.arg(1, "dims"))
    return tuple(dims) if dims and all(isinstance(d, int) and not isinstance(d, bool) for d in dims) else None


def _getitem(c: Call) -> Mapped:
    source, index = c.args
    if c.value(source) and source.target in _TUPLE_MAKERS and isinstance(index, int):
        return P.Index(index), [source]
    return None


def _dropout(c: Call) -> Mapped:
    p, training = c.arg(1, "p", 0.5), c.arg(2, "training", True)
    if not c.value(c.args[0]) or not isinstance(p, float) or not isinstance(training, bool) or c.arg(3, "inplace", False):
        return None
    return ALIAS if p == 0.0 or not training else (P.Dropout(p), [c.args[0]])


def _attention(c: Call) -> Mapped:
    q, k, v = (c.arg(i, name) for i, name in enumerate("query key value".split()))
    mask, dropout = c.arg(3, "attn_mask"), c.arg(4, "dropout_p", 0.0)
    causal, scale = c.arg(5, "is_causal", False), c.arg(6, "scale")
    if not all(c.value(t) for t in (q, k, v)) or mask is not None or c.kwargs.get("enable_gqa", False):
        return None
    if not isinstance(causal, bool) or not isinstance(dropout, float) or not (scale is None or isinstance(scale, float)):
        return None
    return P.ScaledDotProductAttention(causal=causal, dropout=dropout, scale=scale), [q, k, v]


def _rms_norm(c: Call) -> Mapped:
    """``F.rms_norm`` as ``RMSNorm``, with ``ElementwiseAffine`` holding the weight parameter if any."""
    x, shape, weight, eps = (c.arg(i, name) for i, name in enumerate(("input", "normalized_shape", "weight", "eps")))
    shape = tuple(shape) if isinstance(shape, (list, tuple)) and all(isinstance(s, int) for s in shape) else None
    if not c.value(x) or shape is None or not isinstance(eps, float):
        return None
    norm = P.RMSNorm(shape, eps)
    if weight is None:
        return norm, [x]
    owner, _, name = weight.target.rpartition(".") if isinstance(weight, fx.Node) and weight.op == "get_attr" else ("", "", "")
    source = c.root.get_submodule(owner) if name and c.root is not None else None
    parameter = None if source is None else source._parameters.get(name)
    if parameter is None or tuple(parameter.shape) != shape:
        return None
    affine = P.ElementwiseAffine(shape, bias=False, device="meta", dtype=parameter.dtype)
    affine = sibling(affine, parameters={"weight": parameter}).train(source.training)
    return norm_with_affine(norm.train(source.training), affine), [x]


def _along(cls: type) -> Callable[[Call], nn.Module | None]:
    def make(c: Call) -> nn.Module | None:
        dim = c.arg(1, "dim")
        plain = len(c.args) <= 2 and c.kwargs.get("dtype") is None
        return cls(dim) if isinstance(dim, int) and plain else None

    return make


def _reduce(cls: type) -> Callable[[Call], nn.Module | None]:
    def make(c: Call) -> nn.Module | None:
        dim, keepdim = c.arg(1, "dim"), c.arg(2, "keepdim", False)
        ok = _int_or_none(dim) or (isinstance(dim, (tuple, list)) and all(isinstance(d, int) for d in dim))
        return cls(tuple(dim) if isinstance(dim, list) else dim, keepdim) if ok and isinstance(keepdim, bool) else None

    return make


def _flatten(c: Call) -> nn.Module | None:
    start, end = c.arg(1, "start_dim", 0), c.arg(2, "end_dim", -1)
    return P.Flatten(start, end) if isinstance(start, int) and isinstance(end, int) else None


def _whole_slice(c: Call) -> Mapped:
    """``aten.slice(x, dim, 0, end)`` with ``end`` past any size (``x[:, :]``) returns ``x``'s values: no leaf."""
    dim, start, end, step = (c.arg(i, name, default) for i, name, default in ((1, "dim", 0), (2, "start", None), (3, "end", None), (4, "step", 1)))
    whole = start in (None, 0) and (end is None or (isinstance(end, int) and end >= _PAST_ANY_SIZE)) and step == 1
    return ALIAS if c.value(c.args[0]) and isinstance(dim, int) and whole else None


def _alias(c: Call) -> Mapped:
    return ALIAS if c.value(c.args[0]) and len(c.args) == 1 and not c.kwargs else None


def _same(*targets: object, handler: Callable[[Call], Mapped]) -> dict[object, Callable[[Call], Mapped]]:
    return dict.fromkeys(targets, handler)


_SIMPLE = {
    (torch.relu, F.relu, "relu"): (lambda c: P.ReLU(), "inplace"),
    (F.gelu, "gelu"): (lambda c: P.GELU(c.arg(1, "approximate", "none")), "approximate"),
    (F.silu, "silu"): (lambda c: P.SiLU(), "inplace"),
    (torch.tanh, F.tanh, "tanh"): (lambda c: P.Tanh(),),
    (torch.sigmoid, F.sigmoid, "sigmoid"): (lambda c: P.Sigmoid(),),
    (torch.exp, "exp"): (lambda c: P.Exp(),),
    (torch.softmax, F.softmax, "softmax"): (_along(P.Softmax), "dim", "_stacklevel", "dtype"),
    (torch.log_softmax, F.log_softmax, "log_softmax"): (_along(P.LogSoftmax), "dim", "_stacklevel", "dtype"),
    (torch.sum, "sum"): (_reduce(P.Sum), "dim", "keepdim"),
    (torch.mean, "mean"): (_reduce(P.Mean), "dim", "keepdim"),
    (torch.amax, "amax"): (_reduce(P.Max), "dim", "keepdim"),
    (torch.flatten, "flatten"): (_flatten, "start_dim", "end_dim"),
    (torch.split, "split"): (_split, "split_size_or_sections", "split_size", "dim"),
    (torch.chunk, "chunk"): (_chunk, "chunks", "dim"),
    (torch.transpose, "transpose"): (lambda c: P.Transpose(*c.args[1:3]) if _dims(c) and len(c.args) == 3 else None,),
    (torch.permute, "permute"): (lambda c: P.Permute(_dims(c)) if _dims(c) else None, "dims"),
}

_TABLE: dict[object, Callable[[Call], Mapped]] = {
    **_same(operator.add, operator.iadd, torch.add, "add", handler=_binary(lambda: P.Add(broadcast=True))),
    **_same(operator.sub, operator.isub, torch.sub, "sub", handler=_binary(lambda: P.Sub(broadcast=True))),
    **_same(operator.mul, operator.imul, torch.mul, "mul", handler=_binary(lambda: P.Mul(broadcast=True), scale=True)),
    **_same(operator.truediv, torch.div, "div", handler=_binary(lambda: P.Div(broadcast=True))),
    **_same(operator.matmul, torch.matmul, "matmul", handler=_binary(P.MatMul)),
    **_same(torch.cat, torch.concat, handler=_sequence(P.Cat)),
    **_same(torch.stack, handler=_sequence(P.Stack)),
    **_same("view", "reshape", torch.reshape, handler=_view),
    **_same(operator.getitem, handler=_getitem),
    **_same(F.dropout, handler=_dropout),
    **_same(F.scaled_dot_product_attention, handler=_attention),
    **_same(F.rms_norm, torch.rms_norm, handler=_rms_norm),
    **_same("contiguous", handler=_alias),
    **_same(torch.ops.aten.slice.Tensor, handler=_whole_slice),
    **{t: _unary(make, *allowed) for targets, (make, *allowed) in _SIMPLE.items() for t in targets},
}


def primitive(node: fx.Node, values: set[fx.Node], shapes: Shapes, root: nn.Module | None = None) -> Mapped:
    """``(leaf, value nodes it takes)`` for ``node``, :data:`ALIAS`, or ``None`` (no primitive).

    ``root`` (the traced module) lets a call that takes one of its parameters (``F.rms_norm``'s
    weight) become a leaf holding that very parameter.
    """
    handler = _TABLE.get(node.target)
    if handler is None or node.op not in ("call_function", "call_method") or not node.args:
        return None
    return handler(Call(node, values, shapes, root))
