"""Which dimensions of which tensors are equal, read off the traced graph without running it.

A ``torch.export`` graph records every node's shape (``node.meta["val"]``, sizes as symbolic
expressions of the input's), which is read directly. In a ``torch.fx`` graph,
``x.view(B, T, n_head, C // n_head)`` with ``B, T, C = x.size()`` has a shape computed at run
time, yet it only splits the last axis. To turn it into primitives, each dimension gets a symbol
(``("dim", node, i)``): ops known to keep a dimension pass its symbol on (a ``Linear`` keeps all
but the last, a ``transpose`` swaps two, a ``split`` keeps all but its own), and a view's size
argument read from ``t.size(i)`` is ``t``'s symbol ``i``. A view whose first ``k`` sizes are the
input's own first ``k`` dimensions and whose other sizes are constants (one may be unknown)
becomes ``Flatten``/``Rearrange``; anything less certain stays an opaque ``Function``, which is
always correct.
"""

from __future__ import annotations

import operator
from functools import cache

import torch
import torch.nn.functional as F
from torch import fx, nn

_KEEP_ALL_MODULES = (
    nn.LayerNorm, nn.RMSNorm, nn.GroupNorm, nn.BatchNorm1d, nn.BatchNorm2d, nn.ReLU, nn.GELU, nn.SiLU, nn.Tanh,
    nn.Sigmoid, nn.Softmax, nn.LogSoftmax, nn.Dropout, nn.Identity,
)
_KEEP_ALL_CALLS = frozenset({
    F.gelu, F.relu, torch.relu, F.silu, torch.tanh, torch.sigmoid, torch.exp, F.dropout, torch.softmax, F.softmax,
    F.log_softmax, torch.log_softmax, F.layer_norm, "contiguous", "float", "relu", "softmax", "exp", "tanh",
    "sigmoid", "gelu",
})
_BINARY = frozenset({operator.add, operator.sub, operator.mul, operator.truediv, operator.iadd, torch.add, torch.mul})


class Shapes:
    """Symbolic ranks and dimensions of the value nodes of one graph.

    Args:
        modules: the kept module of each ``call_module`` node's target.
    """

    def __init__(self, modules: dict[str, nn.Module]):
        self.modules = modules
        self.rank = cache(self._rank)
        self.dim = cache(self._dim)

    def size_of(self, arg: object) -> object:
        """An ``int`` for a constant size, a symbol for ``t.size(i)``/``t.shape[i]``, else ``None``."""
        if isinstance(arg, int) and not isinstance(arg, bool):
            return arg
        if not isinstance(arg, fx.Node):
            return None
        if isinstance(arg.meta.get("val"), (int, torch.SymInt)):
            return _symbolic(arg.meta["val"])
        if arg.op == "call_method" and arg.target == "size" and len(arg.args) == 2:
            return self._symbol(arg.args[0], arg.args[1])
        if arg.target is operator.getitem and isinstance(arg.args[0], fx.Node) and isinstance(arg.args[1], int):
            source = arg.args[0]
            whole = source.op == "call_method" and source.target == "size" and len(source.args) == 1
            if whole or (source.target is getattr and source.args[1] == "shape"):
                return self._symbol(source.args[0], arg.args[1])
        return None

    def _symbol(self, tensor: object, i: object) -> object:
        if not isinstance(tensor, fx.Node) or not isinstance(i, int):
            return None
        if i < 0:
            rank = self.rank(tensor)
            if rank is None:
                return None
            i += rank
        return self.dim(tensor, i)

    def _rank(self, node: fx.Node) -> int | None:
        if isinstance(node.meta.get("val"), torch.Tensor):
            return node.meta["val"].dim()
        evidence = _unpacked_rank(node)
        if evidence is not None:
            return evidence
        kind, source = self._rule(node)
        if kind in ("all", "last", "transpose", "split"):
            return self.rank(source)
        if kind == "view":
            return None if _sizes(node) is None else len(_sizes(node))
        if kind == "embed":
            rank = self.rank(source)
            return None if rank is None else rank + 1
        if kind == "binary":
            a, b = (self.rank(s) for s in source)
            return a if a is not None and a == b else None
        return None

    def _dim(self, node: fx.Node, i: int) -> object:
        if isinstance(node.meta.get("val"), torch.Tensor):
            return _symbolic(node.meta["val"].shape[i])
        kind, source = self._rule(node)
        fresh = ("dim", node, i)
        rank = self.rank(node)
        features = self._features(node, i, rank)
        if features is not None:
            return features
        if kind == "all" or (kind in ("last", "embed") and rank is not None and i < rank - 1):
            return self.dim(source, i)
        if kind == "transpose":
            a, b = (_normal(d, rank) for d in node.args[1:3])
            return fresh if a is None or b is None else self.dim(source, {a: b, b: a}.get(i, i))
        if kind == "split":
            axis = _normal(_split_dim(node), rank)
            return self.dim(source, i) if axis is not None and i != axis else fresh
        if kind == "view":
            sizes = _sizes(node) or ()
            size = self.size_of(sizes[i]) if i < len(sizes) else None
            return fresh if size is None or size == -1 else size
        if kind == "binary":
            a, b = (self.dim(s, i) for s in source)
            return a if a == b and rank is not None else fresh
        return fresh

    def _features(self, node: fx.Node, i: int, rank: int | None) -> int | None:
        """The last dimension of a ``Linear``'s input or output: its ``in_``/``out_features``."""
        if rank is None or i != rank - 1:
            return None
        if node.op == "call_module" and type(self.modules.get(node.target)) is nn.Linear:
            return self.modules[node.target].out_features
        for user in node.users:
            if user.op == "call_module" and type(self.modules.get(user.target)) is nn.Linear:
                return self.modules[user.target].in_features
        return None

    def _rule(self, node: fx.Node) -> tuple[str, object]:
        """What ``node`` does to the shape of its first input, and that input."""
        first = node.args[0] if node.args and isinstance(node.args[0], fx.Node) else None
        if node.op == "call_module":
            kind = type(self.modules.get(node.target))
            if kind in _KEEP_ALL_MODULES:
                return "all", first
            if kind is nn.Linear:
                return "last", first
            if kind is nn.Embedding:
                return "embed", first
            return "unknown", None
        target = node.target
        if node.op == "call_function" and target is operator.getitem and first is not None and _is_split(first):
            return "split", first.args[0]
        if target in _KEEP_ALL_CALLS and first is not None:
            return "all", first
        if target is F.scaled_dot_product_attention:
            return "last", first
        if target in ("transpose",) or target is torch.transpose:
            return "transpose", first
        if target in ("view", "reshape"):
            return "view", first
        if target in _BINARY and len(node.args) == 2:
            nodes = [a for a in node.args if isinstance(a, fx.Node)]
            return ("binary", tuple(nodes)) if len(nodes) == 2 else ("all", nodes[0]) if nodes else ("unknown", None)
        return "unknown", None


def _symbolic(size: int | torch.SymInt) -> object:
    """A size that ``torch.export`` recorded: an ``int``, or its symbolic expression (``s0*s1``)."""
    return size if isinstance(size, int) else ("sym", str(size.node.expr))


def _normal(d: object, rank: int | None) -> int | None:
    if not isinstance(d, int):
        return None
    if d >= 0:
        return d
    return None if rank is None else d + rank


def _is_split(node: fx.Node) -> bool:
    return node.target in ("split", torch.split, "chunk", torch.chunk)


def _split_dim(node: fx.Node) -> object:
    source = node.args[0]
    dim = source.kwargs.get("dim", source.args[2] if len(source.args) > 2 else 0)
    return dim


def _sizes(node: fx.Node) -> tuple | None:
    """The size arguments of a ``view``/``reshape`` call, as a tuple; ``None`` for one traced shape."""
    sizes = node.args[1:] if node.op == "call_method" else (node.args[1:] or (node.kwargs.get("shape"),))
    if len(sizes) == 1 and isinstance(sizes[0], (tuple, list)):
        return tuple(sizes[0])
    if len(sizes) == 1 and isinstance(sizes[0], fx.Node) and shapes_tuple(sizes[0]):
        return None
    return tuple(sizes)


def shapes_tuple(node: fx.Node) -> bool:
    """Whether ``node`` may be a whole shape (``x.size()``, a slice of it, a sum of tuples): not one int."""
    if node.op == "call_method" and node.target == "size":
        return len(node.args) == 1 and "dim" not in node.kwargs
    if node.target is operator.getitem:
        return not isinstance(node.args[1], int)
    return node.target is not operator.floordiv and node.target is not operator.mul


def _unpacked_rank(node: fx.Node) -> int | None:
    """``n`` when ``a_0, ..., a_{n-1} = node.size()`` unpacks the whole size (``n >= 2``)."""
    for user in node.users:
        if user.op == "call_method" and user.target == "size" and len(user.args) == 1 and not user.kwargs:
            indices = [u.args[1] for u in user.users if u.target is operator.getitem]
            if not all(isinstance(i, int) for i in indices):
                continue
            if len(user.users) >= 2 and set(indices) == set(range(len(indices))) and len(indices) == len(user.users):
                return len(indices)
    return None


def view_as_primitives(shapes: Shapes, node: fx.Node) -> list[tuple[str, tuple, dict]] | None:
    """``[(primitive, args, kwargs), ...]`` computing the view/reshape ``node``, or ``None``.

    All sizes constant but one: ``Reshape`` with ``-1`` there. Else the first ``k >= 1`` sizes
    the input's own first ``k`` dimensions and the others constant but at most one:
    ``Flatten(k)`` then (for more than one trailing size) ``Rearrange`` splitting that axis.
    """
    source, sizes = node.args[0], _sizes(node)
    if sizes is None:
        return None
    known = [shapes.size_of(s) for s in sizes]
    constants = [s if isinstance(s, int) else None for s in known]
    if sum(c is None or c == -1 for c in constants) <= 1:
        return [("Reshape", tuple(-1 if c is None else c for c in constants), {})]
    k = 0
    while k < len(known) and known[k] is not None and known[k] == shapes.dim(source, k):
        k += 1
    rest = constants[k:]
    rank = shapes.rank(source)
    if k == 0 or not rest or sum(c is None or c == -1 for c in rest) > 1 or (rank is not None and rank <= k):
        return None
    steps = [] if rank == k + 1 else [("Flatten", (k, -1), {})]
    if len(rest) == 1:
        return steps or [("Identity", (), {})]
    names = [f"a{j}" for j in range(len(rest))]
    pattern = f"... ({' '.join(names)}) -> ... {' '.join(names)}"
    lengths = {name: c for name, c in zip(names, rest) if c is not None and c != -1}
    return [*steps, ("Rearrange", (pattern,), lengths)]


def split_count(shapes: Shapes, node: fx.Node, sections: int | list[int], dim: int) -> int | None:
    """How many tensors ``split(sections, dim)`` of ``node``'s input makes, if known."""
    if isinstance(sections, list):
        return len(sections)
    source = node.args[0]
    rank = shapes.rank(source)
    axis = dim if dim >= 0 else (None if rank is None else dim + rank)
    size = None if axis is None else shapes.dim(source, axis)
    return -(-size // sections) if isinstance(size, int) and sections > 0 else None
